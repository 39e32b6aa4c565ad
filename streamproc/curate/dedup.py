"""What de-duplication compares: an exact digest of the conversation, or a MinHash signature of its shingles."""

from __future__ import annotations

import functools
import hashlib
import operator
import zlib

import numpy as np

from streamproc.records import Trace


NUM_PERM = 128
MINHASH_SCHEME = "affine32"
SHINGLE_WORDS = 5


def exact_key(trace: Trace) -> bytes:
    """16-byte digest of the whole conversation (roles and text) with runs of whitespace made one space."""
    h = hashlib.blake2b(digest_size=16)
    for t in trace.turns:
        h.update(t.role.encode())
        h.update(b"\x1f")
        h.update(" ".join(t.text.split()).encode())
        h.update(b"\x1e")
    return h.digest()


def near_key(trace: Trace, num_perm: int = NUM_PERM) -> np.ndarray:
    """MinHash signature (uint32[num_perm]) of the 5-word shingles of the user and assistant text.

    Each distinct word is hashed once with CRC-32 (deterministic in every process, unlike
    `hash`); a shingle's hash combines its words' hashes with numpy, so no shingle string is
    built. datasketch then permutes the distinct shingle hashes (its affine32 scheme) and keeps
    the minima: the signature is a datasketch MinHash's `hashvalues`.
    """
    from datasketch import MinHash

    words = " ".join(t.text for t in trace.turns if t.role in ("user", "assistant")).split()
    vocab = {w: zlib.crc32(w.encode()) for w in set(words)}
    h = np.fromiter((vocab[w] for w in words), dtype=np.uint64, count=len(words))
    n = SHINGLE_WORDS
    if len(h) > n:
        shingles = h[: len(h) - n + 1].copy()
        for k in range(1, n):  # polynomial combination, wrapping mod 2^64, of the n word hashes
            shingles = shingles * np.uint64(_SHINGLE_MULTIPLIER) + h[k : len(h) - n + 1 + k]
    else:
        shingles = h[:1] if len(h) else np.zeros(1, np.uint64)
    m = MinHash(num_perm=num_perm, seed=1, hashfunc=operator.index, permutations=_permutations(num_perm), scheme=MINHASH_SCHEME)
    m.update_batch(np.unique(shingles & np.uint64(0xFFFFFFFF)).tolist())
    return m.hashvalues


_SHINGLE_MULTIPLIER = 0x9E3779B1  # an odd constant (2^32 / golden ratio): spreads each word's bits


@functools.lru_cache(maxsize=4)
def _permutations(num_perm: int) -> np.ndarray:
    from datasketch import MinHash

    return MinHash(num_perm=num_perm, seed=1, scheme=MINHASH_SCHEME).permutations


def dedup_key(trace: Trace, mode: str) -> bytes | np.ndarray:
    return exact_key(trace) if mode == "exact" else near_key(trace)


class NearIndex:
    """The near-dedup index: the bands of datasketch's MinHashLSH, each band kept as one 64-bit hash.

    A row is a near-duplicate when one of its bands (`rows` consecutive signature values, `bands`
    bands, chosen by datasketch for the threshold) equals that band of a kept row: the rule of
    MinHashLSH.query, so the same rows are removed. Each band's values are hashed to 64 bits with
    BLAKE2b keyed by the band's number (two different bands of 10^6 rows' collide with chance
    about 10^-7). A (band hash -> row) pair costs 16 bytes in two sorted numpy arrays, where
    MinHashLSH holds Python dicts of bytes and sets (about 3.8 GiB per million rows). New pairs
    wait in a dict, merged into the arrays when it holds an eighth as many pairs as they do (at
    least MIN_RECENT): the dict stays small beside the arrays, and each pair is moved by a merge
    about nine times in all.
    """

    MIN_RECENT = 4096

    def __init__(self, threshold: float, num_perm: int = NUM_PERM):
        from datasketch import MinHashLSH

        lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)  # only for its choice of bands and rows
        self.bands, self.rows = lsh.b, lsh.r
        self._hashes = np.empty(0, np.uint64)  # sorted
        self._positions = np.empty(0, np.int64)  # input position of the kept row of each hash
        self._recent: dict[int, int] = {}

    def band_hashes(self, signature: np.ndarray) -> np.ndarray:
        r = self.rows
        return np.array(
            [int.from_bytes(hashlib.blake2b(signature[i * r : (i + 1) * r].tobytes(), digest_size=8, salt=i.to_bytes(16, "little")).digest(), "little") for i in range(self.bands)],
            dtype=np.uint64,
        )

    def first_similar(self, signature: np.ndarray, position: int) -> int | None:
        """The earliest kept row sharing a band with `signature`; else None, and the row at
        `position` is kept (indexed)."""
        hashes = self.band_hashes(signature)
        at = np.minimum(np.searchsorted(self._hashes, hashes), len(self._hashes) - 1)
        found = [int(p) for p in self._positions[at[self._hashes[at] == hashes]]] if len(self._hashes) else []
        found += [self._recent[h] for h in hashes.tolist() if h in self._recent]
        if found:
            return min(found)
        for h in hashes.tolist():
            self._recent[h] = position
        if len(self._recent) >= max(self.MIN_RECENT, len(self._hashes) // 8):
            self._merge()
        return None

    def _merge(self) -> None:
        hashes = np.fromiter(self._recent.keys(), np.uint64, len(self._recent))
        positions = np.fromiter(self._recent.values(), np.int64, len(self._recent))
        order = np.argsort(hashes)
        at = np.searchsorted(self._hashes, hashes[order])
        self._hashes = np.insert(self._hashes, at, hashes[order])
        self._positions = np.insert(self._positions, at, positions[order])
        self._recent.clear()

    def nbytes(self) -> int:
        """Memory held: the arrays, and the pending dict with its int objects."""
        import sys

        pending = sys.getsizeof(self._recent) + sum(sys.getsizeof(h) + sys.getsizeof(p) for h, p in self._recent.items())
        return self._hashes.nbytes + self._positions.nbytes + pending
