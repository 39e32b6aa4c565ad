"""Reading speed of the sources: the readers of `streamproc bench --section sources`
(streamproc/benchmarks/sources.py: the direct reader, pyarrow for Parquet and orjson lines for
JSONL, against the `datasets` streaming iterator) on the same synthetic file in the same run,
plus the generator's throughput.

    python3 -m pytest benches/bench_sources.py --benchmark-only --benchmark-group-by=group

Groups `parquet` and `jsonl`: rows/s of each reader; compare their means. `synth`: generator
throughput. STREAMPROC_BENCH_ROWS sets the file size (default 1,000 rows).
"""

from __future__ import annotations

import os

import pytest

from streamproc.io import synth
from streamproc.benchmarks.sources import DATASETS, DIRECT, count_rows, readers
from streamproc.io.sources import plan

ROWS = int(os.environ.get("STREAMPROC_BENCH_ROWS", "1000"))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench_sources")
    out = {"parquet": d / "rows.parquet", "jsonl": d / "rows.jsonl"}
    for p in out.values():
        synth.write(p, ROWS, seed=1)
    return out


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
@pytest.mark.parametrize("reader", [DIRECT, DATASETS])
def test_read(benchmark, files, fmt, reader):
    benchmark.group = fmt
    split = readers(plan([files[fmt]]))[reader]
    assert benchmark.pedantic(count_rows, args=(split,), rounds=5, warmup_rounds=1) == ROWS


@pytest.mark.benchmark(group="synth")
def test_synth_parquet(benchmark, tmp_path):
    benchmark.pedantic(lambda: synth.write(tmp_path / "s.parquet", ROWS, seed=2), rounds=2, warmup_rounds=0)
