from __future__ import annotations

import sys
from pathlib import Path

from ..fileio import write_json
from ..metrics import collect
from ..report import stats_document, summary_text, write_report
from .common import add_input_args, finish, shards_from


def add(sub) -> None:
    p = sub.add_parser(
        "stats",
        help="agent-behaviour metrics: tools, parallel calls, failures, reasoning length, data quality, per source",
    )
    add_input_args(p)
    p.add_argument("--json", metavar="OUT.json", help="write every figure as JSON (keys documented in the README)")
    p.add_argument("--report", metavar="DIR", help="write DIR/*.png plots, DIR/summary.md and DIR/stats.json")
    p.add_argument(
        "--tokenizer", metavar="TOK",
        help="also count reasoning in tokens: a tokenizer directory, a tokenizer.json, or a model name",
    )
    p.add_argument("--top", type=int, default=10, metavar="N", help="tools listed in the summary (default 10)")
    p.set_defaults(func=run)


def run(args) -> int:
    stats, tally = collect(shards_from(args), args.workers, args.on_error, args.tokenizer)
    print(summary_text(stats, top=args.top))
    if args.json:
        write_json(args.json, stats_document(stats, tally))
        print(f"wrote {args.json}", file=sys.stderr)
    if args.report:
        write_report(stats, args.report, tally, args.top)
        print(f"wrote {args.report}/ (summary.md, stats.json, plots)", file=sys.stderr)
    where = args.json or (str(Path(args.report) / "stats") if args.report else "stats")
    finish(args, tally, f"{where}.rejects.jsonl")
    return 0
