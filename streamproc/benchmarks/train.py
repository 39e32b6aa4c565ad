"""Training throughput: packed rows against padded batches of the same sequences, same run.

The input traces are packed (`streamproc pack`, default tokenizer, seq-len 8192). Packed: the
rows as `streamproc train` feeds them (TRL's padding-free collator, position_ids restarting per
sequence). Padded: the usual recipe, the same sequences shuffled (seeded) into batches of as
many sequences as a packed step holds, each padded to the longest, with an attention mask. Both
run the same number of full training steps (forward, backward, AdamW) on the same model, with
the same attention kernel and TRL's fused LM head (the one SFTTrainer uses). Throughput counts
real tokens only, and MFU counts only the FLOPs the real tokens need, so padding shows up as
lost throughput rather than as work done.

On a GPU: a Qwen2.5-0.5B-shaped model (random init), bf16 autocast. On CPU: the same layout at
toy size, a smoke run whose ratio says little about a GPU.
"""

from __future__ import annotations

import random
import tempfile
import time
from dataclasses import dataclass

import numpy as np

from streamproc.prepare.shards import read_shard
from streamproc.prepare.shards import shard_paths
from streamproc.train.trainer import attention_implementation
from streamproc.benchmarks import Context, Result

SEQ_LEN = 8192
TARGET = ">= 1.5 (GPU)"

PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10": 125e12}
"""Dense bf16 tensor-core peak FLOP/s by GPU name (vendor figures; H100 is the SXM part)."""

SHAPES = {
    # Qwen2.5-0.5B (the Hub config.json of Qwen/Qwen2.5-0.5B), random init.
    "qwen2.5-0.5b": dict(
        vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
        num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
        rope_theta=1000000.0, tie_word_embeddings=True,
    ),
    "toy": dict(
        vocab_size=151936, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32768, tie_word_embeddings=True,
    ),
}


@dataclass(slots=True)
class Throughput:
    mode: str  # packed | padded
    steps: int
    tokens: int  # real tokens trained on (no padding)
    computed: int  # token positions computed, padding included
    seconds: float
    flops: float  # what the real tokens need

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds


def model(shape: str, attn: str | None = None):
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config
    from trl.trainer import add_fused_lm_head

    torch.manual_seed(0)
    m = AutoModelForCausalLM.from_config(Qwen2Config(**SHAPES[shape]), attn_implementation=attn or attention_implementation())
    add_fused_lm_head(m)
    return m


def flops(m, seq_lens: list[int], trained: int) -> float:
    """Training FLOPs (forward + backward, 3x the forward) the sequences need: 6 per weight of
    the body per token, 6·hidden·vocab per trained token (the fused head projects only those),
    and attention, 12·layers·hidden per token and attended position (PaLM's count)."""
    c = m.config
    head = m.get_output_embeddings().weight.numel()
    body = sum(p.numel() for p in m.parameters()) - head - (0 if c.tie_word_embeddings else m.get_input_embeddings().weight.numel())
    lens = np.asarray(seq_lens, np.float64)
    return 6 * body * lens.sum() + 6 * head * trained + 12 * c.num_hidden_layers * c.hidden_size * (lens**2).sum()


def peak_flops() -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def batches(shards: str, rows_per_step: int, steps: int, seed: int = 0) -> tuple[list[list[dict]], list[list[dict]]]:
    """(packed, padded) batches over the same sequences: `steps` packed steps of `rows_per_step`
    rows, and the sequences they hold, shuffled, in as many padded steps."""
    want = rows_per_step * steps
    rows: list[dict] = []
    for path in shard_paths(shards, "train"):
        rows += read_shard(path).select(["input_ids", "labels", "seq_lens"]).to_pylist()
        if len(rows) >= want:
            break
    if len(rows) < want:
        raise ValueError(f"{shards}: {len(rows)} packed rows, the benchmark needs {want}")
    packed_rows = [{"input_ids": r["input_ids"], "labels": r["labels"], "seq_lengths": r["seq_lens"]} for r in rows[:want]]
    seqs = []
    for r in packed_rows:
        bounds = np.cumsum([0, *r["seq_lengths"]])
        seqs += [{"input_ids": r["input_ids"][a:b], "labels": r["labels"][a:b]} for a, b in zip(bounds[:-1], bounds[1:])]
    random.Random(seed).shuffle(seqs)
    per_step = -(-len(seqs) // steps)
    packed = [packed_rows[k : k + rows_per_step] for k in range(0, want, rows_per_step)]
    return packed, [seqs[k : k + per_step] for k in range(0, len(seqs), per_step)]


def measure(m, batches_: list[list[dict]], padding_free: bool, warmup: int = 1) -> Throughput:
    """Time full training steps over `batches_`; the first `warmup` are not timed."""
    import torch
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    device = "cuda" if torch.cuda.is_available() else "cpu"
    m.to(device).train()
    collate = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=padding_free)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-5, fused=device == "cuda")

    def step(batch: dict) -> None:
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            out = m(**batch, use_cache=False, fused_lm_head=True)
        (-out.log_probs.sum() / out.label_mask.sum().clamp(min=1)).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    collated = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in collate(b).items()} for b in batches_]
    for b in collated[:warmup]:
        step(b)
    timed = batches_[warmup:]
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for b in collated[warmup:]:
        step(b)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    lens = [len(s["input_ids"]) for b in timed for s in _sequences(b)]
    trained = sum(int(np.count_nonzero(np.asarray(s["labels"][1:]) != -100)) for b in timed for s in _sequences(b))
    computed = sum(b["input_ids"].numel() for b in collated[warmup:])
    return Throughput("packed" if padding_free else "padded", len(timed), sum(lens), computed, seconds, flops(m, lens, trained))


def _sequences(batch: list[dict]):
    for r in batch:
        start = 0
        for n in r.get("seq_lengths", [len(r["input_ids"])]):
            yield {"input_ids": r["input_ids"][start : start + n], "labels": r["labels"][start : start + n]}
            start += n


def compare(shards: str, *, shape: str, rows_per_step: int, steps: int, attn: str | None = None) -> tuple[Throughput, Throughput, object]:
    """Packed and padded throughput of one model on the same sequences (plus one warm-up step each)."""
    packed, padded = batches(shards, rows_per_step, steps + 1)
    m = model(shape, attn)
    return measure(m, packed, padding_free=True), measure(m, padded, padding_free=False), m


def head_where_trained(shards: str, shape: str, steps: int) -> tuple[float, float, float, int, int]:
    """Seconds per training step (forward + backward) on the same packed rows with the LM head at
    every position and only where a token trains (`train.packed_loss`, the trainer's path); and
    the logits a step holds: (full s, trained-only s, trained share, full logits, kept logits)."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM, Qwen2Config

    from streamproc.train.trainer import PackedCollator, packed_loss

    rows = batches(shards, 1, steps + 1)[0]
    torch.manual_seed(0)
    m = AutoModelForCausalLM.from_config(Qwen2Config(**SHAPES[shape]), attn_implementation=attention_implementation()).train()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    m.to(device)
    collated = [{k: v.to(device) for k, v in PackedCollator()(b).items()} for b in rows]

    def full(batch):
        logits = m(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        return F.cross_entropy(logits.float(), batch["shift_labels"][0], ignore_index=-100)

    def kept(batch):
        return packed_loss(m, batch)[0]

    times = {}
    for name, loss in (("full", full), ("kept", kept)):
        loss(collated[0]).backward()  # warm-up
        m.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for b in collated[1:]:
            loss(b).backward()
            m.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        times[name] = (time.perf_counter() - start) / steps
    positions = sum(b["input_ids"].numel() for b in collated[1:])
    trained = sum(int((b["shift_labels"] != -100).sum()) for b in collated[1:])
    return times["full"], times["kept"], trained / positions, positions // steps, trained // steps


def run(ctx: Context) -> list[Result]:
    import torch

    from streamproc.prepare.job import PackOptions, pack_to_dir

    gpu = torch.cuda.is_available()
    # A CPU run is a smoke test of the code path (8192-token attention on CPU takes seconds a step).
    shape, rows_per_step, steps = ("qwen2.5-0.5b", 2, 3 if ctx.quick else 10) if gpu else ("toy", 1, 2)
    with tempfile.TemporaryDirectory() as tmp:
        pack_to_dir(ctx.shards, tmp, PackOptions(seq_len=SEQ_LEN), workers=ctx.workers)
        p, q, m = compare(tmp, shape=shape, rows_per_step=rows_per_step, steps=steps)
        t_full, t_kept, share, positions, trained = head_where_trained(tmp, shape, 2)
    peak = peak_flops()
    setup = f"{shape} shape, {m.config._attn_implementation}, seq-len {SEQ_LEN}, {rows_per_step} row(s)/step, {p.steps} steps"
    data = f"{ctx.label}, {'GPU ' + torch.cuda.get_device_name() if gpu else 'CPU'}"
    results = [
        Result("train", "packed rows", p.tokens_per_second, "tokens/s", data, "padded batches", p.tokens_per_second / q.tokens_per_second, TARGET, setup),
        Result("train", "padded batches", q.tokens_per_second, "tokens/s", data, note=f"{1 - q.tokens / q.computed:.0%} of positions are padding"),
    ]
    vocab = SHAPES[shape]["vocab_size"]
    results += [
        Result("train", "step, LM head at every position", 1 / t_full, "steps/s", data, note=f"{positions * vocab * 4 / 2**30:.1f} GiB of fp32 logits"),
        Result("train", "step, LM head only where a token trains", 1 / t_kept, "steps/s", data, "step, LM head at every position", t_full / t_kept,
               note=f"{share:.0%} of positions train: {trained * vocab * 4 / 2**30:.2f} GiB of fp32 logits; same loss (tests/test_shared_prefix.py)"),
    ]
    if peak:
        for t in (p, q):
            results.append(Result("train", f"MFU {t.mode}", 100 * t.flops / t.seconds / peak, "%", data, note=f"peak {peak / 1e12:.0f} TFLOP/s bf16"))
    return results
