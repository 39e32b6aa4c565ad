"""Supervised fine-tuning on the shards of `streamproc pack`, as they are.

Rows are fed to TRL's SFTTrainer pre-tokenized and padding-free: `PackedCollator` flattens a
batch into one row without padding, with position_ids that restart at 0 for every packed
sequence. Transformers reads the restarting position_ids as sequence boundaries: the
flash-attention varlen kernels get them as cu_seq_lens, SDPA / eager / flex attention get a
block-diagonal causal mask. So no token attends to another sequence's tokens.

Rows with a shared prefix (`pack --share-prefix`, docs/shards.md) cannot be told by position_ids
alone: each remainder's positions continue from the prefix length, and it attends to the prefix
and causally to itself. The collator sends each token's segment and the segment it may also see
(its row's prefix); the trainer builds the mask from them once per batch: a FlexAttention
BlockMask on GPU, a 4D boolean mask for SDPA on CPU. Flash-attention varlen cannot express it.

Logits are computed only where a token trains (`logits_to_keep` with the positions whose next
token is labelled): on agent traces about 93% of positions carry no loss, and the LM head is the
widest matrix of the model.

With `lora` set, peft LoRA adapters train on the same rows, batches and loss (the base weights
frozen; QLoRA with `load_in_4bit`); the output is a peft adapter directory, and `merge` also
writes base + adapters as a plain model.
"""

from __future__ import annotations

import importlib.util
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator


from streamproc.io.files import write_json
from streamproc.prepare.pack import IGNORE
from streamproc.prepare.shards import MANIFEST, ShardFormatError, prefix_lens, read_manifest, read_shard, shard_paths, shared_prefix, verify

SEQ_LENGTHS = "seq_lengths"
"""TRL's name for our `seq_lens` column."""
PREFIX_ATTN = ("flex_attention", "sdpa", "eager")
"""Attention implementations that take the mask of shared-prefix rows."""


class ShardMismatch(ValueError):
    """The shards were made with another tokenizer than the model's, or for an attention
    implementation that cannot read them."""


class TrainOptionError(ValueError):
    """Options that cannot work together or here (4-bit without a CUDA GPU, say): raised before
    any shard is read or any model loaded."""


@dataclass(slots=True)
class TrainConfig:
    shards: str
    model: str
    output: str
    eval_shards: str | None = None  # None: the eval set of `shards`, if it has one
    init_random: bool = False
    max_steps: int | None = None  # None: `epochs` passes over the smallest rank's rows
    epochs: float = 1.0
    batch_size: int = 1  # packed rows per device and step, flattened into one row
    grad_accum: int = 1
    learning_rate: float = 2e-5
    warmup_steps: int = 0
    logging_steps: int = 1
    save_steps: int = 500
    save_total_limit: int | None = 2
    resume: bool | str = False  # True: the latest checkpoint in `output`
    attn: str | None = None  # None: flash_attention_2 where installed on a GPU, else sdpa
    seed: int = 0
    shuffle_buffer: int = 256
    tool_eval_max: int = 64  # tool-selection prompts per evaluation; 0 turns it off
    tool_eval_new_tokens: int = 512
    gradient_checkpointing: bool = False
    report_to: list[str] = field(default_factory=list)
    lora: int | None = None  # LoRA rank; None: every weight trains
    lora_alpha: float | None = None  # None: 2 x rank
    lora_dropout: float = 0.0
    lora_targets: list[str] | None = None  # module names; None: every linear layer of the blocks
    load_in_4bit: bool = False  # QLoRA: the base weights in 4-bit NF4 (a CUDA GPU and bitsandbytes)
    merge: bool = False  # also write OUTPUT/merged: base + adapters as one plain model


# ----------------------------------------------------------------------------- model


def attention_implementation(prefix: bool = False) -> str:
    """flash_attention_2 (varlen, no mask at all) where it can run, else PyTorch SDPA with a block
    mask. Rows with a shared prefix: FlexAttention on GPU, SDPA on CPU (flex has no CPU backward)."""
    import torch

    if prefix:
        return "flex_attention" if torch.cuda.is_available() else "sdpa"
    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def gguf_file(model: str) -> str | None:
    """The .gguf file of a local model directory that has no safetensors/bin weights."""
    d = Path(model)
    if not d.is_dir() or any(d.glob("*.safetensors")) or any(d.glob("pytorch_model*.bin")):
        return None
    found = sorted(d.glob("*.gguf"))
    return found[0].name if found else None


def load_model(model: str, *, init_random: bool = False, attn: str | None = None, dtype=None, load_in_4bit: bool = False):
    """A causal LM from a Hub id, a local directory or a GGUF directory; `init_random` keeps only
    its config. Weights load in fp32 unless `dtype` is given (training casts with autocast);
    `load_in_4bit`: NF4 on this rank's GPU, bf16 compute (QLoRA; see check_options)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    attn = attn or attention_implementation()
    dtype = dtype or torch.float32
    if init_random:
        config = AutoConfig.from_pretrained(model)
        return AutoModelForCausalLM.from_config(config, attn_implementation=attn, dtype=dtype)
    if load_in_4bit:
        from transformers import BitsAndBytesConfig

        quant = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16
        )
        # Embeddings and norms stay bf16 (peft's prepare_model_for_kbit_training would make them
        # fp32: 4 GiB more on a 7B); bitsandbytes quantizes as it places the weights on this rank's GPU.
        return AutoModelForCausalLM.from_pretrained(
            model, quantization_config=quant, dtype=torch.bfloat16, attn_implementation=attn,
            device_map={"": int(os.environ.get("LOCAL_RANK", "0"))},
        )  # fmt: skip
    gguf = gguf_file(model)
    m = AutoModelForCausalLM.from_pretrained(model, gguf_file=gguf, dtype=dtype, attn_implementation=attn)
    if gguf:
        # Transformers de-quantizes GGUF weights on load, but leaves the "quantized" flags that
        # make Trainer refuse a full fine-tune.
        m.is_quantized = False
        m.hf_quantizer = None
        if hasattr(m.config, "quantization_config"):
            del m.config.quantization_config
    return m


def check_options(cfg: TrainConfig) -> None:
    """TrainOptionError for options that cannot work together or on this machine, before any work."""
    if cfg.lora is not None and cfg.lora < 1:
        raise TrainOptionError(f"--lora {cfg.lora}: the rank must be at least 1")
    if cfg.lora is None:
        given = [f"--{o}" for o, on in (("lora-alpha", cfg.lora_alpha is not None), ("lora-targets", cfg.lora_targets),
                                         ("load-in-4bit", cfg.load_in_4bit), ("merge", cfg.merge)) if on]  # fmt: skip
        if given:
            raise TrainOptionError(f"{', '.join(given)} without --lora R: these apply to LoRA adapters only")
    if not 0.0 <= cfg.lora_dropout < 1.0:
        raise TrainOptionError(f"--lora-dropout {cfg.lora_dropout}: must be in [0, 1)")
    if cfg.load_in_4bit:
        import torch

        if cfg.init_random:
            raise TrainOptionError("--load-in-4bit quantizes pretrained weights: it cannot start from --init-random")
        if gguf_file(cfg.model):
            raise TrainOptionError(f"--load-in-4bit: {cfg.model} holds GGUF weights; use a safetensors model")
        if not torch.cuda.is_available():
            raise TrainOptionError("--load-in-4bit needs a CUDA GPU (bitsandbytes' 4-bit kernels): none is visible here")
        if importlib.util.find_spec("bitsandbytes") is None:
            raise TrainOptionError("--load-in-4bit needs bitsandbytes: pip install bitsandbytes")


def lora_config(cfg: TrainConfig, added_tokens: list[int] = ()):
    """The peft LoraConfig of `cfg` (None without --lora). Tokens that `pack --add-tokens` added
    train their embedding rows (peft's trainable tokens): a new one starts untrained."""
    if cfg.lora is None:
        return None
    from peft import LoraConfig

    return LoraConfig(
        task_type="CAUSAL_LM",
        r=cfg.lora,
        lora_alpha=cfg.lora_alpha if cfg.lora_alpha is not None else 2 * cfg.lora,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.lora_targets) if cfg.lora_targets else "all-linear",  # all-linear: not the LM head
        trainable_token_indices={"embed_tokens": list(added_tokens)} if added_tokens else None,
    )


def parameter_counts(model) -> dict[str, int]:
    """Trainable and total parameters (a 4-bit weight counts as its elements, not its bytes)."""
    if hasattr(model, "get_nb_trainable_parameters"):  # a PeftModel
        trainable, total = model.get_nb_trainable_parameters()
    else:
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
    return {"trainable": int(trainable), "total": int(total)}


def fit_embeddings(model, tokenizer) -> None:
    """Grow the embeddings to the tokens that `pack --add-tokens` added."""
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))


def added_token_ids(shards: str | os.PathLike, tokenizer) -> list[int]:
    """The ids of the tokens `pack --add-tokens` asked for (the manifest lists them)."""
    return sorted({tokenizer.convert_tokens_to_ids(t) for t in read_manifest(shards)["tokenizer"].get("added_tokens") or ()})


def save_merged(model, tokenizer, path: Path, cfg: TrainConfig) -> None:
    """Base + adapters merged into one plain model at `path`, written beside it and renamed into
    place, so an interrupted merge leaves no half model. A 4-bit base is loaded again in bf16 on
    the CPU and the saved adapter merged into it: merging into NF4 weights would round them."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        if cfg.load_in_4bit:
            import torch
            from peft import PeftModel

            base = load_model(cfg.model, attn="sdpa", dtype=torch.bfloat16)
            fit_embeddings(base, tokenizer)
            model = PeftModel.from_pretrained(base, cfg.output)
        model.merge_and_unload().save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ----------------------------------------------------------------------------- shards


def shards_tokenizer(shards: str | os.PathLike, model: str):
    """The model's tokenizer (transformers', for the trainer), extended with the tokens `pack
    --add-tokens` added, once it matches the one the shards were made with; ShardMismatch otherwise.
    The hash is taken as pack takes it, from the files read with `tokenizers`."""
    from tokenizers import AddedToken
    from transformers import AutoTokenizer

    from streamproc.prepare.mask import load_tokenizer, tokenizer_hash

    info = read_manifest(shards)["tokenizer"]
    files = load_tokenizer(model)
    extra = [AddedToken(t, special=True, normalized=False) for t in info.get("added_tokens") or ()]
    files.add_tokens(extra, special_tokens=True)
    have = tokenizer_hash(files)
    if info["hash"] != have:
        raise ShardMismatch(
            f"{Path(shards) / MANIFEST}: the shards were tokenized with {info.get('name', '?')} (tokenizer hash "
            f"{info['hash'][:12]}...), but {model}'s tokenizer hashes to {have[:12]}...: the same ids would be other "
            f"tokens. Re-run `streamproc pack --tokenizer {model}`."
        )
    tokenizer = AutoTokenizer.from_pretrained(str(files.source))
    if extra:
        tokenizer.add_tokens(extra, special_tokens=True)
    return tokenizer


def _rows(paths: list[str]) -> Iterator[dict]:
    for path in paths:
        table = read_shard(path)  # memory-mapped
        prefixes = iter(prefix_lens(table))
        for batch in table.to_batches():
            cols = batch.select(["input_ids", "labels", "seq_lens"]).to_pydict()
            for ids, labels, lens in zip(cols["input_ids"], cols["labels"], cols["seq_lens"]):
                yield {"input_ids": ids, "labels": labels, SEQ_LENGTHS: lens, "prefix_len": next(prefixes)}


def packed_dataset(shards: str | os.PathLike, split: str, *, seed: int = 0, shuffle_buffer: int = 0):
    """The split's rows as a streaming `datasets.IterableDataset` with one source shard per file:
    under DDP, accelerate hands each rank its own files (`IterableDataset.shard`)."""
    from datasets import Features, IterableDataset, List, Value

    paths = shard_paths(shards, split)
    if not paths:
        raise FileNotFoundError(f"{Path(shards) / MANIFEST}: lists no {split} shards")
    features = Features(
        {
            "input_ids": List(Value("int32")),
            "labels": List(Value("int32")),
            SEQ_LENGTHS: List(Value("int32")),
            "prefix_len": Value("int32"),
        }
    )
    ds = IterableDataset.from_generator(_rows, gen_kwargs={"paths": paths}, features=features)
    return ds.shuffle(seed=seed, buffer_size=shuffle_buffer) if shuffle_buffer > 1 else ds


# ----------------------------------------------------------------------------- batches


@dataclass(slots=True)
class PackedCollator:
    """Packed rows -> one flat row without padding: input_ids, position_ids, labels and
    shift_labels (the label each position predicts; IGNORE where nothing trains), all [1, T].

    A row with a prefix adds `segments` and `bases` ([1, T]): token q may attend to token k <= q
    when segments[k] is segments[q] or bases[q] (a remainder's base is its row's prefix; any other
    token's base is its own segment). Batches without a prefix leave them out, so the model
    takes its padding-free path (boundaries from position_ids)."""

    def __call__(self, examples: list[dict]) -> dict:
        import torch

        ids, labels, positions, shift, segments, bases = [], [], [], [], [], []
        seg = 0
        for ex in examples:
            p = int(ex.get("prefix_len") or 0)
            row_ids, row_labels = list(ex["input_ids"]), list(ex["labels"])
            lens = list(ex[SEQ_LENGTHS])
            if p + sum(lens) != len(row_ids):
                raise ShardFormatError(f"a row of {len(row_ids)} tokens whose prefix_len {p} and seq_lens sum to {p + sum(lens)}")
            ids += row_ids
            prefix_seg = seg
            if p:
                positions += range(p)
                labels += [IGNORE] * p
                shift += [IGNORE] * p  # the prefix trains nothing, nor the token after it (checked below)
                segments += [seg] * p
                bases += [seg] * p
                seg += 1
            start = p
            for n in lens:
                part = row_labels[start : start + n]
                if p and part[0] != IGNORE:
                    # It would be predicted at the prefix's last position, which all remainders share.
                    raise ShardFormatError("a remainder whose first token trains; streamproc pack never writes one")
                positions += range(p, p + n)  # p is 0 in a row without a prefix
                labels += [IGNORE] + part[1:]  # nothing of its own predicts a sequence's first token
                shift += part[1:] + [IGNORE]
                segments += [seg] * n
                bases += [prefix_seg if p else seg] * n
                seg += 1
                start += n
        batch = {
            "input_ids": torch.tensor([ids], dtype=torch.long),
            "position_ids": torch.tensor([positions], dtype=torch.long),
            "labels": torch.tensor([labels], dtype=torch.long),
            "shift_labels": torch.tensor([shift], dtype=torch.long),
        }
        if any(int(ex.get("prefix_len") or 0) for ex in examples):
            batch["segments"] = torch.tensor([segments], dtype=torch.int32)
            batch["bases"] = torch.tensor([bases], dtype=torch.int32)
        return batch


def prefix_attention_mask(segments, bases, attn: str):
    """The attention mask of a flat batch with shared-prefix rows (see PackedCollator): a
    FlexAttention BlockMask for flex_attention, a 4D boolean one ([1, 1, T, T], True: attend) for
    SDPA, additive for eager."""
    import torch

    if attn not in PREFIX_ATTN:
        raise ShardMismatch(f"attention {attn!r} cannot express a shared prefix; use one of {', '.join(PREFIX_ATTN)}")
    n = len(segments)
    if attn == "flex_attention":
        from torch.nn.attention.flex_attention import create_block_mask

        def visible(b, h, q, k):
            return (k <= q) & ((segments[k] == segments[q]) | (segments[k] == bases[q]))

        return create_block_mask(visible, 1, None, n, n, device=segments.device)
    q = torch.arange(n, device=segments.device)
    mask = (q[None, :] <= q[:, None]) & ((segments[None, :] == segments[:, None]) | (segments[None, :] == bases[:, None]))
    mask = mask[None, None]
    if attn == "eager":
        return torch.zeros(mask.shape, dtype=torch.float32, device=mask.device).masked_fill(~mask, torch.finfo(torch.float32).min)
    return mask


def packed_loss(model, inputs: dict, num_items_in_batch=None):
    """Cross-entropy of a PackedCollator batch, the LM head computed only at positions whose next
    token trains; summed, divided by `num_items_in_batch` (the trained tokens of the whole
    accumulated step) or, without it, by this batch's. Returns (loss, trained positions)."""
    import torch
    import torch.nn.functional as F

    inputs = dict(inputs)
    shift = inputs.pop("shift_labels")[0]
    inputs.pop("labels", None)
    segments, bases = inputs.pop("segments", None), inputs.pop("bases", None)
    if segments is not None:
        inputs["attention_mask"] = prefix_attention_mask(segments[0], bases[0], model.config._attn_implementation)
    keep = torch.nonzero(shift != IGNORE).squeeze(1)
    logits = model(**inputs, logits_to_keep=keep, use_cache=False).logits
    logits = logits.reshape(-1, logits.shape[-1])
    total = F.cross_entropy(logits.float(), shift[keep], reduction="sum")
    count = num_items_in_batch if num_items_in_batch is not None else len(keep)
    return total / torch.as_tensor(count, device=total.device).clamp(min=1), len(keep)


def steps_for_epochs(shards: str | os.PathLike, epochs: float, rows_per_step: int, world: int) -> int:
    """Optimizer steps for `epochs` passes over the rows of the rank with the fewest rows, so every
    rank takes the same number of steps (a rank that ran out first would hang the others)."""
    per_rank = [0] * world
    for k, s in enumerate(s for s in read_manifest(shards)["shards"] if s["split"] == "train"):
        per_rank[k % world] += s["rows"]
    return max(1, math.floor(epochs * min(per_rank) / rows_per_step))


# ----------------------------------------------------------------------------- training


def check_shards(shards: str | os.PathLike, attn: str | None, split: str | None = None) -> bool:
    """Verify every shard of `split` against the manifest's sha256 (ShardFormatError naming a
    damaged one) and whether `attn` can read them; True where rows may share a prefix."""
    verify(shards, split)
    prefix = shared_prefix(read_manifest(shards))
    if prefix and attn is not None and attn not in PREFIX_ATTN:
        raise ShardMismatch(
            f"{Path(shards) / MANIFEST}: rows share a prefix (pack --share-prefix), which --attn {attn} cannot express; "
            f"use {' or '.join(PREFIX_ATTN)}, or pack without --share-prefix"
        )
    return prefix


def _packed_trainer(base):
    """SFTTrainer with packed_loss: logits only where a token trains, shared-prefix masks."""

    class PackedTrainer(base):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss, _ = packed_loss(model, inputs, num_items_in_batch)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes  # DDP averages the gradients over ranks
            if return_outputs:
                raise NotImplementedError("packed_loss computes no full logits")
            return loss

    return PackedTrainer



def _checkpointing_arg() -> str:
    """The name this transformers' TrainingArguments gives gradient checkpointing."""
    import dataclasses

    from transformers import TrainingArguments

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    return "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train (every weight, or LoRA adapters), evaluate before and after, write checkpoints,
    OUTPUT/train_config.yaml and OUTPUT/metrics.json; return the metrics."""
    import torch
    from trl import SFTConfig, SFTTrainer

    from streamproc.train.config import CONFIG_FILE, write_config
    from streamproc.train.evaluate import evaluate

    check_options(cfg)
    tokenizer = shards_tokenizer(cfg.shards, cfg.model)
    prefix = check_shards(cfg.shards, cfg.attn)
    if cfg.eval_shards is None and shard_paths(cfg.shards, "eval"):
        cfg = replace(cfg, eval_shards=cfg.shards)  # `pack --eval-fraction` held some traces out
    if cfg.eval_shards:
        shards_tokenizer(cfg.eval_shards, cfg.model)
        prefix = check_shards(cfg.eval_shards, cfg.attn, "eval") or prefix
    world = int(os.environ.get("WORLD_SIZE", "1"))
    max_steps = cfg.max_steps or steps_for_epochs(cfg.shards, cfg.epochs, cfg.batch_size * cfg.grad_accum, world)
    on_gpu = torch.cuda.is_available()
    args = SFTConfig(
        output_dir=cfg.output,
        max_steps=max_steps,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate,
        warmup_steps=cfg.warmup_steps,
        logging_steps=cfg.logging_steps,
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        seed=cfg.seed,
        use_cpu=not on_gpu,  # also what makes accelerate set up gloo DDP under torchrun on CPU
        bf16=on_gpu and torch.cuda.is_bf16_supported(),
        # transformers 5.24 renamed it activation_checkpointing (the old name warns on every
        # run); older 5.x (the GPU image's 5.17) know only the old one.
        **{_checkpointing_arg(): cfg.gradient_checkpointing},
        # The rows are packed already: with preparation skipped TRL neither re-tokenizes nor
        # re-packs them; PackedCollator flattens each batch without padding.
        packing=False,
        padding_free=False,
        dataset_kwargs={"skip_prepare_dataset": True},
        remove_unused_columns=False,
        # Each rank iterates its own shard files instead of rank 0 dispatching batches.
        accelerator_config={"dispatch_batches": False},
        include_num_input_tokens_seen="all",  # padding-free batches: every token is real
        dataloader_pin_memory=on_gpu,
        disable_tqdm=False,
        report_to=cfg.report_to,
        ddp_find_unused_parameters=False,
    )
    if args.process_index == 0:
        write_config(cfg, Path(cfg.output) / CONFIG_FILE)  # before training: a run that stops still says what it ran
    # A frozen base needs no fp32 master copy: bf16 where training runs in bf16 (adapters stay fp32).
    base_dtype = torch.bfloat16 if cfg.lora is not None and args.bf16 else None
    model = load_model(
        cfg.model, init_random=cfg.init_random, attn=cfg.attn or attention_implementation(prefix), dtype=base_dtype, load_in_4bit=cfg.load_in_4bit
    )
    fit_embeddings(model, tokenizer)
    train_ds = packed_dataset(cfg.shards, "train", seed=cfg.seed, shuffle_buffer=cfg.shuffle_buffer)
    eval_ds = packed_dataset(cfg.eval_shards, "eval") if cfg.eval_shards else None
    trainer = _packed_trainer(SFTTrainer)(
        model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds, processing_class=tokenizer, data_collator=PackedCollator(),
        peft_config=lora_config(cfg, added_token_ids(cfg.shards, tokenizer)),
    )  # fmt: skip
    counts = parameter_counts(trainer.model)
    if cfg.lora is not None and trainer.is_world_process_zero():
        print(
            f"streamproc train: LoRA r={cfg.lora}: {counts['trainable']:,} of {counts['total']:,} parameters train "
            f"({100 * counts['trainable'] / counts['total']:.2f}%){', base in 4-bit' if cfg.load_in_4bit else ''}",
            file=sys.stderr,
        )

    before = evaluate(trainer, cfg) if eval_ds is not None and not cfg.resume else None
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=cfg.resume or None)
    seconds = time.perf_counter() - start
    after = evaluate(trainer, cfg) if eval_ds is not None else None
    trainer.save_model(cfg.output)

    history = [{"step": h["step"], "loss": h["loss"]} for h in trainer.state.log_history if "loss" in h]
    # This session's tokens: a resumed state already counts the earlier sessions'.
    tokens = trainer.state.num_input_tokens_seen - trainer._initial_num_input_tokens_seen
    metrics = {
        "train_loss": history[-1]["loss"] if history else result.training_loss,
        "train_loss_mean": result.training_loss,
        "loss_history": history,
        "steps": trainer.state.global_step,
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_second": tokens / seconds if seconds > 0 else None,
        "eval_before": before,
        "eval_after": after,
        "world_size": world,
        "attn_implementation": model.config._attn_implementation,
        "parameters": counts,
        "config": asdict(cfg),
        "shards_manifest": {k: read_manifest(cfg.shards).get(k) for k in ("tokenizer", "seq_len", "row_len", "share_prefix", "counts")},
    }
    if trainer.is_world_process_zero():
        if cfg.merge:
            save_merged(trainer.model, tokenizer, Path(cfg.output) / "merged", cfg)
        write_json(Path(cfg.output) / "metrics.json", metrics)
    return metrics
