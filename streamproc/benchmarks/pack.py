"""Packing: speed and tightness of streamproc's best-fit decreasing against TRL's, same run.

TRL's `pack_dataset(strategy="bfd")` (what `SFTTrainer(packing=True)` runs) packs each `map`
batch of 1,000 rows with a pure-Python segment tree. Speed: both pack the same sequences
(lognormal lengths, seeded) into rows of the same size, tokens and labels included. Tightness:
the real masked sequences of the input, packed by streamproc's buffer (everything at once when
it holds fewer than 100,000), by TRL's 1,000-row batches, and not packed at all (one sequence a
row, the guide's way), at seq-len 8192 and, split, at 32768. Scaling: the whole pack job with 1
and 2 worker processes. Sharing: the same masked sequences packed as today and with each row
holding its system prompt once (`pack --share-prefix`), rows of seq-len and 4x seq-len, at
seq-len 8192, 16384 and 32768: tokens written and model FLOPs (Qwen2.5-0.5B shape, attention
counted over the positions the mask lets each token see) per trained token.
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Callable, Sequence

import numpy as np

from streamproc.prepare.mask import Masker, MaskedSeq, MaskOptions
from streamproc.prepare.pack import IGNORE, Packer, pack_order
from streamproc.prepare.job import PackOptions, pack_to_dir
from streamproc.prepare.tokenizer import cached_tokenizer
from streamproc.records import RowError
from streamproc.io.sources import Split, plan
from streamproc.benchmarks import Context, Result, best_times

SEQ_LEN = 8192
TRL_BATCH = 1000  # datasets.map's default batch size, which pack_dataset keeps


def lengths(n: int, seq_len: int = SEQ_LEN, seed: int = 0) -> np.ndarray:
    """Sequence lengths with a long right tail, clipped to [1, seq_len]."""
    rng = np.random.default_rng(seed)
    return np.clip(rng.lognormal(7, 1, n).astype(np.int64), 1, seq_len)


def sequences(lens: np.ndarray, seed: int = 0) -> list[MaskedSeq]:
    rng = np.random.default_rng(seed)
    out = []
    for k, n in enumerate(lens):
        ids = rng.integers(0, 150_000, n, dtype=np.int32)
        out.append(MaskedSeq(f"t{k}", ids, np.where(rng.random(n) < 0.3, ids, IGNORE).astype(np.int32)))
    return out


def trl_table(seqs: list[MaskedSeq]):
    import pyarrow as pa

    bounds = np.zeros(len(seqs) + 1, np.int32)
    np.cumsum([len(s.input_ids) for s in seqs], out=bounds[1:])
    offsets = pa.array(bounds)
    return pa.table({
        "input_ids": pa.ListArray.from_arrays(offsets, pa.array(np.concatenate([s.input_ids for s in seqs]))),
        "labels": pa.ListArray.from_arrays(offsets, pa.array(np.concatenate([s.labels for s in seqs]))),
    })


def streamproc_pack(seqs: list[MaskedSeq], seq_len: int = SEQ_LEN):
    packer = Packer(seq_len, buffer_size=len(seqs))
    packer.add(seqs)
    return packer.flush()


def trl_pack(table, seq_len: int = SEQ_LEN) -> list:
    """What `pack_dataset(strategy="bfd")` does, without datasets.map's cache files: its batch
    function on every 1,000 rows."""
    from trl.data_utils import _pack_bfd

    return [_pack_bfd(table.slice(i, TRL_BATCH), seq_len) for i in range(0, table.num_rows, TRL_BATCH)]


PACKER = "streamproc Packer.flush"
TRL = "TRL pack_dataset bfd (per 1,000-row batch)"
ORDER = "streamproc pack_order (row assignment only)"
ORDER_LENGTHS = 1_000_000


def speed_contenders(seqs: list[MaskedSeq]) -> dict[str, Callable[[], object]]:
    """Both packers over the same sequences, tokens and labels gathered."""
    table = trl_table(seqs)
    streamproc_pack(seqs)  # numba (from COMPILED_FROM sequences) compiles or loads its cache once, outside the timing
    return {PACKER: lambda: streamproc_pack(seqs), TRL: lambda: trl_pack(table)}


def speed(ctx: Context) -> list[Result]:
    n = 5_000 if ctx.quick else 20_000
    t = best_times(speed_contenders(sequences(lengths(n))), 1 if ctx.quick else 3)
    data = f"{n:,} lognormal sequences, seq-len {SEQ_LEN}"
    ours, trl = n / t[PACKER], n / t[TRL]
    lens = lengths(ORDER_LENGTHS)
    t_big = best_times({ORDER: lambda: pack_order(lens, SEQ_LEN)}, ctx.repeat)[ORDER]
    return [
        Result("pack", TRL, trl, "seq/s", data, note="tokens and labels gathered"),
        Result("pack", PACKER, ours, "seq/s", data, TRL, ours / trl, note="tokens and labels gathered"),
        Result("pack", ORDER, ORDER_LENGTHS / t_big, "seq/s", f"{ORDER_LENGTHS:,} lognormal lengths, seq-len {SEQ_LEN}", target=">= 1,000,000"),
    ]


def masked_lengths(ctx: Context, overflow: str, seq_len: int = SEQ_LEN) -> np.ndarray:
    masker = Masker(cached_tokenizer(PackOptions().tokenizer), MaskOptions(max_len=seq_len, overflow=overflow))
    return np.array([len(s.input_ids) for _, res in masker.mask_many(ctx.rows()) for s in res.seqs], np.int64)


def efficiency(lens: np.ndarray, seq_len: int, batch: int) -> float:
    """Tokens / (rows * seq_len) when BFD packs `batch` sequences at a time, in input order."""
    rows = sum(len(pack_order(lens[i : i + batch], seq_len)[1]) - 1 for i in range(0, len(lens), batch))
    return float(lens.sum() / (rows * seq_len))


def lower_bound_rows(lens: np.ndarray, seq_len: int) -> int:
    """Rows any packing of `lens` into rows of `seq_len` needs: Martello and Toth's L2 bound for
    bin packing. For a threshold k <= seq_len/2: sequences longer than seq_len - k sit alone; those
    longer than seq_len/2 can never share a row with each other; the sequences from k to seq_len/2
    fill what room those leave, the rest of them need whole rows. Every k gives a valid bound, and
    the largest is taken (k runs over the lengths up to seq_len/2, and 0). O(N log N)."""
    s = np.sort(np.asarray(lens, np.int64))
    c = seq_len
    prefix = np.concatenate([[0], np.cumsum(s)])
    half_count = int(np.searchsorted(s, c // 2, "right"))  # s <= c/2 (integers: c // 2 is the same cut)
    ks = np.concatenate([[0], np.unique(s[:half_count])])
    alone = len(s) - np.searchsorted(s, c - ks, "right")  # longer than c - k
    big = len(s) - half_count - alone  # in (c/2, c - k]: one each, never two together
    big_sum = prefix[len(s) - alone] - prefix[half_count]
    lo = np.searchsorted(s, ks, "left")  # the small ones: [k, c/2]
    small_sum = prefix[half_count] - prefix[lo]
    spill = np.maximum(0, -(-(small_sum - (big * c - big_sum)) // c))  # ceil, in integers
    return int((alone + big + spill).max())


def tightness(ctx: Context, overflow: str, seq_len: int = SEQ_LEN) -> list[Result]:
    """Packing efficiency of the input's masked sequences under one --overflow mode."""
    lens = masked_lengths(ctx, overflow, seq_len)
    data = f"{len(lens):,} masked sequences of {ctx.label}, seq-len {seq_len}, --overflow {overflow}"
    ours = efficiency(lens, seq_len, PackOptions().buffer_size or max(len(lens), 1))  # None: all at once
    trl = efficiency(lens, seq_len, TRL_BATCH)
    bound = lens.sum() / (lower_bound_rows(lens, seq_len) * seq_len)
    name = f"efficiency ({overflow}{'' if seq_len == SEQ_LEN else f', seq-len {seq_len}'}): "
    return [
        Result("pack", name + "one sequence per row (no packing)", 100 * lens.mean() / seq_len, "%", data),
        Result("pack", name + "TRL bfd, 1,000-row batches", 100 * trl, "%", data),
        Result("pack", name + "streamproc, global BFD", 100 * ours, "%", data, name + "TRL bfd, 1,000-row batches", ours / trl,
               ">= 97%" if seq_len == SEQ_LEN else "", f"no packing can beat {100 * bound:.1f}%"),
    ]


def scaling(ctx: Context) -> list[Result]:
    """Rows/s of the whole job with 1 and 2 workers, and the cores each run got: on a machine
    shared with other work, the second figure says whether a second core was there to use."""
    shards = scaling_splits(ctx.shards)
    cached_tokenizer(PackOptions().tokenizer)  # loaded once, before either run is timed
    best = {1: (0.0, 0.0), 2: (0.0, 0.0)}  # rows/s, cores used
    for _ in range(1 if ctx.quick else 2):  # in turn, so load from elsewhere hits both alike
        for workers in best:
            with tempfile.TemporaryDirectory() as out:
                t, c = time.perf_counter(), _cpu()
                rows = run_pack_job(shards, out, workers)
                wall = time.perf_counter() - t
            best[workers] = max(best[workers], (rows / wall, (_cpu() - c) / wall))
    data = f"{ctx.label}, {len(shards)} input shard(s)"
    (r1, c1), (r2, c2) = best[1], best[2]
    return [
        Result("pack", "pack job, 1 worker", r1, "rows/s", data, note=f"{c1:.2f} cores busy"),
        # No target: one worker already keeps part of a second core busy with the tokenizer's threads.
        Result("pack", "pack job, 2 workers", r2, "rows/s", data, "pack job, 1 worker", r2 / r1, note=f"{c2:.2f} cores busy"),
    ]


def scaling_splits(shards: Sequence[Split]) -> Sequence[Split]:
    """The input replanned in 1 MB splits, so both workers have work to the end (the default
    32 MB makes few, uneven ones); as it is where it is limited or on the Hub."""
    if all(s.limit is None and s.parts[0].kind != "hub" for s in shards):
        return plan(list(dict.fromkeys(p.path for s in shards for p in s.parts)), shard_bytes=1 << 20)
    return shards


def run_pack_job(shards: Sequence[Split], out: str | os.PathLike, workers: int) -> int:
    """The whole pack job at SEQ_LEN into OUT, from the start (--restart); rows read."""
    return pack_to_dir(shards, out, PackOptions(seq_len=SEQ_LEN), workers=workers, restart=True).tally.read


def _cpu() -> float:
    """CPU seconds of this process and its finished children (the pool's workers, once joined)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


SHARING_SEQ_LENS = (8192, 16384, 32768)
QWEN05 = dict(vocab=151936, hidden=896, intermediate=4864, layers=24, kv=128)
"""Qwen2.5-0.5B's shape (kv: key/value width, 2 heads of 64)."""


def model_flops(p, trained: int, shape: dict = QWEN05) -> float:
    """Training FLOPs (3x the forward) of packed rows: 6 per body weight per token written, 6 per
    head weight per trained token (logits only where a token trains), and 12·layers·hidden per
    (token, visible position) pair, counted under the real mask: a sequence of n sees n(n+1)/2
    pairs; a remainder of r after a prefix of P, r·P + r(r+1)/2."""
    h, kv = shape["hidden"], shape["kv"]
    per_layer = 2 * (h * h + h) + 2 * (h * kv + kv) + 3 * h * shape["intermediate"] + 2 * h - h  # q,o (+q bias), k,v, mlp, norms
    body = shape["layers"] * per_layer + h
    lens = p.seq_lens.astype(np.float64)
    prefix = np.repeat(p.prefix_lens.astype(np.float64), np.diff(p.seq_bounds))  # each sequence's row prefix
    rows_prefix = p.prefix_lens.astype(np.float64)
    pairs = (lens * prefix + lens * (lens + 1) / 2).sum() + (rows_prefix * (rows_prefix + 1) / 2).sum()
    return 6 * body * len(p.input_ids) + 6 * shape["vocab"] * h * trained + 12 * shape["layers"] * h * pairs


def sharing(ctx: Context) -> list[Result]:
    out = []
    tok = cached_tokenizer(PackOptions().tokenizer)
    for seq_len in SHARING_SEQ_LENS[:1] if ctx.quick else SHARING_SEQ_LENS:
        masker = Masker(tok, MaskOptions(max_len=seq_len, overflow="split"))
        seqs = [s for _, res in masker.mask_many(ctx.rows()) if not isinstance(res, RowError) for s in res.seqs]
        trained = sum(int(np.count_nonzero(s.labels != IGNORE)) for s in seqs)
        if not trained:
            continue
        prompts = len({s.input_ids[: s.prefix_len].tobytes() for s in seqs if s.prefix_len})
        data = f"{len(seqs):,} masked sequences of {ctx.label} ({prompts} system prompts), seq-len {seq_len}"
        for row_len in (seq_len, 4 * seq_len):
            got = {}
            for share in (False, True):
                packer = Packer(seq_len, len(seqs), row_len, share)
                packer.add(seqs)
                packed = packer.flush()
                got[share] = (len(packed.input_ids) / trained, packed.rows, model_flops(packed, trained) / trained)
            (t0, r0, f0), (t1, r1, f1) = got[False], got[True]
            name = f"row-len {row_len // 1024}k, seq-len {seq_len // 1024}k"
            goal = "<= 6.5" if (seq_len, row_len) == (8192, 32768) else ""
            out += [
                Result("pack", f"tokens per trained token, standard, {name}", t0, "x", data, note=f"{r0:,} rows"),
                Result("pack", f"tokens per trained token, shared prefix, {name}", t1, "x", data,
                       f"tokens per trained token, standard, {name}", t0 / t1, goal, f"{r1:,} rows; ratio: times fewer"),
                Result("pack", f"model GFLOP per trained token, standard, {name}", f0 / 1e9, "GFLOP", data, note="Qwen2.5-0.5B shape"),
                Result("pack", f"model GFLOP per trained token, shared prefix, {name}", f1 / 1e9, "GFLOP", data,
                       f"model GFLOP per trained token, standard, {name}", f0 / f1, note="Qwen2.5-0.5B shape; ratio: times fewer"),
            ]
    return out


def run(ctx: Context) -> list[Result]:
    # 32768: with the system prompt in every sample, longer rows are what packs agent traces tight.
    return [*speed(ctx), *tightness(ctx, "split"), *tightness(ctx, "split", 4 * SEQ_LEN), *tightness(ctx, "truncate"), *sharing(ctx), *scaling(ctx)]
