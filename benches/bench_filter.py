"""Filter throughput against the stats pass on the same synthetic file, and near-dedup time and
index memory:

    python3 -m pytest benches/bench_filter.py --benchmark-only --benchmark-group-by=group

The file is made once by `streamproc synth` under STREAMPROC_BENCH_DIR (default /tmp);
STREAMPROC_BENCH_FILTER_ROWS sets its size (default 14,701, the full dataset's row count).
`streamproc bench --section filter FILE` gives the same figures as one table.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from streamproc import synth
from streamproc.curate import PRESETS, Curator, filter_to_file
from streamproc.metrics import collect
from streamproc.sources import plan

ROWS = int(os.environ.get("STREAMPROC_BENCH_FILTER_ROWS", "14701"))
DIR = Path(os.environ.get("STREAMPROC_BENCH_DIR", "/tmp"))


@pytest.fixture(scope="module")
def synthetic() -> Path:
    path = DIR / f"streamproc-bench-synth-{ROWS}.parquet"
    if not path.exists():
        synth.write(path, ROWS, seed=0)
    return path


@pytest.mark.benchmark(group="filter vs stats")
def test_stats_pass(benchmark, synthetic):
    shards = plan([synthetic])
    _, tally = benchmark.pedantic(lambda: collect(shards, 1), rounds=1, warmup_rounds=0)
    benchmark.extra_info["rows_per_s"] = tally.read / benchmark.stats.stats.mean


@pytest.mark.parametrize("dedup", [None, "exact", "near"])
@pytest.mark.benchmark(group="filter vs stats")
def test_filter_pass(benchmark, synthetic, tmp_path, dedup):
    shards = plan([synthetic])
    curator = Curator(PRESETS["clean"], dedup)  # built (and DuckDB imported) outside the timing
    doc, _ = benchmark.pedantic(lambda: filter_to_file(shards, str(tmp_path / "kept.parquet"), curator), rounds=1, warmup_rounds=0)
    benchmark.extra_info.update(rows_per_s=doc["read"] / benchmark.stats.stats.mean, kept=doc["kept"])
    if dedup:
        benchmark.extra_info["index_mib_per_million_rows"] = curator.index_bytes() / max(doc["kept"], 1) * 1e6 / 2**20
    assert doc["read"] == doc["kept"] + doc["removed"] + doc["rejected"] == ROWS
