from __future__ import annotations

import sys

from streamproc.io.synth import CONFIG_CHOICES, LAYOUTS, configs_of, write
from streamproc.cli.argtypes import count, positive_int
from streamproc.cli.common import say
from streamproc.cli.manners import RAW
from streamproc.run.progress import bar
from streamproc.cli import COMMANDS

EXAMPLES = """examples:
  streamproc synth --rows 10000 -o synth.parquet            same seed, same bytes
  streamproc synth --rows 1000 --config kimi -o kimi.jsonl.zst
  streamproc synth --rows 1000 --layout openai -o chat.parquet   the same traces as chat messages with tool_calls
"""


def add(sub) -> None:
    p = sub.add_parser(
        "synth", help=COMMANDS["synth"],
        description="Write synthetic traces with the dataset's columns and the shapes of the real data (turns, "
        "tool calls, failures, reasoning length), from a seed: for tests and benchmarks at any size.",
        epilog=EXAMPLES, formatter_class=RAW,
    )
    p.add_argument("--rows", type=count, required=True, metavar="N", help="traces to write")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="FILE.parquet, FILE.jsonl, FILE.jsonl.gz or FILE.jsonl.zst")
    p.add_argument("--seed", type=int, default=0, help="random seed: the same seed writes the same rows (default %(default)s)")
    p.add_argument(
        "--config", choices=CONFIG_CHOICES, default="both",
        help="which config's profile; both (default) interleaves them in the card's proportion",
    )
    p.add_argument(
        "--layout", choices=LAYOUTS, default="sharegpt",
        help="sharegpt (default): the dataset's conversations of from/value; openai: the same traces as chat messages "
        "with structured tool_calls, tool_call_id, reasoning_content and a tools column",
    )
    p.add_argument("--row-group", type=positive_int, default=128, metavar="ROWS", help="Parquet rows per row group (default %(default)s)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no closing line")
    p.set_defaults(func=run)


def run(args) -> int:
    with bar("synth", args.rows, "rows") as progress:
        try:
            size = write(args.output, args.rows, seed=args.seed, configs=configs_of(args.config),
                         row_group=args.row_group, on_rows=progress.update, layout=args.layout)
        except ValueError as e:
            print(f"streamproc synth: error: {e}", file=sys.stderr)
            return 2
    say(args, f"wrote {args.rows:,} rows, {size / 1e6:,.1f} MB to {args.output}")
    return 0
