from __future__ import annotations

from ..pipeline import parse_to_file
from .common import add_input_args, finish, rows_output, shards_from


def add(sub) -> None:
    p = sub.add_parser("parse", help="parse traces into one structured record per trace (JSONL or Parquet)")
    add_input_args(p)
    p.add_argument("-o", "--output", required=True, metavar="OUT", type=rows_output, help="OUT.jsonl (.gz, .zst) or OUT.parquet")
    p.set_defaults(func=run)


def run(args) -> int:
    tally = parse_to_file(shards_from(args), args.output, workers=args.workers, on_error=args.on_error)
    finish(args, tally, f"{args.output}.rejects.jsonl")
    print(f"wrote {args.output}")
    return 0
