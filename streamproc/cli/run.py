"""`streamproc run`: the main job, end to end, on the built-in sample unless told otherwise."""

from __future__ import annotations

import sys
from pathlib import Path

from ..fileio import write_rejects
from ..pipeline import parse_to_file
from ..prepare import pack_to_dir
from .common import add_input_args, finish, shards_from
from .pack import add_pack_args, pack_options, print_counts


def add(sub) -> None:
    p = sub.add_parser("run", help="the whole job: parse, stats report and packed shards (default: the built-in sample)")
    add_input_args(p)
    p.add_argument("-o", "--output", default="out", metavar="DIR", help="output directory (default: ./out)")
    add_pack_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    shards = shards_from(args)
    parsed = out / "parsed.jsonl"
    tally = parse_to_file(shards, parsed, workers=args.workers, on_error=args.on_error)
    finish(args, tally, str(out / "rejects.jsonl"))
    print(f"parsed traces: {parsed}", file=sys.stderr)
    packed = pack_to_dir(shards, out / "packed", pack_options(args), workers=args.workers, on_error=args.on_error, restart=args.restart)
    if packed.tally.rejected:  # the bad rows above, plus any the chat template could not render
        write_rejects(out / "packed" / "rejects.jsonl", packed.tally.rejected)
    print_counts(packed)
    print(f"packed shards: {out / 'packed'}", file=sys.stderr)
    return 0
