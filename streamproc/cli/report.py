from __future__ import annotations

import sys

from .. import report
from ..metrics import collect_with_browser
from ..webview import write_page
from .common import add_input_args, finish, shards_from


def add(sub) -> None:
    p = sub.add_parser("report", help="one self-contained HTML page: summary, plots and a browser of every trace")
    add_input_args(p, view=True)
    p.add_argument("-o", "--output", required=True, metavar="FILE.html")
    p.add_argument("--title", default="streamproc report")
    p.add_argument("--top", type=int, default=10, metavar="N", help="tools listed in the summary (default 10)")
    p.set_defaults(func=run)


def run(args) -> int:
    stats, browser, tally = collect_with_browser(shards_from(args), args.workers, args.on_error)
    plots = report.pngs(stats, dpi=100)
    write_page(args.output, browser, tables=report.tables(stats, args.top), plots=plots, note=tally.summary(), title=args.title)
    finish(args, tally, f"{args.output}.rejects.jsonl")
    print(f"wrote {args.output} ({len(browser.entries):,} traces)", file=sys.stderr)
    return 0
