"""Stats throughput: the figures of `streamproc bench --section stats`
(streamproc/benchmarks/stats.py): parse + aggregate of a synthetic Parquet file of about 1 GB
with 1 and 2 worker processes, each whole run in a fresh interpreter with its peak memory, and
the guide's Step 3 loop against streamproc's parse + aggregate on the same rows in memory.

    python3 -m pytest benches/bench_stats.py --benchmark-only --benchmark-group-by=group

`whole run`: the ratio of the two means is the 1 -> 2 worker speed-up (target >= 1.7 on 2
cores); extra_info holds rows/s, MB/s and peak RSS in MiB of parent + workers (target < 1024).
The file is made once by `streamproc synth` and kept under STREAMPROC_BENCH_DIR (default /tmp);
STREAMPROC_BENCH_STATS_ROWS sets its size (110,000 rows is about 1 GB).
"""

from __future__ import annotations

import os

import pytest

from streamproc.benchmarks import context, synthetic_file
from streamproc.benchmarks.stats import GUIDE, OURS, in_memory_contenders, memory_rows, whole_run

ROWS = int(os.environ.get("STREAMPROC_BENCH_STATS_ROWS", "110000"))


@pytest.fixture(scope="module")
def big_file():
    return synthetic_file(ROWS)


@pytest.fixture(scope="module")
def big(big_file):
    return context([big_file])


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.benchmark(group="whole run")
def test_whole_run(benchmark, big_file, big, workers):
    run = benchmark.pedantic(whole_run, args=(big.shards, workers), rounds=1, warmup_rounds=0)
    mb = big_file.stat().st_size / 1e6
    benchmark.extra_info.update(
        rows=run.rows, rows_per_s=run.rows / run.seconds, mb_per_s=mb / run.seconds, peak_rss_mib=run.peak_mib
    )
    assert run.rows == ROWS


@pytest.mark.parametrize("who", [GUIDE, OURS])
@pytest.mark.benchmark(group="vs guide")
def test_in_memory(benchmark, big, who):
    benchmark.pedantic(in_memory_contenders(memory_rows(big))[who], rounds=3, warmup_rounds=0)
