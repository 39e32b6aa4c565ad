"""`streamproc run`: the main job, end to end, on the built-in sample unless told otherwise.

source -> parse (DIR/parsed.jsonl) -> packed shards (DIR/packed/) -> stats report (DIR/report/).
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..fileio import write_rejects
from ..metrics import collect_with_browser
from ..pipeline import parse_to_file
from ..prepare import pack_to_dir
from ..report import write_report
from ..terminal import print_tables
from .common import add_input_args, finish, shards_from
from .manners import RAW
from .pack import add_pack_args, no_training_data, pack_options, print_counts

EXAMPLES = """examples:
  streamproc run                              the built-in sample into ./out
  streamproc run data/*.parquet -o out/ --seq-len 4096
"""


def add(sub) -> None:
    p = sub.add_parser(
        "run", help="the whole job: parse, stats report and packed shards (default: the built-in sample)",
        description="The whole job in one command: DIR/parsed.jsonl (one record per trace), DIR/report/ "
        "(stats, plots and the trace browser index.html) and DIR/packed/ (training shards and manifest.json).",
        epilog=EXAMPLES, formatter_class=RAW,
    )
    p.add_argument("-o", "--output", default="out", metavar="DIR", help="output directory (default: ./out)")
    add_pack_args(p)
    add_input_args(p, view=True)
    p.set_defaults(func=run)


def run(args) -> int:
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    shards = shards_from(args)

    parsed = out / "parsed.jsonl"
    tally = parse_to_file(shards, parsed, workers=args.workers, on_error=args.on_error)
    finish(args, tally, str(out / "rejects.jsonl"))
    print(f"[1/3] parsed traces: {parsed}", file=sys.stderr)

    packed = pack_to_dir(shards, out / "packed", pack_options(args), workers=args.workers, on_error=args.on_error, restart=args.restart)
    if packed.tally.rejected:  # the bad rows above, plus any the chat template could not render
        write_rejects(out / "packed" / "rejects.jsonl", packed.tally.rejected)
    print_counts(packed)
    print(f"[2/3] packed shards: {out / 'packed'} (manifest.json)", file=sys.stderr)

    # After the pack, so the report's training-data section reads what it wrote.
    stats, browser, stally = collect_with_browser(shards, args.workers, args.on_error)
    print("writing the report: plots and pages ...", file=sys.stderr)
    write_report(stats, out / "report", stally, 10, browser, packed=out / "packed")
    print_tables(stats, top=10)
    print(f"[3/3] stats report: {out / 'report'}/index.html (summary.md, stats.json, plots)", file=sys.stderr)
    return no_training_data(packed)
