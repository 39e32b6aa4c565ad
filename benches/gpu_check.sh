#!/usr/bin/env bash
# The GPU check of issue 16 (isolation, throughput, `streamproc train` end to end): docs/gpu.md.
#   benches/gpu_check.sh [--dry-run] [--out DIR]
# On the device machine: installs the wheels carried in .whl/ (benches/gpu_wheels.sh fetches them)
# into /tmp/site first, since that machine has no trl, datasets or orjson and cannot download.
# --dry-run: the same steps on CPU at toy size, results in runs/gpu_check unless --out says.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ " $* " != *" --dry-run "* ]] && compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
exec python3 benches/gpu_check.py "$@"
