"""Local engine (2 worker processes) against the Ray engine (a local 2-CPU Ray cluster) on the
same synthetic Parquet file: what running on Ray costs on one node.

    python3 -m pytest benches/bench_engines.py --benchmark-only --benchmark-group-by=group

Each group times one stage on both engines; extra_info holds rows/s and, for Ray, the cluster
start-up (paid once per process, not timed). The ratio of the two means is the Ray overhead.
STREAMPROC_BENCH_ENGINE_ROWS sets the file size for stats (default 20,000 rows, about 190 MB),
STREAMPROC_BENCH_ENGINE_PACK_ROWS for pack (default 4,000 rows); the files are made once by
`streamproc synth` under STREAMPROC_BENCH_DIR (default /tmp).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from streamproc.analyze import metrics
from streamproc.run.ray_engine import RayEngine
from streamproc.benchmarks import synthetic_file
from streamproc.prepare.job import pack_to_dir
from streamproc.io.sources import plan

ray = pytest.importorskip("ray")

ROWS = int(os.environ.get("STREAMPROC_BENCH_ENGINE_ROWS", "20000"))
PACK_ROWS = int(os.environ.get("STREAMPROC_BENCH_ENGINE_PACK_ROWS", "4000"))
CPUS = 2


@pytest.fixture(scope="module")
def synth_file() -> Path:
    return synthetic_file(ROWS)


@pytest.fixture(scope="module")
def pack_file() -> Path:
    return synthetic_file(PACK_ROWS)


@pytest.fixture(scope="module")
def cluster():
    t = time.perf_counter()
    ray.init(num_cpus=CPUS, include_dashboard=False, log_to_driver=False)
    yield time.perf_counter() - t
    ray.shutdown()


def _rows_per_s(benchmark, tally, rows: int = ROWS) -> None:
    assert tally.read == rows and not tally.rejected
    if benchmark.stats:  # None under --benchmark-disable
        benchmark.extra_info["rows_per_s"] = round(rows / benchmark.stats.stats.mean)


@pytest.mark.benchmark(group="stats: local vs ray")
def test_stats_local(benchmark, synth_file):
    shards = plan([synth_file])
    _, tally = benchmark.pedantic(lambda: metrics.collect(shards, workers=CPUS), rounds=2, warmup_rounds=0)
    _rows_per_s(benchmark, tally)


@pytest.mark.benchmark(group="stats: local vs ray")
def test_stats_ray(benchmark, synth_file, cluster):
    shards = plan([synth_file])
    metrics.collect(shards, workers=RayEngine())  # warm-up: worker processes and imports
    _, tally = benchmark.pedantic(lambda: metrics.collect(shards, workers=RayEngine()), rounds=2, warmup_rounds=0)
    _rows_per_s(benchmark, tally)
    benchmark.extra_info["cluster_start_s"] = round(cluster, 1)


@pytest.mark.benchmark(group="pack: local vs ray")
def test_pack_local(benchmark, pack_file, tmp_path):
    shards = plan([pack_file])
    res = benchmark.pedantic(lambda: pack_to_dir(shards, tmp_path, workers=CPUS, restart=True), rounds=2, warmup_rounds=0)
    _rows_per_s(benchmark, res.tally, PACK_ROWS)


@pytest.mark.benchmark(group="pack: local vs ray")
def test_pack_ray(benchmark, pack_file, tmp_path, cluster):
    shards = plan([pack_file])
    res = benchmark.pedantic(lambda: pack_to_dir(shards, tmp_path, workers=RayEngine(), restart=True), rounds=2, warmup_rounds=0)
    _rows_per_s(benchmark, res.tally, PACK_ROWS)
