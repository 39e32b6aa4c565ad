from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from streamproc.prepare.chat import TemplateError
from streamproc.prepare.mask import DEFAULT_TOKENIZER_NAME, OVERFLOWS, MaskOptions
from streamproc.cli.argtypes import fraction, positive_int
from streamproc.cli.common import add_input_args, check_rejects, finish, input_from, say
from streamproc.cli.manners import RAW
from streamproc.cli import COMMANDS

EXAMPLES = """examples:
  streamproc pack -o packed/                                  the built-in sample, shipped Qwen2.5 tokenizer
  streamproc pack data/ -o packed/ --seq-len 4096 --eval-fraction 0.05
  streamproc pack data/ -o packed/ --tokenizer Qwen/Qwen3-8B --no-reasoning-loss
"""


if TYPE_CHECKING:  # imported where used: `pack --help` needs neither numba nor the engines
    from streamproc.prepare.job import PackOptions, PackResult


def add(sub) -> None:
    p = sub.add_parser(
        "pack", help=COMMANDS["pack"],
        description="Render each trace with the chat template, tokenize it, mark the tokens to train on (assistant "
        "reasoning, calls, answers) and pack the sequences into rows of --seq-len tokens: Arrow shards and a "
        "manifest.json that `streamproc train` reads. An interrupted run resumes.",
        epilog=EXAMPLES, formatter_class=RAW,
    )
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="output directory")
    add_pack_args(p)
    add_input_args(p, view=True)
    p.set_defaults(func=run)


def add_pack_args(p) -> None:
    """Tokenizer, masking and packing options (shared with `streamproc run`)."""
    p.add_argument("--tokenizer", default=DEFAULT_TOKENIZER_NAME, metavar="NAME_OR_DIR", help="Hub id or local directory (default: %(default)s, shipped, works offline)")
    p.add_argument("--seq-len", type=positive_int, default=8192, metavar="N", help="tokens per packed row (default %(default)s)")
    p.add_argument("--row-len", type=positive_int, metavar="N", help="tokens per packed row, at least --seq-len (default: --seq-len); with --share-prefix, longer rows share a prompt among more sequences")
    p.add_argument("--share-prefix", action="store_true", help="each row holds once the whole untrained turns its sequences begin with (the system prompt, and the task and early turns that samples of a trace share), followed by the rest of each (docs/shared-prefix.md)")
    p.add_argument("--overflow", choices=OVERFLOWS, default="split", help="a conversation longer than --seq-len: split into samples that each keep the system prompt, the task and the most recent turns that fit (default), truncate, or drop")
    p.add_argument("--last-turn-only", action="store_true", help="train on the last assistant turn only")
    p.add_argument("--no-reasoning-loss", action="store_true", help="no loss on <think> blocks")
    p.add_argument("--no-tool-call-loss", action="store_true", help="no loss on assistant turns that call a tool")
    p.add_argument("--chat-template", default="auto", metavar="auto|chatml|FILE", help="auto: the tokenizer's (refused if it alters content); chatml: a faithful ChatML; or a Jinja file")
    p.add_argument("--eval-fraction", type=fraction, default=0.0, metavar="F", help="hold out this share of traces (by id hash) as eval-*.arrow shards, 0 <= F < 1 (default %(default)s)")
    p.add_argument("--add-tokens", default="", metavar="T1,T2,...", help='add these as single special tokens if the tokenizer lacks them, e.g. "<think>,</think>" (the extended tokenizer is saved in DIR/tokenizer)')
    p.add_argument("--buffer-size", type=positive_int, metavar="N", help="pack sequences only with those of nearby input splits: groups of consecutive splits holding N sequences (default: all of them together, the tightest; memory does not depend on it)")
    p.add_argument("--shard-rows", type=positive_int, metavar="N", help="packed rows per shard (default: as many as hold 16,777,216 tokens, 2048 at --row-len 8192, so that a shard's memory does not grow with the row length)")
    p.add_argument("--restart", action="store_true", help="discard an unfinished pack run in the output directory instead of resuming it")


def pack_options(args) -> PackOptions:
    from streamproc.prepare.job import PackError, PackOptions
    from streamproc.prepare.pack import check_row_len

    try:
        check_row_len(args.row_len, args.seq_len, ("--row-len", "--seq-len"))
    except ValueError as e:
        raise PackError(str(e)) from None
    template = args.chat_template
    if template not in ("auto", "chatml"):
        try:
            template = Path(template).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise TemplateError(f"--chat-template {template}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
    mask = MaskOptions(
        scope="last" if args.last_turn_only else "all",
        train_reasoning=not args.no_reasoning_loss,
        train_tool_calls=not args.no_tool_call_loss,
        overflow=args.overflow,
        chat_template=template,
    )
    return PackOptions(
        seq_len=args.seq_len,
        tokenizer=args.tokenizer,
        mask=mask,
        buffer_size=args.buffer_size,
        shard_rows=args.shard_rows,
        eval_fraction=args.eval_fraction,
        add_tokens=tuple(t for t in args.add_tokens.split(",") if t),
        row_len=args.row_len,
        share_prefix=args.share_prefix,
    )


def run(args) -> int:
    from streamproc.io.files import check_output_dir
    from streamproc.prepare.job import PackJob
    from streamproc.run.runner import plan_key

    check_output_dir(args.output)
    check_rejects(args)
    options = pack_options(args)
    source = input_from(args)
    with PackJob(args.output, options, plan_key(source.splits, source.view), on_error=args.on_error, restart=args.restart) as job:
        if job.resuming():
            print(job.resuming(), file=sys.stderr)
        source.run([job], progress="pack")
        res = job.finish()
    finish(args, source, res.tally, str(Path(args.output) / "rejects.jsonl"))
    print_counts(res)
    say(args, f"wrote {args.output}")
    return no_training_data(res)


def no_training_data(res: PackResult) -> int:
    """1, saying why and what would fit, when the run wrote no training data; else 0."""
    if not res.nothing_written:
        return 0
    print(f"streamproc: error: {res.nothing_written}", file=sys.stderr)
    return 1


def print_counts(res: PackResult) -> None:
    seq_len = res.manifest["seq_len"]
    row_len = res.manifest.get("row_len", seq_len)
    for split, c in res.manifest["counts"].items():
        if not isinstance(c, dict) or not (c["traces"] or c["dropped"]):
            continue
        line = f"{split}: {c['traces']:,} traces -> {c['sequences']:,} sequences, {c['tokens']:,} tokens ({c['trainable']:,} trained)"
        if c["rows"]:
            line += f" in {c['rows']:,} rows of {row_len}, packing efficiency {c['packing_efficiency']:.2%}"
        if c.get("turns_trained"):
            line += f"; {c['turns_trained']:,} turns trained, {c['turns_shortened']:,} of them with shortened history"
            if c.get("turns_untrained"):
                line += f", {c['turns_untrained']:,} not trained (too long with their context: dropped.jsonl)"
        if c.get("tokens_per_trained_token"):
            line += f"; {c['tokens_per_trained_token']:.1f} tokens written per trained token"
        if res.manifest.get("share_prefix"):
            saved = c.get("prefix_tokens_saved", 0)
            whole = c.get("sequence_tokens") or 1
            line += f"; sharing prefixes saved {saved:,} tokens ({saved / whole:.0%} of {whole:,})"
        elif c.get("system_prompt_tokens") and c["tokens"]:
            share = c["system_prompt_tokens"] / c["tokens"]
            line += f"; {share:.0%} of the tokens are system prompts repeated per sequence (--share-prefix writes each once per row)"
        if c["dropped"] or c["tokens_cut"]:
            line += f"; {c['dropped']:,} traces dropped and {c['tokens_cut']:,} tokens cut to fit {seq_len} (--overflow)"
        print(line, file=sys.stderr)
        cut = c["tokens_cut"] / max(c.get("sequence_tokens", c["tokens"]) + c["tokens_cut"], 1)
        if cut > 0.05:  # most often: a system prompt that leaves a sample little room for a turn
            print(f"  note: {cut:.0%} of the {split} text was cut; a larger --seq-len keeps more of it", file=sys.stderr)
