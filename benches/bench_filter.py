"""Filter throughput against the stats pass on the same synthetic file, and the dedup indexes'
memory: the passes of `streamproc bench --section filter` (streamproc/benchmarks/filter.py).

    python3 -m pytest benches/bench_filter.py --benchmark-only --benchmark-group-by=group

The file is made once by `streamproc synth` under STREAMPROC_BENCH_DIR (default /tmp);
STREAMPROC_BENCH_FILTER_ROWS sets its size (default 14,701, the full dataset's row count).
`streamproc bench --section filter FILE` gives the same figures as one table, in CPU time.
"""

from __future__ import annotations

import os

import pytest

from streamproc.benchmarks import synthetic_file
from streamproc.benchmarks.filter import CLEAN, EXACT, NEAR, STATS, VIEW, VIEW_DEDUP, contenders
from streamproc.io.sources import plan

ROWS = int(os.environ.get("STREAMPROC_BENCH_FILTER_ROWS", "14701"))


@pytest.fixture(scope="module")
def passes(tmp_path_factory):
    docs: dict[str, dict] = {}
    return contenders(plan([synthetic_file(ROWS)]), tmp_path_factory.mktemp("bench_filter"), docs), docs


@pytest.mark.parametrize("name", [STATS, VIEW, VIEW_DEDUP, CLEAN, EXACT, NEAR])
@pytest.mark.benchmark(group="filter vs stats")
def test_pass(benchmark, passes, name):
    fns, docs = passes
    benchmark.pedantic(fns[name], rounds=1, warmup_rounds=0)
    if benchmark.stats:  # None under --benchmark-disable
        benchmark.extra_info["rows_per_s"] = ROWS / benchmark.stats.stats.mean
    if name in docs:
        doc = docs[name]
        assert doc["read"] == doc["kept"] + doc["removed"] + doc["rejected"] == ROWS
        benchmark.extra_info["kept"] = doc["kept"]
        if doc["index_bytes"]:
            benchmark.extra_info["index_mib_per_million_rows"] = doc["index_bytes"] / max(doc["kept"], 1) * 1e6 / 2**20
