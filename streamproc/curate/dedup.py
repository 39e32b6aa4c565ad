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
