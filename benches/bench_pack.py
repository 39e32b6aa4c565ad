"""Packing speed: the contenders of `streamproc bench --section pack`
(streamproc/benchmarks/pack.py): streamproc's BFD against TRL's `pack_dataset` BFD on the same
sequences, the row assignment alone on 1M lengths, and the whole pack job with 1 and 2 workers on
the built-in sample in 1 MB splits. Compare the means within a group; extra_info holds sequences
(or rows) per second. `streamproc bench --section pack [INPUT...]` adds packing efficiency.

    python3 -m pytest benches/bench_pack.py --benchmark-only --benchmark-group-by=group

STREAMPROC_BENCH_SEQS sets the number of sequences (default 20,000, as `streamproc bench`).
"""

from __future__ import annotations

import os

import pytest

from streamproc.benchmarks import context
from streamproc.benchmarks.pack import (
    ORDER_LENGTHS, PACKER, SEQ_LEN, TRL, lengths, run_pack_job, scaling_splits, sequences, speed_contenders,
)
from streamproc.prepare.pack import pack_order
from streamproc.prepare.job import PackOptions
from streamproc.prepare.tokenizer import cached_tokenizer

N = int(os.environ.get("STREAMPROC_BENCH_SEQS", "20000"))


@pytest.fixture(scope="module")
def speed_fns():
    return speed_contenders(sequences(lengths(N)))


def rate(benchmark, n: int, unit: str) -> None:
    if benchmark.stats:  # None under --benchmark-disable
        benchmark.extra_info[unit] = n / benchmark.stats.stats.min


@pytest.mark.parametrize("packer", [PACKER, TRL])
@pytest.mark.benchmark(group=f"pack: {N:,} sequences, seq-len {SEQ_LEN}")
def test_packer(benchmark, speed_fns, packer):
    benchmark.pedantic(speed_fns[packer], rounds=3, warmup_rounds=0)
    rate(benchmark, N, "seq/s")


@pytest.mark.benchmark(group="pack: row assignment, 1M lengths")
def test_pack_order_1m(benchmark):
    lens = lengths(ORDER_LENGTHS)
    benchmark.pedantic(pack_order, args=(lens, SEQ_LEN), rounds=5)
    rate(benchmark, len(lens), "seq/s")


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.benchmark(group="pack job: built-in sample")
def test_pack_job(benchmark, workers, tmp_path):
    splits = scaling_splits(context().shards)
    cached_tokenizer(PackOptions().tokenizer)
    rows = benchmark.pedantic(run_pack_job, args=(splits, tmp_path, workers), rounds=2)
    rate(benchmark, rows, "rows/s")
