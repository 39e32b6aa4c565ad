"""`streamproc run`: the main job, end to end, on the built-in sample unless told otherwise."""

from __future__ import annotations

import sys
from pathlib import Path

from ..pipeline import parse_to_file
from .common import add_input_args, finish, shards_from


def add(sub) -> None:
    p = sub.add_parser("run", help="the whole job: parse, stats report and packed shards (default: the built-in sample)")
    add_input_args(p)
    p.add_argument("-o", "--output", default="out", metavar="DIR", help="output directory (default: ./out)")
    p.set_defaults(func=run)


def run(args) -> int:
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    shards = shards_from(args)
    parsed = out / "parsed.jsonl"
    tally = parse_to_file(shards, parsed, workers=args.workers, on_error=args.on_error)
    finish(args, tally, str(out / "rejects.jsonl"))
    print(f"parsed traces: {parsed}", file=sys.stderr)
    return 0
