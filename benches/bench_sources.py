"""Reading speed of the sources, on the same synthetic file in the same run.

    python3 -m pytest benches/bench_sources.py --benchmark-only --benchmark-group-by=group

`parquet`: rows/s of the direct pyarrow reader (the default) against the `datasets` streaming
iterator on one Parquet file; compare their means. `synth`: generator throughput.
"""

from __future__ import annotations

import os

import pytest

from streamproc import synth
from streamproc.sources import Shard, hub_part, iter_rows, read

ROWS = int(os.environ.get("STREAMPROC_BENCH_ROWS", "1000"))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench_sources")
    out = {"parquet": d / "rows.parquet", "jsonl": d / "rows.jsonl"}
    for p in out.values():
        synth.write(p, ROWS, seed=1)
    return out


def _count(items) -> int:
    n = sum(1 for _ in items)
    assert n == ROWS
    return n


@pytest.mark.parametrize("fmt, builder", [("parquet", "parquet"), ("jsonl", "json")])
@pytest.mark.parametrize("reader", ["direct", "datasets"])
def test_read(benchmark, files, fmt, builder, reader):
    """`direct` is the default reader (pyarrow for Parquet, orjson lines for JSONL)."""
    benchmark.group = fmt
    path = files[fmt]
    if reader == "direct":
        items = lambda: iter_rows([path])  # noqa: E731
    else:
        items = lambda: read(Shard((hub_part(builder, [str(path)], "x"),)))  # noqa: E731
    benchmark.pedantic(lambda: _count(items()), rounds=5, warmup_rounds=1)


@pytest.mark.benchmark(group="synth")
def test_synth_parquet(benchmark, tmp_path):
    benchmark.pedantic(lambda: synth.write(tmp_path / "s.parquet", ROWS, seed=2), rounds=2, warmup_rounds=0)
