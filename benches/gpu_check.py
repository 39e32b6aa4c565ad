"""The GPU check (issue 16): isolation of packed sequences, training throughput, and `streamproc
train` end to end, in one run that fits the device machine's lease. `benches/gpu_check.sh` drives
it; docs/gpu.md says how to run it there and what it reports.

On a GPU: a Qwen2.5-0.5B-shaped model (random init), bf16 autocast as the trainer uses, the
built-in sample packed by `streamproc pack` at seq-len 8192. `--dry-run`: the same steps on CPU
at toy size (64-wide model, fp32, a few rows, a few steps), so the script is tested where no GPU
is.

1. Isolation: for a packed row, each sequence's logits equal those of the sequence alone, for
   every attention path the trainer can take here; the same row through a path that ignores the
   boundaries must differ (the control), or the check proves nothing.
2. Throughput on the same sequences and steps: padded batches, packed rows (TRL's fused head:
   logits only where trained), packed rows with logits everywhere, shared-prefix rows where
   `pack --share-prefix` exists, rows whose shared prefix runs past the system turn (built here
   from the packed sequences), and LoRA r=16 (QLoRA where bitsandbytes imports) beside full
   fine-tuning on the same packed rows, with peak memory.
3. `streamproc train` for a few dozen steps: loss falls, metrics.json, tool selection evaluated
   before and after; then `streamproc train --lora 16 --merge` (and `--load-in-4bit` where
   bitsandbytes imports) for a few steps: an adapter directory and a merged model.

Results: OUT/gpu_check.json and OUT/gpu_check.md. The exit status is 1 when a check fails.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from streamproc.benchmarks import train as bench
from streamproc.io.files import write_json
from streamproc.prepare.mask import DEFAULT_TOKENIZER
from streamproc.prepare.pack import IGNORE
from streamproc.prepare.shards import read_shard, shard_paths

TARGET_PACKED = 1.5  # packed rows / padded batches, tokens/s
TARGET_SHARED = 2.0  # shared-prefix rows / standard packed rows, trained tokens/s, at seq-len 8192
LORA_RANK = 16


@dataclass(slots=True)
class Setup:
    """How big each step runs: the GPU run, or its toy-size dry run."""

    device: str
    shape: str  # a key of streamproc.benchmarks.train.SHAPES
    seq_len: int
    rows_per_step: int  # packed rows per step in the padded/packed comparison
    steps: int  # timed steps, after `warmup`
    warmup: int
    limit: int | None  # traces of the sample packed (None: all)
    train_steps: int
    learning_rate: float  # for `streamproc train` from random init: high, so the loss falls within train_steps
    tool_eval_max: int
    tool_eval_new_tokens: int
    tolerance: float  # ||packed - alone|| / ||alone|| per sequence, on the logits
    isolation_rows: int  # packed rows whose every sequence is checked
    logit_stride: int  # logits compared at every n-th position (the CPU cannot afford the 151,936-wide head everywhere)
    pack_args: tuple[str, ...] = ()
    shared_row_len: int = 4  # --share-prefix rows up to this many times seq-len (issue 14's figures use 4)
    adapter_steps: int = 10  # `streamproc train --lora` end to end: it runs, writes an adapter and a merged model

    @property
    def bf16(self) -> bool:
        return self.device == "cuda"


GPU = Setup("cuda", "qwen2.5-0.5b", 8192, 2, 10, 1, None, 30, 5e-4, 8, 64, 2e-2, 2, 1)
DRY = Setup("cpu", "toy", 4096, 1, 1, 0, 14, 3, 5e-3, 1, 2, 1e-4, 2, 16, ("--overflow", "truncate"), 2, 2)
# The dry run truncates each trace to one window: split, its one eval trace is 8 rows, and each row
# costs the CPU most of a minute through TRL's fused head at the 151,936-wide vocabulary.
# Why 2e-2 in bf16: bf16 operands alone give 1e-3 to 1e-2 relative error on one matrix product;
# packed and alone take different kernels (masked vs causal) through 24 layers. The control's
# error is reported beside it and must be far above it.


@dataclass(slots=True)
class Isolation:
    path: str  # the attention path, as the trainer would take it
    attn: str  # transformers' attn_implementation
    control: bool  # True: boundaries ignored on purpose; must exceed the tolerance
    sequences: int
    tokens: int
    worst: float  # the largest per-sequence relative error on the logits
    first: float  # the same for the row's first sequence (nothing precedes it: equal even in the control)
    tolerance: float

    @property
    def ok(self) -> bool:
        within = math.isfinite(self.worst) and self.worst <= self.tolerance
        return not within if self.control else within


@dataclass(slots=True)
class Measured:
    mode: str
    steps: int
    tokens: int  # real tokens (no padding)
    trained: int  # tokens whose next-token label is trained
    computed: int  # positions computed, padding included
    seconds: float
    flops: float
    peak_memory_gib: float | None
    mfu: float | None

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds

    @property
    def trained_per_second(self) -> float:
        return self.trained / self.seconds


@dataclass(slots=True)
class Report:
    setup: dict
    environment: dict
    skipped: list[str] = field(default_factory=list)  # attention paths or modes not run, with why
    isolation: list[dict] = field(default_factory=list)
    throughput: list[dict] = field(default_factory=list)
    ratios: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    train_adapters: dict = field(default_factory=dict)  # "lora", "qlora": `streamproc train --lora` end to end
    failures: list[str] = field(default_factory=list)


def say(text: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {text}", flush=True)


# ----------------------------------------------------------------------------- environment


def environment() -> dict:
    import torch
    import transformers

    versions = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__}
    for name in ("trl", "datasets", "accelerate", "flash_attn", "pyarrow", "orjson"):
        spec = importlib.util.find_spec(name)
        versions[name] = _version(name) if spec else None
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {"gpu": gpu, "cuda": torch.version.cuda, "versions": versions}


def _version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name.replace("_", "-"))
    except PackageNotFoundError:
        return "?"


def pack_options() -> str:
    """`streamproc pack --help`: whether this checkout has --share-prefix (issue 14) is read off it."""
    return subprocess.run([sys.executable, "-m", "streamproc", "pack", "--help"], capture_output=True, text=True).stdout


def flash_attention_available() -> bool:
    import torch

    return torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None


def qlora_unavailable() -> str | None:
    """Why QLoRA cannot run here, or None: it needs a CUDA GPU and an importable bitsandbytes."""
    import torch

    if not torch.cuda.is_available():
        return "QLoRA: no CUDA GPU"
    try:
        import bitsandbytes  # noqa: F401
    except Exception as e:  # an install without its CUDA library fails with other errors than ImportError
        return f"QLoRA: bitsandbytes does not import here ({type(e).__name__}: {e})"
    return None


# ----------------------------------------------------------------------------- data and model


def pack(out: Path, setup: Setup, *extra: str) -> Path:
    """The built-in sample, packed by the public CLI, with an eval split for `streamproc train`."""
    cmd = [sys.executable, "-m", "streamproc", "pack", "-o", str(out), "--seq-len", str(setup.seq_len), "--eval-fraction", "0.1", *setup.pack_args, *extra]
    if setup.limit:
        cmd += ["--limit", str(setup.limit)]
    say(" ".join(cmd[1:]))
    subprocess.run(cmd, check=True)
    return out


def model_dir(out: Path, shape: str) -> Path:
    """A config of `shape` beside the shipped tokenizer (the one `pack` used): what `streamproc
    train --init-random` builds a model from."""
    from transformers import Qwen2Config

    out.mkdir(parents=True, exist_ok=True)
    Qwen2Config(**bench.SHAPES[shape]).save_pretrained(out)
    for f in DEFAULT_TOKENIZER.iterdir():
        shutil.copy(f, out / f.name)
    return out


def train_rows(shards: Path, n: int | None = None) -> list[dict]:
    rows: list[dict] = []
    for path in shard_paths(shards, "train"):
        rows += read_shard(path).to_pylist()
        if n is not None and len(rows) >= n:
            break
    return rows[:n] if n is not None else rows


def prefix_len(row: dict) -> int:
    return int(row.get("prefix_len") or 0)


def seq_lens(row: dict) -> list[int]:
    """A row's sequence lengths, as the shards name them or as TRL's collator does."""
    return row["seq_lens"] if "seq_lens" in row else row["seq_lengths"]


# ----------------------------------------------------------------------------- attention masks


def segments(rows: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows flattened into one, as (segment id, the segment id it may also attend to or -1,
    position id) per token. A row's shared prefix (`prefix_len` tokens) is one segment; each
    sequence after it another, which sees the prefix, with positions continuing from it. A row
    without a prefix is today's padding-free row."""
    seg, sees, pos = [], [], []
    k = 0
    for row in rows:
        p = prefix_len(row)
        prefix = -1
        if p:
            seg.append(np.full(p, k))
            sees.append(np.full(p, -1))
            pos.append(np.arange(p))
            prefix, k = k, k + 1
        for n in seq_lens(row):
            seg.append(np.full(n, k))
            sees.append(np.full(n, prefix))
            pos.append(np.arange(p, p + n))
            k += 1
    return np.concatenate(seg), np.concatenate(sees), np.concatenate(pos)


def causal_mask(n: int, device: str, attn: str):
    """Plain causal attention over a whole flat row of `n` tokens, boundaries ignored (the control):
    a BlockMask for flex_attention, else a 4D boolean mask."""
    import torch

    if attn == "flex_attention":
        from torch.nn.attention.flex_attention import create_block_mask

        return create_block_mask(lambda b, h, q, kv: kv <= q, 1, None, n, n, device=device)
    return torch.ones(n, n, dtype=torch.bool, device=device).tril()[None, None]


def trainer_batch(rows: list[dict], device: str) -> dict:
    """`rows` as `streamproc train` feeds them (its PackedCollator), on `device`."""
    from streamproc.train.trainer import SEQ_LENGTHS, PackedCollator

    batch = PackedCollator()([{**r, SEQ_LENGTHS: seq_lens(r)} for r in rows])
    return {k: v.to(device) for k, v in batch.items()}


# ----------------------------------------------------------------------------- 1. isolation


def _hidden(m, ids, position_ids, attention_mask, bf16: bool):
    import torch

    device = ids.device.type
    with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
        return m.model(input_ids=ids, position_ids=position_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state[0]


def _relative_error(m, got, want, bf16: bool, chunk: int = 1024) -> float:
    """||logits(got) - logits(want)|| / ||logits(want)|| over the hidden states' positions, the
    head applied a chunk at a time (a full 151,936-wide logit matrix of 8,192 positions is 5 GB
    in fp32)."""
    import torch

    head = m.get_output_embeddings()
    diff = ref = 0.0
    with torch.no_grad(), torch.autocast(got.device.type, dtype=torch.bfloat16, enabled=bf16):
        for a in range(0, len(want), chunk):
            g, w = head(got[a : a + chunk]).float(), head(want[a : a + chunk]).float()
            diff += float((g - w).square().sum())
            ref += float(w.square().sum())
    return math.sqrt(diff / ref) if ref > 0 else math.inf


def isolation(m, rows: list[dict], attn: str, path: str, setup: Setup, *, control: bool) -> Isolation:
    """Each sequence of `rows` (one flat batch, as the trainer feeds them) through `attn` against
    itself alone (its shared prefix included) through SDPA. `attn`: sdpa / flash_attention_2 take
    the padding-free position ids (no mask), flex_attention a BlockMask; `control` hides the
    boundaries from either."""
    import torch

    device = setup.device
    m.set_attn_implementation(attn)
    seg, sees, pos = segments(rows)
    ids = torch.tensor([t for r in rows for t in r["input_ids"]], device=device)[None]
    position_ids = torch.as_tensor(pos, device=device)[None]
    if any(prefix_len(r) for r in rows):
        from streamproc.train.trainer import prefix_attention_mask  # the trainer's own mask

        batch = trainer_batch(rows, device)
        assert batch["position_ids"][0].tolist() == pos.tolist()
        mask = causal_mask(len(pos), device, attn) if control else prefix_attention_mask(batch["segments"][0], batch["bases"][0], attn)
    else:
        mask = torch.ones_like(ids) if control else None  # a 2D mask turns off the boundaries read off position_ids
    packed = _hidden(m, ids, position_ids, mask, setup.bf16)
    m.set_attn_implementation("sdpa")  # the reference: each sequence alone, plain causal (and no compile per length)
    errors = []
    for k in np.unique(seg):
        where = np.flatnonzero(seg == k)
        alone_ix = np.concatenate([np.flatnonzero(seg == sees[where[0]]), where]) if sees[where[0]] >= 0 else where
        alone_ids = ids[:, torch.as_tensor(alone_ix, device=device)]
        alone = _hidden(m, alone_ids, torch.as_tensor(pos[alone_ix], device=device)[None], None, setup.bf16)
        keep = slice(None, None, setup.logit_stride)
        errors.append(_relative_error(m, packed[torch.as_tensor(where, device=device)][keep], alone[-len(where) :][keep], setup.bf16))
    worst = max(errors) if all(math.isfinite(e) for e in errors) else math.inf
    return Isolation(path, attn, control, len(errors), ids.shape[1], worst, errors[0], setup.tolerance)


def isolation_checks(m, standard: list[dict], shared: list[dict] | None, longer: list[dict], setup: Setup, report: Report) -> None:
    paths = [("sdpa", "SDPA, padding-free position ids", standard)]
    if flash_attention_available():
        paths.append(("flash_attention_2", "flash-attention varlen, padding-free position ids", standard))
    else:
        report.skipped.append("flash_attention_2: flash_attn is not importable here" + ("" if setup.device == "cuda" else " (no GPU)"))
    if shared is not None:
        paths.append((*prefix_attention(setup.device), shared))
    if longer:
        attn, path = prefix_attention(setup.device)
        paths.append((attn, f"{path}, prefix past the system turn", longer))
    else:
        report.skipped.append("prefix past the system turn: no packed sequence has an assistant turn after its first user turn")
    for attn, path, rows in paths:
        for control in (False, True):
            r = isolation(m, rows, attn, path, setup, control=control)
            report.isolation.append({**asdict(r), "ok": r.ok})
            say(f"isolation {path}{' [control: boundaries ignored]' if control else ''}: {r.sequences} sequences, worst {r.worst:.2e} (tolerance {r.tolerance:.0e}) -> {'ok' if r.ok else 'FAIL'}")
            if not r.ok:
                report.failures.append(f"isolation {attn}{' control' if control else ''}: worst {r.worst:.2e}, tolerance {r.tolerance:.0e}")


def rows_for_isolation(rows: list[dict], n: int) -> list[dict]:
    """The `n` rows with the most sequences: the most boundaries to get wrong."""
    return sorted(rows, key=lambda r: -len(seq_lens(r)))[:n]


def turn_start_id() -> int:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(DEFAULT_TOKENIZER / "tokenizer.json")).token_to_id("<|im_start|>")


def longer_prefix_rows(rows: list[dict], turn_start: int) -> list[dict]:
    """Rows whose shared prefix runs past the system turn, built from packed sequences as
    per-action samples share one: for each whole sequence with a trained turn after its first user
    turn, the prefix is everything before an assistant turn (the second one where there are three
    or more, else the first), and each remainder is one sample, from there to the end of one later
    assistant turn, only that turn trained. Each prefix + remainder is a prefix of the sequence."""
    out = []
    for row in rows:
        if prefix_len(row):
            continue
        bounds = np.cumsum([0, *seq_lens(row)])
        for a, b in zip(bounds[:-1], bounds[1:]):
            ids, labels = np.asarray(row["input_ids"][a:b]), np.asarray(row["labels"][a:b])
            trained = labels != IGNORE
            edges = np.flatnonzero(np.diff(np.concatenate(([0], trained.astype(np.int8), [0]))))
            runs = list(zip(edges[::2].tolist(), edges[1::2].tolist()))
            starts = np.flatnonzero(ids == turn_start)
            if len(runs) < 1 or len(starts) < 3:  # system, user, assistant at least
                continue
            first = 1 if len(runs) > 2 else 0
            cut = int(starts[starts < runs[first][0]].max())  # the `<|im_start|>` of that assistant turn
            if cut <= starts[1]:  # the prefix would be the system turn alone
                continue
            r_ids, r_labels, lens = ids[:cut].tolist(), [IGNORE] * cut, []
            for start, end in runs[first:]:
                part = np.full(end - cut, IGNORE)
                part[start - cut :] = labels[start:end]
                r_ids += ids[cut:end].tolist()
                r_labels += part.tolist()
                lens.append(end - cut)
            out.append({"input_ids": r_ids, "labels": r_labels, "seq_lens": lens, "prefix_len": cut})
    return out


# ----------------------------------------------------------------------------- 2. throughput


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _peak_reset(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak(device: str) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None


def _mfu(flops: float, seconds: float) -> float | None:
    peak = bench.peak_flops()
    return 100 * flops / seconds / peak if peak else None


def trained_in(rows: list[dict]) -> int:
    """Positions whose next-token label is trained, each sequence (or prefix + sequence) alone."""
    total = 0
    for r in rows:
        labels = np.asarray(r["labels"])
        p = prefix_len(r)
        bounds = np.cumsum([p, *seq_lens(r)])
        for a, b in zip(bounds[:-1], bounds[1:]):
            start = a if p else a + 1  # after a prefix, a sequence's first token is predicted from it
            total += int(np.count_nonzero(labels[start:b] != IGNORE))
    return total


def shared_flops(m, rows: list[dict], trained: int) -> float:
    """The bench's FLOP count for shared-prefix rows, with the attention the mask really holds: a
    prefix once, and each sequence as prefix + sequence minus the prefix already counted."""
    total = bench.flops(m, [], trained)
    for r in rows:
        p = prefix_len(r)
        total += bench.flops(m, [p], 0) if p else 0.0
        for n in seq_lens(r):
            total += bench.flops(m, [p + n], 0) - (bench.flops(m, [p], 0) if p else 0.0)
    return total


def _timed(m, batches: list[dict], setup: Setup, loss) -> float:
    """Seconds for the full training steps (forward, backward, AdamW) after the warm-up ones."""
    import torch

    device = setup.device
    if next(m.parameters()).device.type != device:  # a 4-bit model is placed where it was loaded, and cannot move
        m.to(device)
    m.train()
    opt = torch.optim.AdamW([q for q in m.parameters() if q.requires_grad], lr=1e-5, fused=device == "cuda")

    def step(batch: dict) -> None:
        with torch.autocast(device, dtype=torch.bfloat16, enabled=setup.bf16):
            value = loss(m, batch)
        value.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for b in batches[: setup.warmup]:
        step(b)
    _sync(device)
    start = time.perf_counter()
    for b in batches[setup.warmup :]:
        step(b)
    _sync(device)
    return time.perf_counter() - start


def _trainer_loss(m, batch: dict):
    from streamproc.train.trainer import packed_loss  # the trainer's: its mask, the head only where trained

    return packed_loss(m, batch)[0]


def _full_logits_loss(m, batch: dict):
    return m(**batch, use_cache=False).loss


def prefix_attention(device: str) -> tuple[str, str]:
    """(attn_implementation, path) for shared-prefix rows: FlexAttention with a BlockMask on a GPU;
    SDPA with a 4D boolean mask on CPU (FlexAttention has no CPU backward), as the trainer does."""
    if device == "cuda":
        return "flex_attention", "FlexAttention, shared-prefix BlockMask"
    return "sdpa", "SDPA, shared-prefix 4D mask (CPU)"


def flat_inputs(rows: list[dict], device: str) -> dict:
    """One step's rows without a prefix flattened into one, for the plain head (logits at every
    position): ids, restarting position ids, labels with each sequence's first label dropped."""
    import torch

    seg, _, pos = segments(rows)
    labels = np.concatenate([np.asarray(r["labels"]) for r in rows]).astype(np.int64)
    labels[np.flatnonzero(np.diff(np.concatenate(([-1], seg))) != 0)] = IGNORE  # predicted from another sequence
    return {
        "input_ids": torch.tensor([t for r in rows for t in r["input_ids"]], device=device)[None],
        "position_ids": torch.as_tensor(pos, device=device)[None],
        "labels": torch.as_tensor(labels, device=device)[None],
    }


def throughput(m, standard_shards: Path, shared_shards: Path | None, longer: list[dict], setup: Setup, report: Report) -> list[Measured]:
    """Padded vs packed (fused head) vs packed with logits everywhere, on the same sequences and
    steps; shared-prefix rows (pack's, and `longer`: prefixes past the system turn) on the same
    number of tokens per step; full fine-tuning against LoRA (and QLoRA) on the same packed rows."""
    device = setup.device
    n_batches = setup.steps + setup.warmup
    packed, padded = bench.batches(str(standard_shards), setup.rows_per_step, n_batches)
    timed_packed = [r for b in packed[setup.warmup :] for r in b]
    lens = [n for r in timed_packed for n in r["seq_lengths"]]
    trained = trained_in(timed_packed)
    computed_packed = sum(lens)
    out: list[Measured] = []

    def record(mode: str, seconds: float, tokens: int, trained_: int, computed: int, flops: float) -> None:
        r = Measured(mode, setup.steps, tokens, trained_, computed, seconds, flops, _peak(device), _mfu(flops, seconds))
        out.append(r)
        mem = f", peak {r.peak_memory_gib:.1f} GiB" if r.peak_memory_gib is not None else ""
        say(f"throughput {mode}: {r.tokens_per_second:,.0f} tokens/s, {r.trained_per_second:,.0f} trained tokens/s{mem}")

    m.set_attn_implementation(bench.attention_implementation())
    for mode, rows_ in (("packed rows", packed), ("padded batches", padded)):
        _peak_reset(device)
        t = bench.measure(m, rows_, padding_free=mode == "packed rows", warmup=setup.warmup)
        record(mode, t.seconds, t.tokens, trained, t.computed, t.flops)
    _peak_reset(device)
    batches = [flat_inputs(b, device) for b in packed]
    seconds = _timed(m, batches, setup, _full_logits_loss)
    record("packed rows, logits everywhere", seconds, computed_packed, trained, computed_packed, bench.flops(m, lens, computed_packed))

    def shared_mode(mode: str, steps: list[list[dict]] | None, source: str) -> None:
        if steps is None:
            report.skipped.append(f"{mode} throughput: {source} holds too few rows for {n_batches} steps")
            return
        m.set_attn_implementation(prefix_attention(device)[0])
        timed = [r for b in steps[setup.warmup :] for r in b]
        s_trained = trained_in(timed)
        # One length for every step: FlexAttention is compiled for the shapes it sees.
        width = -(-max(sum(len(r["input_ids"]) for r in b) for b in steps) // 1024) * 1024
        _peak_reset(device)
        seconds = _timed(m, [trainer_batch(padded_to(b, width), device) for b in steps], setup, _trainer_loss)
        record(mode, seconds, sum(len(r["input_ids"]) for r in timed), s_trained, width * setup.steps, shared_flops(m, timed, s_trained))
        m.set_attn_implementation(bench.attention_implementation())

    step_tokens = sum(len(r["input_ids"]) for r in packed[0])
    if shared_shards is not None:
        shared_mode("shared-prefix rows", shared_batches(train_rows(shared_shards), step_tokens, n_batches), str(shared_shards))
    shared_mode("shared-prefix rows, prefix past the system turn", shared_batches(longer, step_tokens, n_batches), "the longer-prefix rows")

    # Full fine-tuning and adapters on the same rows, the trainer's collator and loss.
    _peak_reset(device)
    seconds = _timed(m, [trainer_batch(b, device) for b in packed], setup, _trainer_loss)
    record("packed rows, full fine-tune", seconds, computed_packed, trained, computed_packed, bench.flops(m, lens, trained))
    m.to("cpu")  # the full model off the GPU, so the adapters' peak memory is theirs alone
    try:
        for mode, why_not in ((f"packed rows, LoRA r={LORA_RANK}", None), (f"packed rows, QLoRA r={LORA_RANK}", qlora_unavailable())):
            if why_not:
                report.skipped.append(why_not)
                continue
            try:
                _peak_reset(device)
                lm = adapter_model(setup, four_bit="QLoRA" in mode)
                seconds = _timed(lm, [trainer_batch(b, device) for b in packed], setup, _trainer_loss)
                record(mode, seconds, computed_packed, trained, computed_packed, bench.flops(m, lens, trained))
                del lm
            except Exception as e:  # the figures measured so far are kept
                traceback.print_exc()
                report.failures.append(f"throughput {mode}: {type(e).__name__}: {e}")
    finally:
        m.to(device)
    return out


def adapter_model(setup: Setup, four_bit: bool):
    """The check's model with LoRA r=16 on every linear layer of the blocks, as `streamproc train
    --lora 16` builds it: the frozen base in bf16 on a GPU (fp32 on CPU), or in 4-bit NF4."""
    import torch
    from peft import get_peft_model

    from streamproc.train.trainer import TrainConfig, load_model, lora_config

    cfg = TrainConfig(shards="", model="", output="", lora=LORA_RANK)
    attn = bench.attention_implementation()
    if not four_bit:
        base = bench.model(setup.shape, attn).to(setup.device, torch.bfloat16 if setup.bf16 else torch.float32)
        return get_peft_model(base, lora_config(cfg))
    with tempfile.TemporaryDirectory(prefix="gpu_check_qlora_") as d:
        bench.model(setup.shape, attn).to(torch.bfloat16).save_pretrained(d)
        base = load_model(d, attn=attn, load_in_4bit=True)
    return get_peft_model(base, lora_config(cfg))


def padded_to(rows: list[dict], width: int) -> list[dict]:
    """`rows` and a row of padding up to `width` tokens: a sequence of its own, never trained."""
    pad = width - sum(len(r["input_ids"]) for r in rows)
    return rows + [{"input_ids": [0] * pad, "labels": [IGNORE] * pad, "seq_lens": [pad]}] if pad else rows


def shared_batches(rows: list[dict], tokens_per_step: int, n: int) -> list[list[dict]] | None:
    """`n` steps of whole shared-prefix rows, each step filled up to about `tokens_per_step`
    tokens (the standard steps' size), taking rows in order."""
    steps: list[list[dict]] = []
    step: list[dict] = []
    size = 0
    for r in rows:
        if step and size + len(r["input_ids"]) > tokens_per_step:
            steps.append(step)
            step, size = [], 0
            if len(steps) == n:
                return steps
        step.append(r)
        size += len(r["input_ids"])
    if step and len(steps) < n:
        steps.append(step)
    return steps if len(steps) == n else None


# ----------------------------------------------------------------------------- 3. streamproc train


def streamproc_train(shards: Path, model: Path, out: Path, steps: int, *extra: str) -> tuple[int, dict | None, float]:
    """Run `streamproc train` as a user would: (exit status, its metrics.json or None, seconds)."""
    cmd = [
        sys.executable, "-m", "streamproc", "train", "--shards", str(shards), "--model", str(model), "--output", str(out),
        "--max-steps", str(steps), "--save-steps", "100000", *extra,
    ]  # fmt: skip
    say(" ".join(cmd[1:]))
    start = time.perf_counter()
    proc = subprocess.run(cmd)
    wall = time.perf_counter() - start
    metrics_path = out / "metrics.json"
    return proc.returncode, json.loads(metrics_path.read_text()) if metrics_path.exists() else None, wall


def train_end_to_end(shards: Path, model: Path, out: Path, setup: Setup, report: Report) -> None:
    rc, metrics, wall = streamproc_train(
        shards, model, out, setup.train_steps, "--init-random", "--lr", str(setup.learning_rate), "--warmup-steps", str(setup.train_steps // 10),
        "--tool-eval-max", str(setup.tool_eval_max), "--tool-eval-new-tokens", str(setup.tool_eval_new_tokens),
    )  # fmt: skip
    if rc != 0 or metrics is None:
        report.failures.append(f"streamproc train exited {rc}, metrics.json {'written' if metrics else 'missing'}")
        report.train = {"returncode": rc, "wall_seconds": wall}
        return
    losses = [h["loss"] for h in metrics["loss_history"]]
    k = max(1, len(losses) // 5)
    first, last = float(np.mean(losses[:k])), float(np.mean(losses[-k:]))
    report.train = {
        "returncode": rc,
        "wall_seconds": wall,
        "steps": metrics["steps"],
        "tokens_per_second": metrics["tokens_per_second"],
        "loss_first": first,  # mean of the first fifth of the logged losses
        "loss_last": last,  # ... and of the last fifth
        "loss_history": metrics["loss_history"],
        "attn_implementation": metrics["attn_implementation"],
        "eval_before": metrics["eval_before"],
        "eval_after": metrics["eval_after"],
    }
    say(f"train: {metrics['steps']} steps, loss {first:.3f} -> {last:.3f}, {metrics['tokens_per_second']:,.0f} tokens/s")
    if metrics["steps"] != setup.train_steps:
        report.failures.append(f"train ran {metrics['steps']} steps, not {setup.train_steps}")
    if not last < first:
        report.failures.append(f"train loss did not fall: {first:.4f} -> {last:.4f}")
    for when in ("before", "after"):
        ev = metrics[f"eval_{when}"]
        if not ev or "tool_selection" not in ev:
            report.failures.append(f"no tool-selection evaluation {when} training")


def weights_dir(out: Path, shape: str) -> Path:
    """model_dir with the check's random weights saved in bf16: a base that `--load-in-4bit`
    can quantize and `--merge` can load again."""
    import torch

    model_dir(out, shape)
    bench.model(shape).to(torch.bfloat16).save_pretrained(out)
    return out


def adapters_end_to_end(shards: Path, model: Path, work: Path, setup: Setup, report: Report) -> None:
    """`streamproc train --lora 16 --merge` (and with `--load-in-4bit` where QLoRA can run) for a
    few steps: it exits 0, only adapters train, and it writes a peft adapter directory and a merged
    model."""
    for key, extra in (("lora", ()), ("qlora", ("--load-in-4bit",))):
        why_not = qlora_unavailable() if extra else None
        if why_not:
            report.skipped.append(f"{why_not}: `streamproc train --load-in-4bit` not run")
            continue
        out = work / key
        rc, metrics, wall = streamproc_train(shards, model, out, setup.adapter_steps, "--lr", "1e-3", "--tool-eval-max", "0",
                                             "--lora", str(LORA_RANK), "--merge", *extra)  # fmt: skip
        files = {f: (out / f).exists() for f in ("adapter_config.json", "adapter_model.safetensors", "merged/config.json")}
        report.train_adapters[key] = {"returncode": rc, "wall_seconds": wall, "files": files}
        if rc != 0 or metrics is None or not all(files.values()):
            report.failures.append(f"streamproc train --lora ({key}) exited {rc}; written: {', '.join(f for f, ok in files.items() if ok) or 'nothing'}")
            continue
        losses = [h["loss"] for h in metrics["loss_history"]]
        report.train_adapters[key] |= {
            "steps": metrics["steps"],
            "tokens_per_second": metrics["tokens_per_second"],
            "parameters": metrics["parameters"],
            "loss_history": metrics["loss_history"],
            "eval_loss_before": (metrics["eval_before"] or {}).get("loss"),
            "eval_loss_after": (metrics["eval_after"] or {}).get("loss"),
        }
        share = metrics["parameters"]["trainable"] / metrics["parameters"]["total"]
        say(f"train --lora {LORA_RANK} ({key}): {metrics['steps']} steps, {share:.2%} of the parameters train, {metrics['tokens_per_second']:,.0f} tokens/s")
        if not (0 < share < 0.05 and all(math.isfinite(x) for x in losses)):
            report.failures.append(f"streamproc train --lora ({key}): {share:.2%} of the parameters train, losses {losses}")


# ----------------------------------------------------------------------------- report


def ratios(measured: list[Measured]) -> dict:
    by = {r.mode: r for r in measured}
    out = {}
    if "packed rows" in by and "padded batches" in by:
        v = by["packed rows"].tokens_per_second / by["padded batches"].tokens_per_second
        out["packed / padded, tokens/s"] = {"value": v, "target": f">= {TARGET_PACKED}", "met": v >= TARGET_PACKED}
    if "packed rows" in by and "packed rows, logits everywhere" in by:
        v = by["packed rows"].tokens_per_second / by["packed rows, logits everywhere"].tokens_per_second
        out["logits where trained / everywhere, tokens/s"] = {"value": v, "target": "", "met": None}
    if "shared-prefix rows" in by and "packed rows" in by:
        v = by["shared-prefix rows"].trained_per_second / by["packed rows"].trained_per_second
        out["shared-prefix / packed, trained tokens/s"] = {"value": v, "target": f">= {TARGET_SHARED}", "met": v >= TARGET_SHARED}
    longer = "shared-prefix rows, prefix past the system turn"
    if longer in by and "packed rows" in by:
        v = by[longer].trained_per_second / by["packed rows"].trained_per_second
        out["prefix past the system turn / packed, trained tokens/s"] = {"value": v, "target": "", "met": None}
    full = by.get("packed rows, full fine-tune")
    for kind in ("LoRA", "QLoRA"):
        adapters = by.get(f"packed rows, {kind} r={LORA_RANK}")
        if full and adapters:
            out[f"{kind} r={LORA_RANK} / full fine-tune, tokens/s"] = {"value": adapters.tokens_per_second / full.tokens_per_second, "target": "", "met": None}
            if full.peak_memory_gib and adapters.peak_memory_gib:
                out[f"{kind} r={LORA_RANK} / full fine-tune, peak memory"] = {"value": adapters.peak_memory_gib / full.peak_memory_gib, "target": "", "met": None}
    return out


def _loss(x: float | None) -> str:
    return f"{x:.3f}" if x is not None else "-"


def markdown(report: Report) -> str:
    env = report.environment
    v = env["versions"]
    lines = [
        f"# GPU check ({'dry run, CPU' if report.setup['device'] == 'cpu' else env['gpu']})",
        "",
        f"{report.setup['shape']} shape, random init, {'bf16 autocast' if report.setup['device'] == 'cuda' else 'fp32'}, "
        f"built-in sample packed at seq-len {report.setup['seq_len']}; Python {v['python']}, torch {v['torch']}, "
        f"transformers {v['transformers']}, trl {v['trl']}, datasets {v['datasets']}, flash_attn {v['flash_attn']}, CUDA {env['cuda']}.",
        "",
        "| isolation: attention path | control | sequences | worst rel. error | tolerance | ok |",
        "| --- | --- | ---: | ---: | ---: | --- |",
    ]
    for r in report.isolation:
        lines.append(f"| {r['path']} | {'boundaries ignored' if r['control'] else ''} | {r['sequences']} | {r['worst']:.2e} | {r['tolerance']:.0e} | {'yes' if r['ok'] else 'NO'} |")
    lines += [
        "",
        f"| throughput, timed steps: {report.setup['steps']} | tokens/s | trained tokens/s | positions computed | peak GiB | MFU % |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in report.throughput:
        mem = f"{r['peak_memory_gib']:.1f}" if r["peak_memory_gib"] is not None else "-"
        mfu = f"{r['mfu']:.1f}" if r["mfu"] is not None else "-"
        lines.append(f"| {r['mode']} | {r['tokens'] / r['seconds']:,.0f} | {r['trained'] / r['seconds']:,.0f} | {r['computed']:,} | {mem} | {mfu} |")
    lines += ["", "| ratio | measured | target | met |", "| --- | ---: | --- | --- |"]
    for name, r in report.ratios.items():
        lines.append(f"| {name} | {r['value']:.2f}x | {r['target']} | {'' if r['met'] is None else ('yes' if r['met'] else 'no')} |")
    t = report.train
    if t.get("steps"):
        sel = lambda when: (t[f"eval_{when}"] or {}).get("tool_selection") or {}  # noqa: E731
        lines += [
            "",
            f"`streamproc train`: {t['steps']} steps ({t['attn_implementation']}), loss {t['loss_first']:.3f} -> {t['loss_last']:.3f}, "
            f"{t['tokens_per_second']:,.0f} tokens/s; eval loss {t['eval_before']['loss']:.3f} -> {t['eval_after']['loss']:.3f}; "
            f"tool selection {sel('before').get('correct')}/{sel('before').get('total')} -> {sel('after').get('correct')}/{sel('after').get('total')}.",
        ]
    for key, a in report.train_adapters.items():
        if a.get("steps"):
            p = a["parameters"]
            lines += ["", f"`streamproc train --lora {LORA_RANK} --merge{' --load-in-4bit' if key == 'qlora' else ''}`: {a['steps']} steps, "
                      f"{p['trainable']:,} of {p['total']:,} parameters train, {a['tokens_per_second']:,.0f} tokens/s; "
                      f"eval loss {_loss(a['eval_loss_before'])} -> {_loss(a['eval_loss_after'])}; adapter and merged model written."]  # fmt: skip
    if report.skipped:
        lines += ["", "Not run: " + "; ".join(report.skipped) + "."]
    lines += ["", "Failures: " + ("; ".join(report.failures) if report.failures else "none") + "."]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- main


def run(out: Path, setup: Setup) -> Report:
    import torch

    if setup.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device here; --dry-run runs the same steps on CPU")
    out.mkdir(parents=True, exist_ok=True)
    report = Report(setup=asdict(setup), environment=environment())
    say(f"environment: {json.dumps(report.environment)}")
    # Shards, model and checkpoints stay out of OUT: only a few small files come back from the GPU machine.
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        work = Path(tmp)
        standard, shared = packs(work, setup, report)
        longer = longer_prefix_rows(train_rows(standard), turn_start_id())
        report.setup["longer_prefix_rows"] = {"rows": len(longer), "mean_prefix": float(np.mean([r["prefix_len"] for r in longer])) if longer else None}
        m = bench.model(setup.shape)
        m.to(setup.device)
        sections = (
            ("isolation", lambda: isolation_checks(
                m, rows_for_isolation(train_rows(standard), setup.isolation_rows),
                rows_for_isolation(train_rows(shared), setup.isolation_rows) if shared else None,
                rows_for_isolation(longer, setup.isolation_rows), setup, report)),
            ("throughput", lambda: report.throughput.extend(asdict(r) for r in throughput(m, standard, shared, longer, setup, report))),
        )  # fmt: skip
        for name, section in sections:
            try:
                section()
            except Exception as e:  # one section's failure must not cost the others' figures on a leased GPU
                traceback.print_exc()
                report.failures.append(f"{name}: {type(e).__name__}: {e}")
        report.ratios = ratios([Measured(**r) for r in report.throughput])
        del m
        if setup.device == "cuda":
            torch.cuda.empty_cache()
        train_end_to_end(standard, model_dir(work / "model", setup.shape), work / "run", setup, report)
        if (work / "run" / "metrics.json").exists():
            shutil.copy(work / "run" / "metrics.json", out / "train_metrics.json")
        adapters_end_to_end(standard, weights_dir(work / "weights", setup.shape), work, setup, report)

    write_json(out / "gpu_check.json", asdict(report))
    text = markdown(report)
    (out / "gpu_check.md").write_text(text, encoding="utf-8")
    print(text, flush=True)
    return report


def packs(work: Path, setup: Setup, report: Report) -> tuple[Path, Path | None]:
    """The sample packed as today, and with --share-prefix where this checkout has it (rows up to
    `shared_row_len` x seq-len where --row-len exists)."""
    standard = pack(work / "packed", setup)
    options = pack_options()
    if "--share-prefix" not in options:
        report.skipped.append("shared-prefix paths: this checkout's `streamproc pack` has no --share-prefix (issue 14)")
        return standard, None
    extra = ["--share-prefix", *(["--row-len", str(setup.shared_row_len * setup.seq_len)] if "--row-len" in options else [])]
    shared = pack(work / "shared", setup, *extra)
    report.setup["shared_pack_options"] = extra
    if not any(prefix_len(r) for r in train_rows(shared, 64)):
        report.skipped.append("shared-prefix paths: `pack --share-prefix` wrote no row with a prefix_len")
        return standard, None
    return standard, shared


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="the same steps on CPU at toy size (fp32, a few rows and steps)")
    p.add_argument("--out", default=os.environ.get("OUT") or "runs/gpu_check", help="results directory (default: $OUT, else %(default)s)")
    args = p.parse_args(argv)
    report = run(Path(args.out), DRY if args.dry_run else GPU)
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
