"""The pack spill: any record's fields to an Arrow IPC file and back, what packing reads of it,
and shards gathered from spill files equal to those packed in memory."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from streamproc.prepare.mask import MaskedSeq
from streamproc.prepare.pack import IGNORE, Packer, assemble, plan_rows
from streamproc.prepare.shards import to_table
from streamproc.prepare.spill import SpillError, SpillFile, SpillIndex, write_spill


def masked(draw_lengths: list[int], rng: np.random.Generator, prefix: int = 0) -> list[MaskedSeq]:
    shared = rng.integers(0, 150_000, prefix, dtype=np.int32)
    out = []
    for k, n in enumerate(draw_lengths):
        ids = rng.integers(0, 150_000, n, dtype=np.int32)
        ids[: min(prefix, n)] = shared[: min(prefix, n)]
        labels = np.where(rng.random(n) < 0.5, ids, IGNORE).astype(np.int32)
        out.append(MaskedSeq(f"trace-{k}", ids, labels, min(prefix, n - 1) if k % 2 else 0))
    return out


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.lists(st.integers(1, 300), max_size=12), min_size=1, max_size=5), st.integers(0, 2**32 - 1), st.booleans())
def test_gathered_shards_equal_the_in_memory_packer(tmp_path_factory, splits, seed, share):
    """Sequences spilled split by split, then planned and gathered, give the same packed table
    as the in-memory Packer fed the same sequences."""
    d = tmp_path_factory.mktemp("spill")
    rng = np.random.default_rng(seed)
    files, every = [], []
    for lengths in splits:
        seqs = masked(lengths, rng, prefix=8)
        every += seqs
        files.append(write_spill(d, {"train": seqs}))
    packer = Packer(seq_len=300, row_len=320, share_prefix=share)
    packer.add(every)
    want = to_table(packer.flush())
    index = SpillIndex.read(d, files, share)
    assert index.lengths.tolist() == [len(s.input_ids) for s in every]
    rows = plan_rows(index.lengths, index.boundaries, index.prefix_keys, 320)
    with index.gather(rows) as g:
        got = to_table(assemble(rows, g.ids, g.trained, g.trace_ids))
    assert got.equals(want)


@dataclass(slots=True)
class Sample:
    """A record with other fields than MaskedSeq's: the spill stores whatever the masker makes."""

    trace_id: str
    input_ids: np.ndarray
    labels: np.ndarray
    weights: np.ndarray
    acts: np.ndarray
    turn: int
    score: float
    last: bool


def test_any_record_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    records = [Sample(f"t{k}", rng.integers(0, 9, k + 1, dtype=np.int32), np.full(k + 1, IGNORE, np.int32),
                      rng.random(k + 1).astype(np.float32), rng.random(k + 1) < 0.5, k, k / 3, bool(k % 2)) for k in range(5)]
    name = write_spill(tmp_path, {"train": records[:3], "eval": records[3:]})
    f = SpillFile(tmp_path / name)
    try:
        assert f.values("split").tolist() == [0, 0, 0, 1, 1]
        for field in ("input_ids", "weights", "acts"):
            read = f.list_reader(field)
            got = [read(i) for i in range(5)]
            assert all(g.dtype == getattr(r, field).dtype and (g == getattr(r, field)).all() for g, r in zip(got, records))
        del read  # it holds a view of the offsets: the file unmaps once no view is left
        assert f.values("turn").tolist() == [r.turn for r in records] and f.values("score").tolist() == [r.score for r in records]
        assert f.values("last").tolist() == [r.last for r in records]
        assert f.table.column("trace_id").to_pylist() == [r.trace_id for r in records]
    finally:
        f.close()
    assert write_spill(tmp_path, {"train": [], "eval": []}) is None


def test_a_spill_the_disk_refuses_is_one_error_naming_the_file(tmp_path):
    """Past RLIMIT_FSIZE a write fails with EFBIG, as one on a full disk fails with ENOSPC
    (Python ignores SIGXFSZ): SpillError, and no partial file left."""
    import resource

    seqs = {"train": masked([4000] * 4, np.random.default_rng(1))}
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (16_000, hard))
    try:
        with pytest.raises(SpillError, match=r"/\w+\.arrow: cannot write the spill file .*File too large.*twice the shards' size"):
            write_spill(tmp_path, seqs)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert not list(tmp_path.iterdir())
