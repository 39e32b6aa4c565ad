"""`streamproc train`: SFT on the shards of `streamproc pack` (see streamproc.train.trainer)."""

from __future__ import annotations

import os
import sys

from streamproc.prepare.shards import ShardFormatError
from streamproc.train.trainer import ShardMismatch, TrainConfig, train
from streamproc.cli.manners import RAW
from streamproc.cli import COMMANDS

D = TrainConfig.__dataclass_fields__

EXAMPLES = """examples:
  streamproc train --shards packed/ --model HuggingFaceTB/SmolLM2-135M --output ckpt/ --max-steps 200
  torchrun --nproc-per-node 2 -m streamproc train --shards packed/ --model MODEL_DIR --output ckpt/
"""


def add(sub) -> None:
    p = sub.add_parser(
        "train", help=COMMANDS["train"],
        description="Runs as is on one device, or under `torchrun` / `accelerate launch` with DDP "
        "(each rank reads its own shard files).",
        epilog=EXAMPLES, formatter_class=RAW,
    )
    p.add_argument("--shards", required=True, metavar="DIR", help="output of `streamproc pack` (its training set)")
    p.add_argument("--model", required=True, metavar="NAME_OR_DIR", help="Hub id, local model directory, or a directory holding one .gguf")
    p.add_argument("--output", required=True, metavar="DIR", help="checkpoints, final model and metrics.json")
    p.add_argument("--eval-shards", metavar="DIR", help="`streamproc pack` output whose eval set is evaluated before and after training")
    p.add_argument("--init-random", action="store_true", help="random weights from the model's config (tests, throughput runs)")
    p.add_argument("--max-steps", type=int, metavar="N", help="optimizer steps (default: --epochs over the train rows)")
    p.add_argument("--epochs", type=float, default=D["epochs"].default)
    p.add_argument("--batch-size", type=int, default=D["batch_size"].default, metavar="ROWS", help="packed rows per device and step")
    p.add_argument("--grad-accum", type=int, default=D["grad_accum"].default, metavar="N")
    p.add_argument("--lr", type=float, default=D["learning_rate"].default, dest="learning_rate")
    p.add_argument("--warmup-steps", type=int, default=D["warmup_steps"].default)
    p.add_argument("--logging-steps", type=int, default=D["logging_steps"].default)
    p.add_argument("--save-steps", type=int, default=D["save_steps"].default, help="checkpoint every N steps")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="CHECKPOINT", help="resume from CHECKPOINT, or the latest one in --output")
    p.add_argument("--attn", help="attention implementation (default: flash_attention_2 where installed on a GPU, else sdpa)")
    p.add_argument("--seed", type=int, default=D["seed"].default, help="random seed (default %(default)s)")
    p.add_argument("--tool-eval-max", type=int, default=D["tool_eval_max"].default, metavar="N", help="tool-selection prompts per evaluation (0: off)")
    p.add_argument("--tool-eval-new-tokens", type=int, default=D["tool_eval_new_tokens"].default, metavar="N", help="greedy tokens per prompt")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    fields = set(D)
    cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})
    try:
        metrics = train(cfg)
    except (ShardMismatch, ShardFormatError, FileNotFoundError) as e:
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
    print(f"wrote {cfg.output}/metrics.json", file=sys.stderr)
    return 0


def _leave_process_group() -> None:
    """Under torchrun, leave the process group before the process ends: gloo's threads, left
    running at exit, abort a rank now and then ("terminate called without an active exception")."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()

