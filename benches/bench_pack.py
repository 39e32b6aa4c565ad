"""Packing speed: streamproc's BFD against TRL's `pack_dataset` BFD on the same sequences, the row
assignment alone on 1M lengths, and the whole pack job with 1 and 2 workers on the built-in sample.
Compare the means within a group; extra_info holds sequences (or rows) per second.

    python3 -m pytest benches/bench_pack.py --benchmark-only --benchmark-group-by=group

`streamproc bench --section pack [INPUT...]` prints the same figures, plus packing efficiency.
"""

from __future__ import annotations

import os

import pytest

from streamproc.benchmarks.pack import SEQ_LEN, lengths, sequences, streamproc_pack, trl_pack, trl_table
from streamproc.pack import pack_order
from streamproc.pack_job import PackOptions, cached_tokenizer, pack_to_dir
from streamproc.sources import SAMPLE, plan

N = int(os.environ.get("STREAMPROC_BENCH_SEQS", "20000"))


@pytest.fixture(scope="module")
def seqs():
    return sequences(lengths(N))


def rate(benchmark, n: int, unit: str) -> None:
    if benchmark.stats:  # None under --benchmark-disable
        benchmark.extra_info[unit] = n / benchmark.stats.stats.min


@pytest.mark.benchmark(group=f"pack: {N:,} sequences, seq-len {SEQ_LEN}")
def test_streamproc_packer(benchmark, seqs):
    streamproc_pack(seqs)  # numba (from COMPILED_FROM sequences): compile / cache load
    benchmark.pedantic(streamproc_pack, args=(seqs,), rounds=5, warmup_rounds=1)
    rate(benchmark, N, "seq/s")


@pytest.mark.benchmark(group=f"pack: {N:,} sequences, seq-len {SEQ_LEN}")
def test_trl_pack_dataset_bfd(benchmark, seqs):
    benchmark.pedantic(trl_pack, args=(trl_table(seqs),), rounds=3)
    rate(benchmark, N, "seq/s")


@pytest.mark.benchmark(group="pack: row assignment, 1M lengths")
def test_pack_order_1m(benchmark):
    lens = lengths(1_000_000)
    pack_order(lens[:10], SEQ_LEN)
    benchmark.pedantic(pack_order, args=(lens, SEQ_LEN), rounds=5)
    rate(benchmark, len(lens), "seq/s")


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.benchmark(group="pack job: built-in sample")
def test_pack_job(benchmark, workers, tmp_path):
    shards = plan([SAMPLE], shard_bytes=1 << 20)  # one shard per row group, so 2 workers have work
    cached_tokenizer(PackOptions().tokenizer)
    benchmark.pedantic(lambda: pack_to_dir(shards, tmp_path, PackOptions(seq_len=SEQ_LEN), workers=workers, restart=True), rounds=2)
    rate(benchmark, 300, "rows/s")
