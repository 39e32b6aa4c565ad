"""Stats throughput (parse + aggregate) from a synthetic Parquet file of about 1 GB, with 1 and
2 worker processes, plus the peak memory of each whole run.

    python3 -m pytest benches/bench_stats.py --benchmark-only --benchmark-group-by=group

`whole run`: the ratio of the two means is the 1 -> 2 worker speed-up (target >= 1.7 on 2
cores); extra_info holds rows/s, MB/s and peak RSS in MiB of parent + workers (target < 1024).
`vs guide`: the guide's Step 3 loop against streamproc's parse + aggregate, same rows in memory.
The file is made once by `streamproc synth` and kept under STREAMPROC_BENCH_DIR (default /tmp);
STREAMPROC_BENCH_STATS_ROWS sets its size (110,000 rows is about 1 GB).
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest

from streamproc import synth
from streamproc.benchmarks.guide import tool_use_metrics
from streamproc.benchmarks.stats import aggregate, guide_rows, whole_run
from streamproc.sources import iter_rows, plan

ROWS = int(os.environ.get("STREAMPROC_BENCH_STATS_ROWS", "110000"))
DIR = Path(os.environ.get("STREAMPROC_BENCH_DIR", "/tmp"))


@pytest.fixture(scope="module")
def big_file() -> Path:
    path = DIR / f"streamproc-bench-synth-{ROWS}.parquet"
    if not path.exists():
        synth.write(path, ROWS, seed=0)
    return path


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.benchmark(group="whole run")
def test_whole_run(benchmark, big_file, workers):
    shards = plan([big_file])
    run = benchmark.pedantic(lambda: whole_run(shards, workers), rounds=1, warmup_rounds=0)
    mb = big_file.stat().st_size / 1e6
    benchmark.extra_info.update(
        rows=run.rows, rows_per_s=run.rows / run.seconds, mb_per_s=mb / run.seconds, peak_rss_mib=run.peak_mib
    )
    assert run.rows == ROWS


@pytest.fixture(scope="module")
def sample_rows(big_file):
    rows = list(itertools.islice(iter_rows([big_file]), 2000))
    return rows, guide_rows(rows)


@pytest.mark.benchmark(group="vs guide")
def test_guide_step3(benchmark, sample_rows):
    benchmark.pedantic(lambda: tool_use_metrics(sample_rows[1]), rounds=3, warmup_rounds=0)


@pytest.mark.benchmark(group="vs guide")
def test_streamproc_aggregate(benchmark, sample_rows):
    c = benchmark.pedantic(lambda: aggregate(sample_rows[0]), rounds=3, warmup_rounds=0)
    assert c.traces == len(sample_rows[0])
