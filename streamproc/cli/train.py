"""`streamproc train`: SFT on the shards of `streamproc pack` (see streamproc.train.trainer)."""

from __future__ import annotations

import argparse
import os
import sys

from streamproc.prepare.shards import ShardFormatError
from streamproc.train.trainer import ShardMismatch, TrainConfig, TrainOptionError, train
from streamproc.cli.manners import RAW
from streamproc.cli import COMMANDS

D = TrainConfig.__dataclass_fields__

EXAMPLES = """examples:
  streamproc train --shards packed/ --model HuggingFaceTB/SmolLM2-135M --output ckpt/ --max-steps 200
  streamproc train --shards packed/ --model Qwen/Qwen2.5-7B-Instruct --output lora/ --lora 16 --merge
  streamproc train --config train.toml --lr 1e-4          # options from the file, --lr from here
  torchrun --nproc-per-node 2 -m streamproc train --shards packed/ --model MODEL_DIR --output ckpt/
"""
REQUIRED = ("shards", "model", "output")
ALIASES = {"lr": "learning_rate"}
"""Command-line names whose field is named otherwise, also accepted as config-file keys."""


def add(sub) -> None:
    p = sub.add_parser(
        "train", help=COMMANDS["train"],
        description="Runs as is on one device, or under `torchrun` / `accelerate launch` with DDP "
        "(each rank reads its own shard files).",
        epilog=EXAMPLES, formatter_class=RAW,
        # An option left out stays out of the namespace: the config file's value, else the default, applies.
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument("--config", metavar="FILE", help="options from a TOML, YAML or JSON file (keys: the option names); the command line overrides it")
    p.add_argument("--shards", metavar="DIR", help="output of `streamproc pack` (its training set); required here or in --config")
    p.add_argument("--model", metavar="NAME_OR_DIR", help="Hub id, local model directory, or a directory holding one .gguf; required here or in --config")
    p.add_argument("--output", metavar="DIR", help="checkpoints, final model (or adapter), metrics.json and train_config.yaml; required here or in --config")
    p.add_argument("--eval-shards", metavar="DIR", help="`streamproc pack` output whose eval set is evaluated before and after training")
    p.add_argument("--init-random", action="store_true", help="random weights from the model's config (tests, throughput runs)")
    p.add_argument("--max-steps", type=int, metavar="N", help="optimizer steps (default: --epochs over the train rows)")
    p.add_argument("--epochs", type=float, help=f"passes over the train rows (default {D['epochs'].default})")
    p.add_argument("--batch-size", type=int, metavar="ROWS", help=f"packed rows per device and step (default {D['batch_size'].default})")
    p.add_argument("--grad-accum", type=int, metavar="N", help=f"(default {D['grad_accum'].default})")
    p.add_argument("--lr", type=float, dest="learning_rate", help=f"peak learning rate (default {D['learning_rate'].default})")
    p.add_argument("--warmup-steps", type=int, help=f"(default {D['warmup_steps'].default})")
    p.add_argument("--logging-steps", type=int, help=f"(default {D['logging_steps'].default})")
    p.add_argument("--save-steps", type=int, help=f"checkpoint every N steps (default {D['save_steps'].default})")
    p.add_argument("--resume", nargs="?", const=True, metavar="CHECKPOINT", help="resume from CHECKPOINT, or the latest one in --output")
    p.add_argument("--attn", help="attention implementation (default: flash_attention_2 where installed on a GPU, else sdpa)")
    p.add_argument("--seed", type=int, help=f"random seed (default {D['seed'].default})")
    p.add_argument("--tool-eval-max", type=int, metavar="N", help=f"tool-selection prompts per evaluation (0: off; default {D['tool_eval_max'].default})")
    p.add_argument("--tool-eval-new-tokens", type=int, metavar="N", help=f"greedy tokens per prompt (default {D['tool_eval_new_tokens'].default})")
    p.add_argument("--gradient-checkpointing", action="store_true")
    lora = p.add_argument_group("LoRA adapters (peft): the base weights stay frozen")
    lora.add_argument("--lora", type=int, metavar="R", help="train LoRA adapters of rank R instead of every weight; OUTPUT is a peft adapter directory")
    lora.add_argument("--lora-alpha", type=float, metavar="A", help="LoRA scaling numerator (default 2 x R)")
    lora.add_argument("--lora-dropout", type=float, metavar="P", help=f"dropout on the adapters' input (default {D['lora_dropout'].default})")
    lora.add_argument("--lora-targets", type=_names, metavar="NAMES", help="comma-separated module names, e.g. q_proj,v_proj (default: every linear layer of the blocks)")
    lora.add_argument("--load-in-4bit", action="store_true", help="QLoRA: the base model in 4-bit NF4 (needs a CUDA GPU and bitsandbytes)")
    lora.add_argument("--merge", action="store_true", help="also write OUTPUT/merged: base + adapters as one plain model")
    p.set_defaults(func=run)


def _names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def resolve(args: argparse.Namespace) -> TrainConfig:
    """TrainConfig from the defaults, then --config FILE, then the options given on the command line."""
    from streamproc.train.config import read_config

    given = {k: v for k, v in vars(args).items() if k in D}
    values = {**(read_config(args.config, ALIASES) if getattr(args, "config", None) else {}), **given}
    missing = [f"--{k}" for k in REQUIRED if not values.get(k)]
    if missing:
        raise TrainOptionError(f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} required, on the command line or in --config FILE")
    return TrainConfig(**values)


def run(args) -> int:
    try:
        metrics = train(resolve(args))
    except (ShardMismatch, ShardFormatError, TrainOptionError, FileNotFoundError) as e:
        print(f"streamproc train: error: {e}", file=sys.stderr)
        return 2
    finally:
        _leave_process_group()
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # under torchrun, rank 0 speaks for all
    summary = f"train_loss {metrics['train_loss']:.4f} after {metrics['steps']} steps, {metrics['tokens_per_second']:,.0f} tokens/s"
    for when in ("before", "after"):
        ev = metrics[f"eval_{when}"]
        if ev:
            sel = ev.get("tool_selection") or {}
            summary += f"; eval {when}: loss {ev['loss']:.4f}, tool accuracy {sel.get('accuracy')}"
    print(summary, file=sys.stderr)
    print(f"wrote {metrics['config']['output']}/metrics.json", file=sys.stderr)
    return 0


def _leave_process_group() -> None:
    """Under torchrun, leave the process group before the process ends: gloo's threads, left
    running at exit, abort a rank now and then ("terminate called without an active exception")."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()

