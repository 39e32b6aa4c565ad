"""Stats throughput: parse + aggregate of the input with 1 and with 2 worker processes (target:
2 workers at least 1.7x faster on 2 cores), the peak memory of the whole run, and the guide's
Step 3 loop as the single-process baseline on the same rows.

Each whole run happens in a fresh interpreter, so its memory is its own and not whatever
the benchmark process holds; its peak is the sum of the resident sizes of that process and its
workers, sampled every 50 ms (forked workers share pages, so the sum errs high).
"""

from __future__ import annotations

import itertools
import json
import pickle
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable, Sequence

from streamproc.analyze.metrics import Counts, add_trace, collect
from streamproc.parse.parser import parse_trace
from streamproc.records import Row
from streamproc.io.sources import Split, good_rows
from streamproc.benchmarks import Context, Result, best_times
from streamproc.benchmarks.guide import tool_use_metrics

GUIDE = "a per-row loop over a regex parser"
OURS = "streamproc parse + aggregate"
MEMORY_TARGET_MIB = 1024


@dataclass(slots=True)
class Run:
    seconds: float  # inside the spawned process: collect() alone, not interpreter start-up
    cpu_seconds: float  # user + system time of that process and its workers, start-up included
    rows: int
    peak_mib: float


def _child() -> None:
    """The spawned process: (shards, workers) pickled on stdin, (seconds, cpu seconds, rows) as
    JSON on stdout. The pool's workers have been joined when collect returns, so their CPU time
    is in RUSAGE_CHILDREN."""
    shards, workers = pickle.load(sys.stdin.buffer)
    t = time.perf_counter()
    _, tally = collect(shards, workers)
    seconds = time.perf_counter() - t
    cpu = sum(u.ru_utime + u.ru_stime for u in map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)))
    print(json.dumps([seconds, cpu, tally.read]))


def whole_run(shards: Sequence[Split], workers: int) -> Run:
    """`metrics.collect` over `shards` in a fresh interpreter, timed and watched for memory."""
    import psutil

    code = "from streamproc.benchmarks.stats import _child; _child()"
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdin.write(pickle.dumps((list(shards), workers)))
    proc.stdin.close()
    watched = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            peak = max(peak, sum(p.memory_info().rss for p in [watched, *watched.children(recursive=True)]))
        except psutil.NoSuchProcess:  # a worker ended between listing and reading it
            pass
        time.sleep(0.05)
    out, err = proc.stdout.read(), proc.stderr.read()
    if proc.returncode:
        raise RuntimeError(f"stats benchmark run failed:\n{err.decode(errors='replace')[-2000:]}")
    seconds, cpu, rows = json.loads(out)
    return Run(seconds, cpu, rows, peak / 2**20)


def guide_rows(rows: Sequence[Row]) -> list[dict]:
    """Rows as the guide's loop reads them (dataset dicts)."""
    return [{"category": r.category, "conversations": [{"from": f, "value": v} for f, v in r.conversations]} for r in rows]


def aggregate(rows: Sequence[Row]) -> Counts:
    c = Counts()
    for row in rows:
        add_trace(c, parse_trace(row))
    return c


def memory_rows(ctx: Context) -> list[Row]:
    """The rows of the in-memory comparison: the first 2,000 good rows (300 with --quick)."""
    return list(itertools.islice((r for s in ctx.shards for r in good_rows(s, "skip", ctx.rejected)), 300 if ctx.quick else 2000))


def in_memory_contenders(rows: Sequence[Row]) -> dict[str, Callable[[], object]]:
    """Against the guide: the same rows in memory, one process, no file reading in either."""
    dicts = guide_rows(rows)
    return {GUIDE: lambda: tool_use_metrics(dicts), OURS: lambda: aggregate(rows)}


def run(ctx: Context) -> list[Result]:
    one, two = whole_run(ctx.shards, 1), whole_run(ctx.shards, 2)
    data = f"{ctx.label}: {one.rows:,} rows in {len(ctx.shards)} shards"
    whole = all(s.limit is None for s in ctx.shards)  # else on-disk bytes say nothing of what was read
    mb = sum(s.nbytes for s in ctx.shards) / 1e6 if whole else 0.0

    def mbs(run_: Run) -> str:
        return f"{mb / run_.seconds:,.1f} MB/s of {mb:,.0f} MB on disk" if whole else ""

    results = [
        Result("stats", "1 worker", one.rows / one.seconds, "rows/s", data, note=mbs(one)),
        Result("stats", "2 workers", two.rows / two.seconds, "rows/s", data, "1 worker", one.seconds / two.seconds,
               ">= 1.7", note=mbs(two)),
        # Wall time depends on what else the machine runs; CPU time per row says whether the
        # second worker adds work (it should not) when the speed-up falls short under load.
        Result("stats", "CPU time, 2 workers", two.cpu_seconds, "s", data, "1 worker", two.cpu_seconds / one.cpu_seconds,
               "~1", note=f"1 worker: {one.cpu_seconds:,.1f} s"),
        Result("stats", "peak RSS, 1 worker", one.peak_mib, "MiB", data, target=f"< {MEMORY_TARGET_MIB}"),
        Result("stats", "peak RSS, 2 workers", two.peak_mib, "MiB", data, target=f"< {MEMORY_TARGET_MIB}"),
    ]
    rows = memory_rows(ctx)
    t = best_times(in_memory_contenders(rows), min(ctx.repeat, 3))
    sample = f"first {len(rows):,} rows of {ctx.label}, in memory"
    results += [
        Result("stats", GUIDE, len(rows) / t[GUIDE], "rows/s", sample),
        Result("stats", OURS, len(rows) / t[OURS], "rows/s", sample, GUIDE, t[GUIDE] / t[OURS],
               note="computes every figure of `stats`; the loop computes five"),
    ]
    return results
