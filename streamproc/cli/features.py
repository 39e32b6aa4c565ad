from __future__ import annotations

import sys

from ..curate import features_to_file
from .common import add_input_args, finish, shards_from


def add(sub) -> None:
    p = sub.add_parser(
        "features",
        help="one row of quality features per trace (calls, failures, schema problems, lengths) as Parquet, for SQL or dataframes",
    )
    add_input_args(p)
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="OUT.parquet, or OUT.jsonl")
    p.add_argument(
        "--tokenizer", metavar="TOK", nargs="?", const="default",
        help="add tokens, trained_tokens and system_prompt_tokens (alone: the shipped Qwen2.5 tokenizer)",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    n, tally = features_to_file(shards_from(args), args.output, tokenizer=args.tokenizer, workers=args.workers, on_error=args.on_error)
    finish(args, tally, f"{args.output}.rejects.jsonl")
    print(f"wrote {args.output} ({n:,} traces)", file=sys.stderr)
    return 0
