"""Best-fit-decreasing packing: properties against simple references, and the streaming Packer."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamproc.benchmarks.pack import lower_bound_rows
from streamproc.prepare.pack import IGNORE, Packer, pack_lengths, pack_order


def reference_bfd(lengths: list[int], capacity: int) -> list[list[int]]:
    """BFD as the textbook says, in O(N^2): longest first (ties in input order), each into the open
    row with the least free space that fits; among equals, the one that has had that space longest."""
    rows: list[list[int]] = []
    free: list[int] = []
    since: list[int] = []
    for step, i in enumerate(sorted(range(len(lengths)), key=lambda i: -lengths[i])):
        fits = [(free[r], since[r], r) for r in range(len(rows)) if free[r] >= lengths[i]]
        if fits:
            r = min(fits)[2]
        else:
            r = len(rows)
            rows.append([])
            free.append(capacity)
            since.append(step)
        rows[r].append(i)
        free[r] -= lengths[i]
        since[r] = step
    return rows


def first_fit_decreasing(lengths: list[int], capacity: int) -> int:
    free: list[int] = []
    for n in sorted(lengths, reverse=True):
        r = next((r for r, f in enumerate(free) if f >= n), None)
        if r is None:
            free.append(capacity - n)
        else:
            free[r] -= n
    return len(free)


@st.composite
def instances(draw, max_size=200):
    capacity = draw(st.integers(1, 300))
    lengths = draw(st.lists(st.integers(1, capacity), max_size=max_size))
    return lengths, capacity


@settings(max_examples=300, deadline=None)
@given(instances())
def test_every_sequence_placed_once_and_no_row_over_capacity(inst):
    lengths, capacity = inst
    rows = pack_lengths(lengths, capacity)
    assert sorted(i for r in rows for i in r) == list(range(len(lengths)))
    assert all(r and sum(lengths[i] for i in r) <= capacity for r in rows)


@settings(max_examples=300, deadline=None)
@given(instances(max_size=60))
def test_equals_reference_bfd(inst):
    lengths, capacity = inst
    assert pack_lengths(lengths, capacity) == reference_bfd(lengths, capacity)


@settings(max_examples=300, deadline=None)
@given(instances())
def test_bounds_on_the_number_of_rows(inst):
    lengths, capacity = inst
    rows = pack_lengths(lengths, capacity)
    loads = [sum(lengths[i] for i in r) for r in rows]
    assert len(rows) >= math.ceil(sum(lengths) / capacity)
    # Any-fit: a second row at most half full would have taken the first one's items.
    assert sum(2 * load <= capacity for load in loads) <= 1
    # BFD and FFD both stay within 11/9 OPT + 6/9, and OPT <= FFD.
    assert len(rows) <= 11 / 9 * first_fit_decreasing(lengths, capacity) + 6 / 9


def optimal_rows(lengths: list[int], capacity: int) -> int:
    """The fewest rows any packing needs, by exhaustive search (small inputs only)."""
    items = sorted(lengths, reverse=True)
    best = len(items)

    def place(i: int, loads: list[int]) -> None:
        nonlocal best
        if len(loads) >= best:
            return
        if i == len(items):
            best = len(loads)
            return
        for r in {load: r for r, load in enumerate(loads) if load + items[i] <= capacity}.values():
            loads[r] += items[i]
            place(i + 1, loads)
            loads[r] -= items[i]
        place(i + 1, loads + [items[i]])

    place(0, [])
    return best


@settings(max_examples=300, deadline=None)
@given(instances(max_size=9))
def test_the_lower_bound_is_never_above_an_optimal_packing(inst):
    # The bound `streamproc bench` quotes as "no packing can beat": it must hold for every packing,
    # and it is at least the plain volume bound.
    lengths, capacity = inst
    bound = lower_bound_rows(np.array(lengths, np.int64), capacity)
    assert math.ceil(sum(lengths) / capacity) <= bound <= optimal_rows(lengths, capacity) <= len(pack_lengths(lengths, capacity))


def test_the_lower_bound_counts_sequences_that_cannot_share_a_row():
    assert lower_bound_rows(np.array([6, 6, 6]), 10) == 3  # the volume bound says 2
    assert lower_bound_rows(np.array([6, 6, 3, 3, 3, 3]), 10) == 3  # 8 left beside the 6s, 12 to place


@settings(max_examples=100, deadline=None)
@given(instances(), st.randoms(use_true_random=False))
def test_deterministic_and_longest_first_within_rows(inst, rnd):
    lengths, capacity = inst
    order, bounds = pack_order(np.array(lengths, np.int64), capacity)
    again = pack_order(np.array(lengths, np.int64), capacity)
    assert np.array_equal(order, again[0]) and np.array_equal(bounds, again[1])
    for a, b in zip(bounds[:-1], bounds[1:]):
        row = [lengths[i] for i in order[a:b]]
        assert row == sorted(row, reverse=True)


def test_lengths_outside_capacity_are_refused():
    with pytest.raises(ValueError, match="sequence 1 has length 9"):
        pack_lengths([3, 9], 8)
    with pytest.raises(ValueError, match="length 0"):
        pack_lengths([0], 8)
    assert pack_lengths([], 8) == []


def test_large_input_packs_tightly():
    rng = np.random.default_rng(0)
    lengths = np.minimum(rng.lognormal(7, 1, 200_000).astype(np.int64) + 1, 8192)
    order, bounds = pack_order(lengths, 8192)
    assert sorted(order.tolist()) == list(range(len(lengths)))
    loads = np.add.reduceat(lengths[order], bounds[:-1])
    assert loads.max() <= 8192
    assert lengths.sum() / (len(loads) * 8192) > 0.999


@dataclass(slots=True)
class Seq:
    trace_id: str
    input_ids: np.ndarray
    labels: np.ndarray


def _seqs(lengths, rng):
    out = []
    for k, n in enumerate(lengths):
        ids = rng.integers(0, 150_000, n).astype(np.int32)
        labels = np.where(rng.random(n) < 0.5, ids, IGNORE).astype(np.int32)
        out.append(Seq(f"t{k}", ids, labels))
    return out


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(1, 64), max_size=80), st.integers(0, 2**32 - 1))
def test_packer_rows_hold_the_sequences_exactly(lengths, seed):
    seqs = _seqs(lengths, np.random.default_rng(seed))
    packer = Packer(seq_len=64, buffer_size=10)
    packer.add(seqs)
    assert packer.full == (len(lengths) >= 10)
    p = packer.flush()
    assert len(packer) == 0
    assert p.rows == len(pack_lengths(lengths, 64))
    assert p.labels.dtype == p.input_ids.dtype == p.seq_lens.dtype == np.int32
    by_id = {s.trace_id: s for s in seqs}
    for r in range(p.rows):
        row = p.slice(r, r + 1)
        assert len(row.input_ids) == row.seq_lens.sum() <= 64
        starts = np.concatenate([[0], np.cumsum(row.seq_lens)])
        for k, tid in enumerate(row.trace_ids):
            s = by_id[tid]
            assert np.array_equal(row.input_ids[starts[k] : starts[k + 1]], s.input_ids)
            assert np.array_equal(row.labels[starts[k] : starts[k + 1]], s.labels)
    assert sorted(p.trace_ids) == sorted(by_id)


def test_packer_refuses_a_sequence_longer_than_a_row():
    packer = Packer(seq_len=4)
    with pytest.raises(ValueError, match="trace x: sequence of 5 tokens"):
        packer.add([Seq("x", np.arange(5, dtype=np.int32), np.arange(5, dtype=np.int32))])


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 300), st.lists(st.integers(1, 300), max_size=400))
def test_python_and_numba_kernels_place_alike(capacity, lengths):
    """Small buffers pack in Python (no numba start-up), large ones compiled: the same code, the
    same rows."""
    from streamproc.prepare.pack import _kernels

    lengths = np.minimum(np.asarray(lengths, np.int64), capacity)
    got = []
    for compiled in (False, True):
        longest_first, place, by_row = _kernels(compiled)
        order = longest_first(lengths, capacity)
        got.append([a.tolist() for a in by_row(order, *place(lengths, order, capacity))])
    assert got[0] == got[1]


# ----------------------------------------------------------------------------- shared prefixes


@dataclass
class PSeq:
    trace_id: str
    input_ids: np.ndarray
    labels: np.ndarray
    prefix_len: int


@st.composite
def prefix_groups(draw):
    """Sequences in groups that begin with the same prefix (a prefix of 0: no system turn), each
    prefix + remainder <= seq_len, and a row_len of at least seq_len."""
    seq_len = draw(st.integers(4, 80))
    row_len = seq_len * draw(st.integers(1, 4)) + draw(st.integers(0, 5))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    seqs = []
    for g in range(draw(st.integers(0, 5))):
        p = draw(st.integers(0, seq_len - 1))
        prefix = rng.integers(0, 1000, p).astype(np.int32) + g * 1000  # distinct per group
        for n in draw(st.lists(st.integers(1, seq_len - p), max_size=25)):
            rest = rng.integers(0, 1000, n).astype(np.int32)
            ids = np.concatenate([prefix, rest])
            labels = np.where(rng.random(len(ids)) < 0.5, ids, IGNORE).astype(np.int32)
            labels[:p] = IGNORE
            seqs.append(PSeq(f"t{len(seqs)}", ids, labels, p))
    return seqs, seq_len, row_len


@settings(max_examples=150, deadline=None)
@given(prefix_groups())
def test_prefix_packer_places_every_sequence_once_within_the_bounds(inst):
    seqs, seq_len, row_len = inst
    p = check_prefix_rows(seqs, seq_len, row_len)
    assert p.sequence_tokens() == sum(len(s.input_ids) for s in seqs)


def check_prefix_rows(seqs, seq_len: int, row_len: int, whole_turns: bool = False):
    """Pack with shared prefixes and check every row: each sequence placed once, within the
    bounds, rebuilt exactly from the row's prefix and its remainder; a prefix is untrained, and
    never written for one remainder; with whole_turns, it ends at one of each sequence's
    boundaries and the token after it trains nothing either."""
    packer = Packer(seq_len, row_len=row_len, share_prefix=True)
    packer.add(seqs)
    p = packer.flush()
    by_id = {s.trace_id: s for s in seqs}
    assert sorted(p.trace_ids) == sorted(by_id)
    for r in range(p.rows):
        row = p.slice(r, r + 1)
        pl = int(row.prefix_lens[0])
        assert len(row.input_ids) == pl + row.seq_lens.sum() <= row_len
        assert (row.labels[:pl] == IGNORE).all()
        assert pl == 0 or len(row.seq_lens) >= 2
        pos = pl
        for n, tid in zip(row.seq_lens, row.trace_ids):
            s = by_id[tid]
            if whole_turns and pl:
                assert pl in s.boundaries.tolist() and s.labels[pl] == IGNORE
            whole = np.concatenate([row.input_ids[:pl], row.input_ids[pos : pos + n]])
            assert np.array_equal(whole, s.input_ids) and pl + n <= seq_len
            assert np.array_equal(np.concatenate([row.labels[:pl], row.labels[pos : pos + n]]), s.labels)
            pos += n
    return p


@settings(max_examples=150, deadline=None)
@given(prefix_groups())
def test_prefix_groups_pack_by_bfd_against_the_l2_bound(inst):
    # Each group's rows (shared ones, plus its members a lone remainder left plain) are BFD over
    # the remainders in rows of row_len - prefix: never below the L2 bound, never above BFD's.
    seqs, seq_len, row_len = inst
    packer = Packer(seq_len, row_len=row_len, share_prefix=True)
    packer.add(seqs)
    p = packer.flush()
    plain_ids = {tid for r in range(p.rows) if p.prefix_lens[r] == 0 for tid in p.slice(r, r + 1).trace_ids}
    groups: dict[bytes, list[PSeq]] = {}
    for s in seqs:
        if s.prefix_len:
            groups.setdefault(s.input_ids[: s.prefix_len].tobytes(), []).append(s)
    for members in groups.values():
        if len(members) < 2:
            continue
        pl = members[0].prefix_len
        rest = [len(s.input_ids) - pl for s in members]
        ids = {s.trace_id for s in members}
        shared_rows = sum(1 for r in range(p.rows) if p.prefix_lens[r] and set(p.slice(r, r + 1).trace_ids) <= ids)
        rows = shared_rows + len(ids & plain_ids)
        assert rows == len(pack_lengths(rest, row_len - pl))
        assert lower_bound_rows(np.array(rest, np.int64), row_len - pl) <= rows


def test_shared_prefix_rows_write_fewer_tokens():
    prefix = np.arange(50, dtype=np.int32)
    seqs = [PSeq(f"t{k}", np.concatenate([prefix, np.full(10, k, np.int32)]), np.concatenate([np.full(50, IGNORE, np.int32), np.full(10, k, np.int32)]), 50) for k in range(8)]
    packer = Packer(64, row_len=256, share_prefix=True)
    packer.add(seqs)
    p = packer.flush()
    # 8 sequences of 60: (256 - 50) // 10 = 20 remainders fit a row, so one row of 50 + 80 tokens.
    assert p.rows == 1 and len(p.input_ids) == 130 and p.prefix_lens.tolist() == [50]
    plain = Packer(64, row_len=256)
    plain.add(seqs)
    assert len(plain.flush().input_ids) == 480


# ----------------------------------------------------------------------------- longer shared prefixes


@dataclass
class TSeq:
    """A masked sample with the offsets where its whole untrained head turns end (MaskedSeq's)."""

    trace_id: str
    input_ids: np.ndarray
    labels: np.ndarray
    prefix_len: int
    boundaries: np.ndarray


def trace_sample(tid: str, turns: list[np.ndarray], held: int, tail: np.ndarray, rng) -> TSeq:
    """A sample that holds a trace's first `held` turns (system, task, early turns: untrained), then
    `tail`, whose first token (the next turn's header) trains nothing and the rest about half."""
    head = np.concatenate(turns[:held]) if held else np.zeros(0, np.int32)
    ids = np.concatenate([head, tail]).astype(np.int32)
    labels = np.where(rng.random(len(ids)) < 0.5, ids, IGNORE).astype(np.int32)
    labels[: len(head) + 1] = IGNORE
    ends = np.cumsum([len(t) for t in turns[:held]]).astype(np.int32)
    return TSeq(tid, ids, labels, int(ends[0]) if held else 0, ends)


@st.composite
def trace_samples(draw):
    """Samples of a few traces: each trace opens with one of a few system turns, then its task and
    turns; each of its samples holds the first whole turns (at least the system turn) and a tail."""
    seq_len = draw(st.integers(20, 120))
    row_len = seq_len * draw(st.integers(1, 4)) + draw(st.integers(0, 5))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    systems = [rng.integers(0, 1000, draw(st.integers(1, 12))).astype(np.int32) + 1000 * k for k in range(draw(st.integers(1, 3)))]
    seqs = []
    for t in range(draw(st.integers(1, 8))):
        turns = [systems[draw(st.integers(0, len(systems) - 1))]]
        turns += [rng.integers(0, 1000, n).astype(np.int32) + 10_000 * (t + 1) for n in draw(st.lists(st.integers(1, 6), max_size=5))]
        for _ in range(draw(st.integers(1, 5))):
            held = draw(st.integers(1, len(turns)))
            room = seq_len - sum(len(x) for x in turns[:held])
            if room < 1:
                continue
            tail = rng.integers(0, 1000, draw(st.integers(1, room))).astype(np.int32)
            seqs.append(trace_sample(f"t{t}-{len(seqs)}", turns, held, tail, rng))
    return seqs, seq_len, row_len


@settings(max_examples=200, deadline=None)
@given(trace_samples())
def test_every_row_prefix_is_whole_untrained_turns_of_each_of_its_sequences(inst):
    check_prefix_rows(*inst, whole_turns=True)


def test_samples_of_a_trace_share_their_task_and_early_turns():
    # 3 traces of one 10-token system turn, each with a 200-token task and early turns held by
    # all 4 of its samples: a row per trace holds system, task and turns once (240 tokens).
    rng = np.random.default_rng(1)
    system = np.arange(10, dtype=np.int32)
    seqs = []
    for t in range(3):
        turns = [system, rng.integers(100, 200, 200).astype(np.int32) + 1000 * t, rng.integers(0, 99, 30).astype(np.int32)]
        seqs += [trace_sample(f"t{t}-{k}", turns, 3, rng.integers(0, 99, 50).astype(np.int32), rng) for k in range(4)]
    packer = Packer(300, row_len=440, share_prefix=True)
    packer.add(seqs)
    p = packer.flush()
    assert p.rows == 3 and p.prefix_lens.tolist() == [240] * 3
    assert [sorted({tid.split("-")[0] for tid in p.slice(r, r + 1).trace_ids}) for r in range(3)] == [["t0"], ["t1"], ["t2"]]
    assert p.written_tokens == 3 * (240 + 4 * 50)


def test_a_short_shared_task_keeps_the_rows_of_the_system_turn():
    # A 2-token task shared by two samples saves 2 tokens; a row of their own would leave most of
    # it empty, costing a copy of the 100-token system turn: they pack with the other traces.
    rng = np.random.default_rng(2)
    system = np.arange(100, dtype=np.int32)
    seqs = []
    for t in range(10):
        turns = [system, np.full(2, 500 + t, np.int32)]
        seqs += [trace_sample(f"t{t}-{k}", turns, 2, rng.integers(0, 99, 40).astype(np.int32), rng) for k in range(2)]
    packer = Packer(200, row_len=600, share_prefix=True)
    packer.add(seqs)
    p = packer.flush()
    assert p.prefix_lens.tolist() == [100, 100]  # 20 remainders of 42 after it, 11 in 500 tokens
    assert p.written_tokens == 2 * 100 + 20 * 42


@settings(max_examples=200, deadline=None)
@given(trace_samples())
def test_longer_prefixes_never_write_more_tokens_than_the_system_turn_alone(inst):
    seqs, seq_len, row_len = inst

    def written(records) -> int:
        packer = Packer(seq_len, row_len=row_len, share_prefix=True)
        packer.add(records)
        return packer.flush().written_tokens

    system_only = [TSeq(s.trace_id, s.input_ids, s.labels, s.prefix_len, s.boundaries[:1]) for s in seqs]
    assert written(seqs) <= written(system_only)
