"""Reading throughput: rows/s of the direct readers (pyarrow for Parquet, orjson lines for JSONL),
streamproc's default, against the `datasets` streaming iterator the guide loads with, on the same
files. Both validate every row into a `Row`. Target: direct at least as fast (else `datasets`
should be the default)."""

from __future__ import annotations

from typing import Sequence

from streamproc.io.sources import Split, hub_part, read
from streamproc.benchmarks import Context, Result, best_times

BUILDERS = {"parquet": "parquet", "jsonl": "json"}  # part kind -> datasets builder
DIRECT = "direct reader (default)"
DATASETS = "datasets streaming iterator"


def count_rows(shard: Split) -> int:
    return sum(1 for _ in read(shard))


def readers(shards: Sequence[Split], limit: int | None = None) -> dict[str, Split]:
    """The same Parquet and plain JSONL parts of `shards` as one split read each way (none: no
    such parts)."""
    parts = [p for s in shards for p in s.parts if p.kind in BUILDERS]
    if not parts:
        return {}
    files: dict[str, dict[str, None]] = {}  # builder -> paths in order (a JSONL file may be several parts)
    for p in parts:
        files.setdefault(BUILDERS[p.kind], {})[p.path] = None
    return {
        DIRECT: Split(tuple(parts), limit),
        DATASETS: Split(tuple(hub_part(b, list(paths), "bench") for b, paths in files.items()), limit),
    }


def run(ctx: Context) -> list[Result]:
    shards = readers(ctx.shards, 300 if ctx.quick else None)
    if not shards:
        return [Result("sources", DIRECT, 0.0, "rows/s", ctx.label, note="no Parquet or plain JSONL input")]
    rows = count_rows(shards[DIRECT])
    count_rows(shards[DATASETS])  # warm both: the first datasets call imports and sets up its builder
    t = best_times({name: lambda s=s: count_rows(s) for name, s in shards.items()}, ctx.repeat)
    data = f"{ctx.label}: {rows:,} rows"
    return [
        Result("sources", DATASETS, rows / t[DATASETS], "rows/s", data),
        Result("sources", DIRECT, rows / t[DIRECT], "rows/s", data, DATASETS, t[DATASETS] / t[DIRECT], ">= 1"),
    ]
