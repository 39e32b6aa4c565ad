"""Filter throughput against the stats pass on the same input (the filter parses like stats, then
computes features, evaluates SQL and writes the kept rows: it should cost about the same), stats
through a filtered view (conditions alone: one pass; with dedup: two), and near-dedup: time, the
dedup index's memory per million rows and the pass's peak traced memory.

One process, one worker, so the figures compare per-core work; the time of each pass includes
reading the input (and for the filter, writing its output). Rates are rows per CPU second of this
process (every pass runs in it), so load from other programs on the machine does not skew the
ratios; wall-clock rates are in the notes.
"""

from __future__ import annotations

import gc
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Callable, Sequence

from streamproc.analyze.job import StatsJob
from streamproc.analyze.metrics import collect
from streamproc.curate.conditions import PRESETS
from streamproc.curate.curator import Curator
from streamproc.curate.job import filter_to_file
from streamproc.curate.stage import view
from streamproc.run.runner import run_jobs
from streamproc.io.sources import Split
from streamproc.benchmarks import Context, Result

STATS = "stats pass (parse + aggregate)"
VIEW = "stats --preset clean (a view: conditions decided in the stats pass)"
VIEW_DEDUP = "stats --preset clean --dedup exact (a view: a first pass, then stats)"
CLEAN = "filter --preset clean"
EXACT = "filter --preset clean --dedup exact"
NEAR = "filter --dedup near"


def contenders(shards: Sequence[Split], out: Path, docs: dict[str, dict]) -> dict[str, Callable[[], object]]:
    """The passes timed, each over `shards`. A filter pass writes its kept rows under OUT and
    leaves its summary (read, kept, removed, rejected, index_bytes) in docs[its name]."""

    def filtering(name: str, **curator) -> None:
        c = Curator(**curator)
        docs[name], _ = filter_to_file(shards, str(out / f"{len(docs)}.parquet"), c)
        docs[name]["index_bytes"] = c.index_bytes()

    Curator(PRESETS["clean"])  # compiling conditions imports DuckDB, once per process: here, not in a timed pass

    def stats_of_view(**curator) -> None:
        run_jobs(shards, [StatsJob()], view=view(shards, Curator(**curator)))

    return {
        STATS: lambda: collect(shards, 1),
        VIEW: lambda: stats_of_view(conditions=PRESETS["clean"]),
        VIEW_DEDUP: lambda: stats_of_view(conditions=PRESETS["clean"], dedup="exact"),
        CLEAN: lambda: filtering(CLEAN, conditions=PRESETS["clean"]),
        EXACT: lambda: filtering(EXACT, conditions=PRESETS["clean"], dedup="exact"),
        NEAR: lambda: filtering(NEAR, dedup="near"),
    }


def run(ctx: Context) -> list[Result]:
    shards = ctx.shards
    out = Path(tempfile.mkdtemp(prefix="streamproc-bench-filter-"))
    docs: dict[str, dict] = {}
    fns = contenders(shards, out, docs)
    cpu: dict[str, float] = {}
    wall: dict[str, float] = {}
    for name, fn in fns.items():
        gc.collect()
        c, w = time.process_time(), time.perf_counter()
        fn()
        cpu[name], wall[name] = time.process_time() - c, time.perf_counter() - w
    rows = docs[CLEAN]["read"]
    data = f"{ctx.label}: {rows:,} rows in {len(shards)} shards, 1 worker"
    unit = "rows/CPU s"

    def note(name: str) -> str:
        return f"wall: {rows / wall[name]:,.0f} rows/s"

    results = [Result("filter", STATS, rows / cpu[STATS], unit, data, note=note(STATS))]
    for name in list(fns)[1:]:
        results.append(Result("filter", name, rows / cpu[name], unit, data, STATS, cpu[STATS] / cpu[name], "~1", note=note(name)))

    near = docs[NEAR]
    per_row = near["index_bytes"] / max(near["kept"], 1)
    results.append(Result("filter", "near-dedup index", per_row * 1e6 / 2**30, "GiB per million rows", data,
                          note=f"{near['index_bytes'] / 2**20:,.1f} MiB for {near['kept']:,} kept rows; {near['removed']:,} removed as near-duplicates"))
    exact = docs[EXACT]
    results.append(Result("filter", "exact-dedup index", exact["index_bytes"] / max(exact["kept"], 1) * 1e6 / 2**20, "MiB per million rows", data))

    tracemalloc.start()
    try:
        fns[NEAR]()  # once more, traced
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    results.append(Result("filter", "filter --dedup near: peak traced memory", peak / 2**20, "MiB", data,
                          note="Python allocations of the whole pass (reading, parsing, index)"))
    return results
