from __future__ import annotations

from ..parse_job import parse_to_file
from ..fileio import check_output_file
from .common import add_input_args, check_rejects, finish, shards_from


def add(sub) -> None:
    p = sub.add_parser("parse", help="parse traces into one structured record per trace (JSONL or Parquet)")
    add_input_args(p)
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="OUT.jsonl, or OUT.parquet")
    p.set_defaults(func=run)


def run(args) -> int:
    check_output_file(args.output)
    check_rejects(args)
    tally = parse_to_file(shards_from(args), args.output, workers=args.workers, on_error=args.on_error)
    finish(args, tally, f"{args.output}.rejects.jsonl")
    print(f"wrote {args.output}")
    return 0
