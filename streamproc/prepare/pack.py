"""Best-fit-decreasing packing of token sequences into rows of at most `seq_len` tokens.

Pure and deterministic. `pack_order` is the core: a counting sort, O(N + seq_len), then
O(N log seq_len) for placement, with a segment tree over free space (leaf s is "present" while some open row has
exactly s tokens free) so the tightest row that still fits is found in one descent. Rows with
the same free space wait in FIFO order, which makes the result independent of anything but the
lengths. `Packer` buffers masked sequences and packs a whole buffer at once: the larger the
buffer, the closer streaming gets to packing everything globally.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field
from typing import Iterable, Protocol, Sequence

import numpy as np

IGNORE = -100
"""Label of a position that carries no loss."""
COMPILED_FROM = 1_000_000
"""Sequences from which the kernels below run compiled by numba. Below, they run as Python:
importing numba and loading its cached machine code costs about 0.4 s of CPU and 125 MB of
resident memory, once. Python places 175,000 sequences (64,000 traces) in 1.4 s and a million in
7.9 s, numba a million in 0.6 s: worth its memory only where the plan is that large, and a pack
that large spends over an hour tokenizing. Same code, same result."""


def _longest_first(lengths: np.ndarray, capacity: int) -> np.ndarray:
    """Counting sort of the indices by length, longest first, ties in input order: O(N + capacity)."""
    start = np.zeros(capacity + 2, np.int64)
    for n in lengths:
        start[capacity - n + 1] += 1
    for k in range(1, capacity + 2):
        start[k] += start[k - 1]
    order = np.empty(len(lengths), np.int64)
    for i in range(len(lengths)):
        k = capacity - lengths[i]
        order[start[k]] = i
        start[k] += 1
    return order


def _place(lengths: np.ndarray, order: np.ndarray, capacity: int) -> tuple[np.ndarray, int]:
    """Row number of every sequence, placing them in `order` (longest first); and the row count."""
    n = len(order)
    size = 1
    while size < capacity + 1:
        size *= 2
    tree = np.full(2 * size, -1, np.int64)  # max over the subtree of present free-space values
    head = np.full(capacity + 1, -1, np.int64)  # FIFO of rows per free space: first, last, next
    tail = np.full(capacity + 1, -1, np.int64)
    nxt = np.full(max(n, 1), -1, np.int64)
    row_of = np.empty(n, np.int64)
    rows = 0
    for k in range(n):
        i = order[k]
        need = lengths[i]
        if tree[1] >= need:
            node = 1  # leftmost present leaf with value >= need: the smallest free space that fits
            while node < size:
                node = 2 * node if tree[2 * node] >= need else 2 * node + 1
            space = node - size
            r = head[space]
            head[space] = nxt[r]
            if head[space] == -1:
                tail[space] = -1
                node = space + size  # the leaf leaves the tree: -1 up to the root
                tree[node] = -1
                node //= 2
                while node >= 1:
                    tree[node] = max(tree[2 * node], tree[2 * node + 1])
                    node //= 2
        else:
            r = rows
            rows += 1
            space = capacity
        row_of[i] = r
        space -= need
        if space > 0:
            nxt[r] = -1
            if tail[space] == -1:
                head[space] = r
                node = space + size  # the leaf joins the tree with its value
                tree[node] = space
                node //= 2
                while node >= 1:
                    tree[node] = max(tree[2 * node], tree[2 * node + 1])
                    node //= 2
            else:
                nxt[tail[space]] = r
            tail[space] = r
    return row_of, rows


def _by_row(order: np.ndarray, row_of: np.ndarray, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices grouped by row, each row in placement order, and the row bounds (counting sort)."""
    bounds = np.zeros(rows + 1, np.int64)
    for r in row_of:
        bounds[r + 1] += 1
    for r in range(rows):
        bounds[r + 1] += bounds[r]
    pos = bounds[:-1].copy()
    out = np.empty(len(order), np.int64)
    for i in order:
        out[pos[row_of[i]]] = i
        pos[row_of[i]] += 1
    return out, bounds


def pack_order(lengths: np.ndarray, capacity: int) -> tuple[np.ndarray, np.ndarray]:
    """Best-fit decreasing, flat: (order, bounds) where row r holds sequences
    order[bounds[r]:bounds[r + 1]], longest first. Raises ValueError for a length outside
    [1, capacity]. Ties (equal lengths) go in input order."""
    lengths = np.ascontiguousarray(lengths, dtype=np.int64)
    if capacity < 1:
        raise ValueError(f"capacity must be at least 1, not {capacity}")
    if len(lengths) and (lengths.min() < 1 or lengths.max() > capacity):
        bad = int(np.flatnonzero((lengths < 1) | (lengths > capacity))[0])
        raise ValueError(f"sequence {bad} has length {lengths[bad]}, outside [1, {capacity}]")
    longest_first, place, by_row = _kernels(len(lengths) >= COMPILED_FROM)
    order = longest_first(lengths, capacity)
    row_of, rows = place(lengths, order, capacity)
    return by_row(order, row_of, rows)


@functools.cache
def _kernels(compiled: bool):
    if not compiled:
        return _longest_first, _place, _by_row
    return tuple(_njit(f) for f in (_longest_first, _place, _by_row))


def _njit(fn):
    """numba.njit with its on-disk cache where numba finds a writable place for one
    (NUMBA_CACHE_DIR, the package's __pycache__, the user's cache directory), else uncached:
    a read-only install under a read-only or missing HOME still runs, compiling at first use."""
    import numba

    try:
        return numba.njit(cache=True)(fn)
    except RuntimeError:  # "cannot cache function ...: no locator available"
        return numba.njit(fn)


def pack_lengths(lengths, capacity: int) -> list[list[int]]:
    """Best-fit decreasing: the rows, each a list of indices into `lengths`, none over capacity."""
    order, bounds = pack_order(np.asarray(lengths), capacity)
    return [order[a:b].tolist() for a, b in zip(bounds[:-1], bounds[1:])]


# ----------------------------------------------------------------------------- streaming


def check_row_len(row_len: int | None, seq_len: int, names: tuple[str, str] = ("row_len", "seq_len")) -> int:
    """The tokens of a packed row (None: seq_len); ValueError below seq_len, since a row must hold
    any sequence. `names`: what the message calls the two (the CLI's flags)."""
    if row_len is None:
        return seq_len
    if row_len < seq_len:
        raise ValueError(f"{names[0]} {row_len} is below {names[1]} {seq_len}: a row must hold any sequence")
    return row_len


class Masked(Protocol):
    """What the packer needs of a masked sequence (streamproc.prepare.mask.MaskedSeq)."""

    trace_id: str
    input_ids: np.ndarray
    labels: np.ndarray
    prefix_len: int
    boundaries: np.ndarray  # optional: shareable prefix ends (prefix_len alone where absent)


def prefix_keys(ids: np.ndarray, boundaries: Sequence[int]) -> list[bytes]:
    """A digest of ids[:b] for each boundary b (increasing): equal digests, equal prefixes."""
    h = hashlib.blake2b(digest_size=16)
    out, pos = [], 0
    for b in boundaries:
        h.update(np.ascontiguousarray(ids[pos:b], np.int32).tobytes())
        out.append(h.copy().digest())
        pos = int(b)
    return out


def shareable(s: Masked) -> list[int]:
    """The token offsets at which a row may end a prefix that `s` shares: its `boundaries`, or its
    `prefix_len` (the system turn) for a record that has none."""
    b = getattr(s, "boundaries", None)
    if b is not None:
        return [int(x) for x in b]
    p = int(getattr(s, "prefix_len", 0))
    return [p] if p else []


@dataclass(slots=True)
class Packed:
    """Packed rows, flat: row r holds tokens[row_bounds[r]:row_bounds[r+1]]: first a shared prefix
    of prefix_lens[r] tokens (0: none), then the sequences seq_lens[seq_bounds[r]:seq_bounds[r+1]]
    (from trace_ids at the same positions). In a row with a prefix each listed sequence is a
    remainder: it follows the prefix as if alone, never attending to another remainder."""

    input_ids: np.ndarray  # int32
    labels: np.ndarray  # int32, IGNORE or the input id at the same position
    row_bounds: np.ndarray  # int64, len rows + 1
    seq_lens: np.ndarray  # int32
    seq_bounds: np.ndarray  # int64, len rows + 1
    trace_ids: list[str]
    prefix_lens: np.ndarray  # int32, len rows

    @property
    def rows(self) -> int:
        return len(self.row_bounds) - 1

    def slice(self, start: int, stop: int) -> "Packed":
        """Rows [start, stop)."""
        t0, t1 = int(self.row_bounds[start]), int(self.row_bounds[stop])
        s0, s1 = int(self.seq_bounds[start]), int(self.seq_bounds[stop])
        return Packed(
            self.input_ids[t0:t1],
            self.labels[t0:t1],
            self.row_bounds[start : stop + 1] - t0,
            self.seq_lens[s0:s1],
            self.seq_bounds[start : stop + 1] - s0,
            self.trace_ids[s0:s1],
            self.prefix_lens[start:stop],
        )

    @property
    def written_tokens(self) -> int:
        return len(self.input_ids)

    def sequence_tokens(self) -> int:
        """Tokens of the sequences as they would be written without sharing (prefix repeated)."""
        per_row = np.diff(self.seq_bounds)
        return int(self.seq_lens.sum() + (self.prefix_lens.astype(np.int64) * per_row).sum())


@dataclass(slots=True)
class RowPlan:
    prefix_of: int  # the sequence whose first prefix_len ids are this row's prefix; -1: none
    prefix_len: int
    seqs: list[int]


@dataclass(slots=True)
class Packer:
    """Buffers masked sequences; `flush` packs everything buffered into rows of <= row_len tokens
    (default seq_len), each sequence <= seq_len.

    With `share_prefix`, sequences that begin with the same ids up to one of their boundaries
    (whole untrained turns: the system turn, the task, earlier turns) are packed into rows that hold
    that prefix once, followed by the remainders (`plan_rows`). Labels are kept as a boolean
    "trained" mask while buffered (5 bytes a token instead of 8), since a label is always either
    IGNORE or the input id.
    """

    seq_len: int
    buffer_size: int = 100_000
    row_len: int | None = None
    share_prefix: bool = False
    _ids: list[np.ndarray] = field(default_factory=list)
    _trained: list[np.ndarray] = field(default_factory=list)
    _trace_ids: list[str] = field(default_factory=list)
    _boundaries: list[list[int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.row_len = check_row_len(self.row_len, self.seq_len)

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def full(self) -> bool:
        return len(self._ids) >= self.buffer_size

    def add(self, seqs: Iterable[Masked]) -> None:
        for s in seqs:
            if len(s.input_ids) > self.seq_len:
                raise ValueError(f"trace {s.trace_id}: sequence of {len(s.input_ids)} tokens is longer than seq_len {self.seq_len}")
            self._ids.append(np.asarray(s.input_ids, np.int32))
            self._trained.append(np.asarray(s.labels) != IGNORE)
            self._trace_ids.append(s.trace_id)
            self._boundaries.append(shareable(s) if self.share_prefix else [])

    def _rows(self) -> list[RowPlan]:
        keys = [prefix_keys(ids, b) for ids, b in zip(self._ids, self._boundaries)]
        return plan_rows([len(x) for x in self._ids], self._boundaries, keys, self.row_len)

    def flush(self) -> Packed:
        packed = assemble(self._rows(), self._ids, self._trained, self._trace_ids)
        self._ids, self._trained, self._trace_ids, self._boundaries = [], [], [], []
        return packed


def plan_rows(lengths: Sequence[int], boundaries: Sequence[Sequence[int]], keys: Sequence[Sequence[bytes]], row_len: int) -> list[RowPlan]:
    """Rows of sequence indices (BFD): the plain sequences' rows, then the shared rows. Sequence i
    may share its first boundaries[i][d] tokens (increasing in d) with every sequence whose
    keys[.][d] equals keys[i][d] (empty: it shares nothing).

    The groups form a tree: sequences with the same key at depth d, split by their key at d + 1.
    Each group packs its deeper subgroups first, by BFD on the remainders after the subgroup's
    prefix; a deeper row is kept where the tokens it saves (its remainders share a longer prefix)
    outweigh the prefix copies its free space costs (`_worth_it`), since a row of one trace's
    samples may hold far fewer sequences than a row of the group. What a subgroup leaves (a group
    of one, a row with a single remainder, a row not worth it) is packed with the group's shorter
    prefix. A group whose deeper rows, all told, write more tokens than packing all its members
    with its own prefix is packed that way instead, so no group writes more than sharing only the
    system turn did. What is still alone at the top is plain. Groups go in order of first
    appearance and members in input order: the rows depend on the data alone."""

    def pack_at(members: list[int], p: int, outer: int) -> tuple[list[RowPlan], list[int]]:
        """BFD of `members` after their shared `p` tokens: the rows kept, the members left alone."""
        members = sorted(members)  # input order, so ties in BFD keep it
        rest = np.fromiter((lengths[i] - p for i in members), np.int64, len(members))
        order, bounds = pack_order(rest, row_len - p)
        rows, alone = [], []
        for a, b in zip(bounds[:-1], bounds[1:]):
            seqs = [members[k] for k in order[a:b]]
            if len(seqs) > 1 and _worth_it(p + int(rest[order[a:b]].sum()), len(seqs), p, outer, row_len):
                rows.append(RowPlan(seqs[0], p, seqs))
            else:
                alone.extend(seqs)  # a prefix with one remainder is just that sequence
        return rows, alone

    def written(plan: tuple[list[RowPlan], list[int]]) -> int:
        rows, alone = plan
        return sum(lengths[i] - r.prefix_len for r in rows for i in r.seqs) + sum(r.prefix_len for r in rows) + sum(lengths[i] for i in alone)

    def pack_group(members: list[int], depth: int, outer: int) -> tuple[list[RowPlan], list[int]]:
        """Shared rows of `members` (each has a key at `depth`; `outer`: the prefix they share
        otherwise, 0 for none), and the members left to the outer level."""
        p = int(boundaries[members[0]][depth])
        loose, deeper = _split(members, keys, depth + 1)
        rows: list[RowPlan] = []
        for sub in deeper:
            sub_rows, sub_alone = pack_group(sub, depth + 1, p) if len(sub) > 1 else ([], sub)
            rows += sub_rows
            loose += sub_alone
        here = pack_at(loose, p, outer)
        if not rows:
            return here
        flat = pack_at(members, p, outer)
        deep = (rows + here[0], here[1])
        return deep if written(deep) < written(flat) else flat

    shared: list[RowPlan] = []
    plain, groups = _split(range(len(lengths)), keys, 0)
    for members in groups:
        rows, alone = pack_group(members, 0, 0) if len(members) > 1 else ([], members)
        shared += rows
        plain += alone
    plain.sort()
    order, bounds = pack_order(np.fromiter((lengths[i] for i in plain), np.int64, len(plain)), row_len)
    return [RowPlan(-1, 0, [plain[k] for k in order[a:b]]) for a, b in zip(bounds[:-1], bounds[1:])] + shared


def _worth_it(tokens: int, seqs: int, prefix: int, outer: int, row_len: int) -> bool:
    """Whether a row of `seqs` sequences sharing `prefix` tokens (`tokens` in all) writes fewer
    tokens than its sequences would sharing only `outer` in the outer level's rows: it saves
    (seqs - 1) * (prefix - outer), and its free space, filled there, would have held remainders
    after `outer`: about free / (row_len - outer) of a row, each row an `outer` copy."""
    if outer == 0:
        return True
    return (seqs - 1) * (prefix - outer) * (row_len - outer) > (row_len - tokens) * outer


def _split(members: Iterable[int], keys: Sequence[Sequence[bytes]], depth: int) -> tuple[list[int], list[list[int]]]:
    """The members without a key at `depth`, and the others grouped by it (first appearance)."""
    none: list[int] = []
    groups: dict[bytes, list[int]] = {}
    for i in members:
        k = keys[i]
        if len(k) > depth:
            groups.setdefault(k[depth], []).append(i)
        else:
            none.append(i)
    return none, list(groups.values())


def assemble(rows: Sequence[RowPlan], ids: Sequence[np.ndarray], trained: Sequence[np.ndarray], trace_ids: Sequence[str]) -> Packed:
    """The Packed rows of `rows`, sequence i being ids[i] (int32), trained[i] (bool: label not
    IGNORE) and trace_ids[i]: lists in memory, or views of spill files (prepare.spill)."""
    ids_parts: list[np.ndarray] = []
    trained_parts: list[np.ndarray] = []
    seq_lens: list[int] = []
    row_trace_ids: list[str] = []
    row_bounds = np.zeros(len(rows) + 1, np.int64)
    seq_bounds = np.zeros(len(rows) + 1, np.int64)
    for r, row in enumerate(rows):
        p = row.prefix_len
        tokens = p
        if p:
            ids_parts.append(ids[row.prefix_of][:p])
            trained_parts.append(np.zeros(p, np.bool_))
        for i in row.seqs:
            seq = ids[i]
            ids_parts.append(seq[p:])
            trained_parts.append(trained[i][p:])
            seq_lens.append(len(seq) - p)
            row_trace_ids.append(trace_ids[i])
            tokens += len(seq) - p
        row_bounds[r + 1] = row_bounds[r] + tokens
        seq_bounds[r + 1] = seq_bounds[r] + len(row.seqs)
    all_ids = np.concatenate(ids_parts).astype(np.int32, copy=False) if ids_parts else np.zeros(0, np.int32)
    all_trained = np.concatenate(trained_parts) if trained_parts else np.zeros(0, np.bool_)
    return Packed(
        all_ids,
        np.where(all_trained, all_ids, np.int32(IGNORE)).astype(np.int32, copy=False),
        row_bounds,
        np.asarray(seq_lens, np.int32),
        seq_bounds,
        row_trace_ids,
        np.fromiter((row.prefix_len for row in rows), np.int32, len(rows)),
    )
