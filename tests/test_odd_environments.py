"""Odd environments: a read-only install under a read-only or missing HOME, and unreadable
inputs. Both need a user that file permissions apply to; as root the tests drop the
capabilities that bypass them (setpriv), and skip with the reason where that is impossible."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from streamproc.io import synth

ROOT = Path(__file__).resolve().parents[1]


def _unprivileged_prefix() -> list[str]:
    """A command prefix under which permission bits apply to this process, or skip."""
    if os.geteuid() != 0:
        return []
    prefix = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--"]
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: file permissions cannot be made to apply")
    probe = subprocess.run([*prefix, "test", "-w", "/proc/1/environ"], capture_output=True)
    if probe.returncode == 0 or probe.stderr:
        pytest.skip("running as root and setpriv cannot drop CAP_DAC_OVERRIDE here")
    return prefix


def _run(prefix: list[str], args: list[str], env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, sys.executable, "-m", "streamproc", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


def _read_only(path: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(path):
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), 0o444)
        os.chmod(dirpath, 0o555)


@pytest.mark.parametrize("home", ["read-only", "unset"])
def test_read_only_install_and_home(tmp_path, home):
    """numba's on-disk cache finds no writable place: every command still runs (uncached)."""
    prefix = _unprivileged_prefix()
    site = tmp_path / "site"
    shutil.copytree(ROOT / "streamproc", site / "streamproc", ignore=shutil.ignore_patterns("__pycache__"))
    _read_only(site)
    ro_home = tmp_path / "home"
    ro_home.mkdir()
    os.chmod(ro_home, 0o555)
    work = tmp_path / "work"
    work.mkdir()
    (work / "in.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in synth.rows(4, seed=3)))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NUMBA_", "XDG_", "HF_", "PYTHON"))}
    env["PYTHONPATH"] = str(site)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    if home == "unset":
        # numba then finds the home in the password database; its cache directory is read-only.
        env.pop("HOME", None)
        env["XDG_CACHE_HOME"] = str(ro_home)
    else:
        env["HOME"] = str(ro_home)
    try:
        version = _run(prefix, ["--version"], env, work)
        assert version.returncode == 0 and version.stdout.startswith("streamproc "), version.stderr
        parsed = _run(prefix, ["parse", "in.jsonl", "-o", "out.jsonl", "--workers", "1"], env, work)
        assert parsed.returncode == 0, parsed.stderr
        assert len((work / "out.jsonl").read_bytes().splitlines()) == 4
        packed = _run(prefix, ["pack", "in.jsonl", "-o", "packed", "--workers", "1", "--seq-len", "8192"], env, work)
        assert packed.returncode == 0, packed.stderr
        assert (work / "packed" / "manifest.json").is_file()
        assert "Traceback" not in version.stderr + parsed.stderr + packed.stderr
    finally:
        for dirpath, _, _ in os.walk(site):
            os.chmod(dirpath, 0o755)
        os.chmod(ro_home, 0o755)


def test_unreadable_files_and_directories(tmp_path):
    """An unreadable JSONL file is a file-level reject and an unreadable sub-directory is listed
    as not read; the readable files' rows are all kept."""
    prefix = _unprivileged_prefix()
    rows = list(synth.rows(6, seed=5))
    data = tmp_path / "data"
    (data / "locked-dir").mkdir(parents=True)
    (data / "a.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows[:3]))
    (data / "b-locked.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows[3:]))
    (data / "c.json").write_bytes(orjson.dumps(rows[3:]))
    (data / "locked-dir" / "d.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    os.chmod(data / "b-locked.jsonl", 0)
    os.chmod(data / "locked-dir", 0)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    try:
        for inputs in (["data"], ["data/a.jsonl", "data/b-locked.jsonl", "data/c.json"]):
            res = _run(prefix, ["parse", *inputs, "-o", "out.jsonl", "--workers", "2"], env, tmp_path)
            assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
            ids = [orjson.loads(line)["id"] for line in (tmp_path / "out.jsonl").read_bytes().splitlines()]
            assert ids == [r["id"] for r in rows]
            rejects = [orjson.loads(line) for line in (tmp_path / "out.jsonl.rejects.jsonl").read_bytes().splitlines()]
            assert [(r["file"], r["field"], r["error"]) for r in rejects] == [("data/b-locked.jsonl", "<file>", "cannot open: Permission denied")]
            assert "7 rows read, 6 parsed, 1 rejected" in res.stderr
            if inputs == ["data"]:
                assert "1 path not read: data/locked-dir (unreadable directory: Permission denied)" in res.stderr
    finally:
        os.chmod(data / "locked-dir", 0o755)
