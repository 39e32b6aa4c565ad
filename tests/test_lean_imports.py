"""What each command imports: start-up, --help and the data path load neither torch nor
transformers (nor matplotlib and numba where they are not needed). Each case runs the real CLI
in a fresh interpreter and reads its sys.modules after the command ran."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "matplotlib", "numba")

PROBE = """
import json, sys
from streamproc.cli import main
try:
    rc = main(sys.argv[1:])
except SystemExit as e:
    rc = e.code
print(json.dumps({"rc": rc, "heavy": sorted(m for m in %r if m in sys.modules)}))
""" % (HEAVY,)


def imported(*argv: str, cwd: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, env=env, cwd=cwd, timeout=600)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["pack", "--help"], ["parse", "--help"], ["export", "--help"]])
def test_start_up_imports_nothing_heavy(argv, tmp_path):
    got = imported(*argv, cwd=tmp_path)
    assert got == {"rc": 0, "heavy": []}


def test_pack_and_stats_with_a_tokenizer_never_import_torch_or_transformers(tmp_path):
    got = imported("pack", "--limit", "6", "--workers", "1", "--seq-len", "32768", "-o", str(tmp_path / "out"), cwd=tmp_path)
    assert got["rc"] == 0 and (tmp_path / "out" / "manifest.json").is_file()
    assert not {"torch", "transformers", "numba"} & set(got["heavy"])  # a small buffer packs in Python
    got = imported("stats", "--limit", "6", "--workers", "1", "--tokenizer", "default", "--json", str(tmp_path / "s.json"), cwd=tmp_path)
    assert got["rc"] == 0 and (tmp_path / "s.json").is_file()
    assert not {"torch", "transformers"} & set(got["heavy"])


@pytest.mark.parametrize(
    "argv, says",
    [
        (["pack", "--limit", "2", "-o", "OUT", "--tokenizer", "/nope"], "tokenizer /nope: no such directory"),
        (["pack", "--limit", "2", "-o", "OUT", "--chat-template", "/nope.jinja"], "--chat-template /nope.jinja: cannot read it (No such file or directory)"),
        (["stats", "--limit", "2", "--tokenizer", "/nope"], "tokenizer /nope: no such directory"),
    ],
)
def test_missing_tokenizer_or_template_is_one_line(argv, says, tmp_path):
    argv = [str(tmp_path / "o") if a == "OUT" else a for a in argv]
    out = subprocess.run([sys.executable, "-m", "streamproc", *argv], capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=600)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [f"streamproc {argv[0]}: error: {says}"]
    assert not (tmp_path / "o").exists()  # no empty output directory left behind
