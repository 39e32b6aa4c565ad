#!/usr/bin/env bash
# Wheels the GPU machine lacks (it has PyTorch, accelerate, pyarrow, pandas, numba, xxhash, fsspec,
# huggingface-hub, but no trl, datasets, orjson, dill, multiprocess or peft, and cannot download):
# fetched here into .whl/ (gitignored) for Python 3.12 on x86-64, the versions this project is
# tested with. transformers too: the image's 5.17 has no TrainingArguments.activation_checkpointing,
# which streamproc/train.py passes (seen in a dry run under 5.17); regex for the version 5.24 checks.
# bitsandbytes does not travel (tens of MiB of CUDA kernels: with the rest, over what a call carries): QLoRA runs only
# where the image has it.
# benches/gpu_check.sh installs them there; docs/gpu.md has the call.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=(trl==1.16.0 datasets==5.2.0 orjson==3.13.0 dill==0.4.1 multiprocess==0.70.19 transformers==5.24.0 regex==2026.5.9 peft==0.21.2)
rm -rf .whl && mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${WHEELS[@]}"
ls -l .whl
total=$(du -cb .whl/*.whl | tail -1 | cut -f1)
tree=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
echo "wheels: $((total / 1024)) KiB; tracked tree: $((tree / 1024 / 1024)) MiB; carry limit 64 MiB in all"
(( total + tree < 64 * 1024 * 1024 )) || { echo "over the 64 MiB the device call carries" >&2; exit 1; }
