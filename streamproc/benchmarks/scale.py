"""Memory and opening time that should not grow with the data (issue #22).

- **pack, run**: `streamproc pack` and `streamproc run` (`--workers 2`, seq-len 8192) as whole
  processes on `streamproc synth` files of 4,000 and 16,000 rows (STREAMPROC_BENCH_SCALE_ROWS,
  e.g. "4000,16000,64000"; `--quick`: 300): the peak RSS of the parent and of the largest worker
  (VmHWM, read from /proc every 0.2 s while they run), rows per CPU second (the command and every
  worker it waited for) and the packing efficiency. With STREAMPROC_BENCH_BASELINE set to another
  checkout, the same commands run there too, in the same run, for the ratios.
- **report**: the trace browser of N traces (the input's traces replicated with new ids: what
  grows is the index; bodies are shared), written as one page and as a folder; the page's size
  and the time Chromium takes from navigation to the list's first row (the first screen), at
  20,000, 60,000 and 150,000 traces (`--quick`: 2,000 and 20,000).
- **near-dedup index**: MiB per million kept rows of `NearIndex` over 200,000 distinct random
  signatures (`--quick`: 20,000), and its CPU time per row.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import orjson

from streamproc.benchmarks import Context, Result, synthetic_file

CHROMIUM = Path("/usr/bin/chromium")


def replicated(traces: list, n: int, chunks: int = 5):
    """A Browser of n entries made of `traces` with new ids, sharing `chunks` body chunks."""
    from streamproc.views import page as webview

    entries = [webview.entry(t) for t in traces]
    chunk = zlib.compress(orjson.dumps([webview.body(traces[i % len(traces)]) for i in range(webview.CHUNK)]), 6)
    return webview.Browser(
        [dataclasses.replace(entries[i % webview.CHUNK % len(traces)], id=f"replica-{i:06d}",
                             chunk=i // webview.CHUNK % chunks, pos=i % webview.CHUNK) for i in range(n)],
        [chunk] * chunks,
    )


def first_screen_seconds(page_path: Path) -> float:
    """Navigation start to the list's first row, in a fresh headless Chromium tab (best of 2)."""
    from playwright.sync_api import sync_playwright

    args = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
    best = float("inf")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=args)
        try:
            for _ in range(2):
                tab = browser.new_page()
                t = time.perf_counter()
                tab.goto(page_path.as_uri(), wait_until="commit", timeout=600_000)
                tab.wait_for_selector("#traces tbody tr", timeout=600_000)
                best = min(best, time.perf_counter() - t)
                tab.close()
        finally:
            browser.close()
    return best


def report_results(ctx: Context) -> list[Result]:
    from streamproc.parse.parser import parse_trace
    from streamproc.views.page import write_page

    traces = [parse_trace(r) for r in ctx.rows()[:200]]
    sizes = (2_000, 20_000) if ctx.quick else (20_000, 60_000, 150_000)
    out = Path(tempfile.mkdtemp(prefix="streamproc-bench-scale-"))
    results = []
    try:
        for n in sizes:
            browser = replicated(traces, n)
            data = f"{n:,} traces ({ctx.label} replicated)"
            for folder in (False, True):
                page = write_page(out / f"{n}" if folder else out / f"{n}.html", browser, folder=folder)
                kind = "folder" if folder else "one page"
                results.append(Result("scale", f"report ({kind}): index.html size", page.stat().st_size / 1e6, "MB", data,
                                      note="" if folder else "5 shared body chunks: a real one-page report adds ~6 KB a trace"))
                if CHROMIUM.exists():
                    results.append(Result("scale", f"report ({kind}): first screen", first_screen_seconds(page), "s", data,
                                          target="< 3" if folder else ""))
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return results


def dedup_results(ctx: Context) -> list[Result]:
    from streamproc.curate.dedup import NearIndex

    n = 20_000 if ctx.quick else 200_000
    signatures = np.random.default_rng(1).integers(0, 2**32, size=(n, 128), dtype=np.uint64)
    index = NearIndex(0.8)
    cpu = time.process_time()
    for i in range(n):
        index.first_similar(signatures[i], i)
    cpu = time.process_time() - cpu
    data = f"{n:,} distinct random signatures, threshold 0.8"
    return [
        Result("scale", "near-dedup index", index.nbytes() / n * 1e6 / 2**20, "MiB per million rows", data,
               target="<= 410 (0.4 GiB)", note=f"datasketch MinHashLSH: ~3,900; {cpu / n * 1e6:.0f} µs CPU a row"),
    ]


def _children(pid: int) -> set[int]:
    """Every live descendant of pid."""
    parent: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    parent[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, todo = set(), [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        found.update(kids)
        todo += kids
    return found


def _hwm_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def measure(cmd: list[str], env: dict) -> dict:
    """Run cmd; its wall and CPU seconds (with the children it waited for) and the peak RSS of
    the command's process and of its largest descendant, in MB."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    peaks: dict[int, float] = {}
    while proc.poll() is None:
        for p in {proc.pid} | _children(proc.pid):
            mb = _hwm_mb(p)
            if mb is not None:
                peaks[p] = max(peaks.get(p, 0.0), mb)
        time.sleep(0.2)
    err = proc.stderr.read().decode(errors="replace")
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)}: exit {proc.returncode}: {err[-2000:]}")
    parent = peaks.get(proc.pid, 0.0)
    others = [v for p, v in peaks.items() if p != proc.pid]
    return {"wall": wall, "cpu": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
            "parent_mb": parent, "worker_mb": max(others, default=0.0)}


def pack_run_results(ctx: Context) -> list[Result]:
    sizes = [300] if ctx.quick else [int(n) for n in os.environ.get("STREAMPROC_BENCH_SCALE_ROWS", "4000,16000").split(",")]
    checkouts = {"now": Path(__file__).resolve().parents[2]}
    if os.environ.get("STREAMPROC_BENCH_BASELINE"):
        checkouts["baseline"] = Path(os.environ["STREAMPROC_BENCH_BASELINE"]).resolve()
    results = []
    tmp = Path(tempfile.mkdtemp(prefix="streamproc-bench-scale-"))
    try:
        for rows in sizes:
            src = synthetic_file(rows)
            data = f"streamproc synth --rows {rows:,} ({src.stat().st_size / 1e6:.0f} MB Parquet), --workers 2, seq-len 8192"
            for command in ("pack", "run"):
                got = {}
                for who, root in checkouts.items():
                    env = {**os.environ, "PYTHONPATH": str(root), "HF_HUB_OFFLINE": "1"}
                    out = tmp / f"{who}-{command}-{rows}"
                    got[who] = m = measure([sys.executable, "-m", "streamproc", command, str(src), "-o", str(out), "--workers", "2", "--seq-len", "8192"], env)
                    manifest = json.loads(((out / "packed") if command == "run" else out).joinpath("manifest.json").read_text())
                    m["efficiency"] = manifest["counts"]["train"]["packing_efficiency"]
                    shutil.rmtree(out, ignore_errors=True)
                for who, m in got.items():
                    label = f"{command} ({who})"
                    base = got.get("baseline") if who == "now" else None
                    results += [
                        Result("scale", f"{label}: peak RSS, parent", m["parent_mb"], "MB", data, target="<= 1024" if who == "now" else "",
                               note=f"{m['wall']:.0f} s wall"),
                        Result("scale", f"{label}: peak RSS, largest worker", m["worker_mb"], "MB", data, target="<= 1024" if who == "now" else ""),
                        Result("scale", f"{label}: rows per CPU second", rows / m["cpu"], "rows/CPU s", data,
                               f"{command} (baseline)" if base else "", base["cpu"] / m["cpu"] if base else None, ">= 1" if base else "",
                               note=f"{m['cpu']:.0f} CPU s"),
                        Result("scale", f"{label}: packing efficiency (train)", 100 * m["efficiency"], "%", data),
                    ]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return results


def run(ctx: Context) -> list[Result]:
    return dedup_results(ctx) + report_results(ctx) + pack_run_results(ctx)
