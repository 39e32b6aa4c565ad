"""The pack job as whole processes, start-up included: `streamproc pack --workers 1` against the
per-message recipe and TRL's own preparation, on the same input in the same run.

The input is the given rows (the built-in sample when none) plus altered copies of them: every
non-system message of a copy is changed (a marker inside each user turn, reasoning block, tool
call and tool response), so only the system prompt repeats across rows, as in a real dataset,
and no cache can serve a copy from the original. The copies bring the input to about 20 MB (4 MB
with --quick), at most 5 copies in all. The two baselines are scripts that ship with the source,
not with the package (pack_job_recipe.py and pack_job_trl.py in a checkout's benches/); where they
are absent, their rows say so. Every contender runs with the
shipped Qwen2.5 tokenizer at seq-len 65536, round-robin; the best wall time of each is kept, and
its CPU seconds (all threads of the process) are given beside it.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

from streamproc.prepare.mask import DEFAULT_TOKENIZER
from streamproc.records import Row
from streamproc.benchmarks import Context, Result

SEQ_LEN = 65536
BENCHES = Path(__file__).resolve().parents[2] / "benches"
ROOT = Path(__file__).resolve().parents[2]  # where this streamproc is imported from


def alter(value: str, frm: str, k: int) -> str:
    """A copy-k variant of a turn that keeps its structure: tags, tool-call JSON, responses."""
    mark = f"(variant {k}) "
    if frm == "gpt":
        value = value.replace("<think>\n", "<think>\n" + mark, 1) if value.startswith("<think>\n") else mark + value
        return re.sub(r"<tool_call>\n\{", lambda m: m.group(0) + f'"variant": {k}, ', value)
    if frm == "tool" and "<tool_response>\n" in value:
        return value.replace("<tool_response>\n", "<tool_response>\n" + mark)
    return mark + value


def write_input(rows: list[Row], path: Path, target_bytes: int) -> tuple[int, int]:
    """rows and their altered copies as JSONL; (rows written, bytes)."""
    lines = [orjson.dumps({"id": r.id, "conversations": [{"from": f, "value": v} for f, v in r.conversations]}) for r in rows]
    size = sum(len(x) + 1 for x in lines)
    copies = max(1, min(5, round(target_bytes / max(size, 1))))
    n = 0
    with open(path, "wb") as out:
        for k in range(copies):
            for r, line in zip(rows, lines):
                if k:
                    line = orjson.dumps({"id": f"{r.id}-v{k}", "conversations": [{"from": f, "value": v if f == "system" else alter(v, f, k)} for f, v in r.conversations]})
                out.write(line + b"\n")
                n += 1
    return n, path.stat().st_size


def timed(cmd: list[str], env: dict) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds of the process and its children, error text or "")."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    err = "" if p.returncode == 0 else (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[-1]
    return wall, cpu, err


def start_up(env: dict) -> list[Result]:
    """CPU seconds of the commands that should cost nothing: best of 3."""
    out = []
    for args in (["--version"], ["pack", "--help"]):
        cpu = min(timed([sys.executable, "-m", "streamproc", *args], env)[1] for _ in range(3))
        out.append(Result("pack-job", f"start-up: streamproc {' '.join(args)}", cpu, "CPU s", "", target="<= 0.3"))
    return out


def run(ctx: Context) -> list[Result]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])), "HF_HUB_OFFLINE": "1"}
    results = start_up(env)
    rows = ctx.rows()
    target = (4 if ctx.quick else 20) << 20
    tmp = Path(tempfile.mkdtemp(prefix="streamproc-bench-"))
    try:
        src = tmp / "input.jsonl"
        n, size = write_input(rows, src, target)
        tok = str(DEFAULT_TOKENIZER)
        contenders = {
            "streamproc pack --workers 1": [sys.executable, "-m", "streamproc", "pack", str(src), "-o", str(tmp / "pack"), "--workers", "1", "--seq-len", str(SEQ_LEN), "--restart"],
        }
        missing = []
        for name, script in (("per-message recipe", "pack_job_recipe.py"), ("TRL preparation (bfd)", "pack_job_trl.py")):
            if (BENCHES / script).is_file():
                contenders[name] = [sys.executable, str(BENCHES / script), str(src), tok, str(SEQ_LEN), str(tmp / script)]
            else:
                missing.append(name)
        best: dict[str, tuple[float, float]] = {}
        errors: dict[str, str] = {}
        for _ in range(1 if ctx.quick else 2):
            for name, cmd in contenders.items():
                if name in errors:
                    continue
                wall, cpu, err = timed(cmd, env)
                if err:
                    errors[name] = err
                elif name not in best or wall < best[name][0]:
                    best[name] = (wall, cpu)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    data = f"{ctx.label}: {n:,} rows ({size / 1e6:.1f} MB, altered copies), seq-len {SEQ_LEN}"
    ours = "streamproc pack --workers 1"
    targets = {"per-message recipe": ">= 3", "TRL preparation (bfd)": ">= 4"}
    for name, (wall, cpu) in best.items():
        results.append(Result("pack-job", f"{name} (whole process)", size / 1e6 / wall, "MB/s", data, note=f"{wall:.1f} s wall, {cpu:.1f} s CPU"))
    for name, (wall, cpu) in best.items():
        if name != ours and ours in best:
            w, c = best[ours]
            results.append(Result("pack-job", f"streamproc vs {name}", wall / w, "x", data, name, wall / w, targets[name], f"CPU seconds: {cpu / c:.2f}x"))
    for name, err in errors.items():
        results.append(Result("pack-job", f"{name} (whole process)", float("nan"), "MB/s", data, note=f"failed: {err}"))
    for name in missing:
        results.append(Result("pack-job", f"{name} (whole process)", float("nan"), "MB/s", data, note="its script is in benches/ of a source checkout"))
    return results
