"""Memory and opening time that should not grow with the data (issue #22).

- **report**: the trace browser of N traces (the input's traces replicated with new ids: what
  grows is the index; bodies are shared), written as one page and as a folder; the page's size
  and the time Chromium takes from navigation to the list's first row (the first screen), at
  20,000, 60,000 and 150,000 traces (`--quick`: 2,000 and 20,000).
- **near-dedup index**: MiB per million kept rows of `NearIndex` over 200,000 distinct random
  signatures (`--quick`: 20,000), and its CPU time per row.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import orjson

from streamproc.benchmarks import Context, Result

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


def run(ctx: Context) -> list[Result]:
    return dedup_results(ctx) + report_results(ctx)
