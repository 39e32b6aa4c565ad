from __future__ import annotations

import sys
from pathlib import Path

from .. import engine_ray
from ..fileio import write_json
from ..metrics import collect, collect_with_browser
from ..report import stats_document, summary_text, write_report
from .common import add_engine_args, add_input_args, finish, ray_inputs, shards_from


def add(sub) -> None:
    p = sub.add_parser(
        "stats",
        help="agent-behaviour metrics: tools, parallel calls, failures, reasoning length, data quality, per source",
    )
    add_input_args(p, view=True)
    add_engine_args(p)
    p.add_argument("--json", metavar="OUT.json", help="write every figure as JSON (keys documented in the README)")
    p.add_argument("--report", metavar="DIR", help="write DIR/*.png plots, DIR/summary.md, DIR/stats.json and the viewer page DIR/index.html")
    p.add_argument(
        "--tokenizer", metavar="TOK", nargs="?", const="default",
        help="also count reasoning in tokens: a tokenizer directory or name; alone: the shipped Qwen2.5 tokenizer",
    )
    p.add_argument("--no-browser", action="store_true", help="--report without index.html (its trace browser)")
    p.add_argument("--top", type=int, default=10, metavar="N", help="tools listed in the summary (default 10)")
    p.set_defaults(func=run)


def run(args) -> int:
    browser = None
    with_browser = bool(args.report) and not args.no_browser
    if args.engine == "ray":  # Ray reads the inputs itself
        if with_browser:
            stats, browser, tally = engine_ray.collect_with_browser(**ray_inputs(args), tokenizer=args.tokenizer)
        else:
            stats, tally = engine_ray.collect(**ray_inputs(args), tokenizer=args.tokenizer)
    elif with_browser:
        stats, browser, tally = collect_with_browser(shards_from(args), args.workers, args.on_error, args.tokenizer)
    else:
        stats, tally = collect(shards_from(args), args.workers, args.on_error, args.tokenizer)
    print(summary_text(stats, top=args.top))
    if args.json:
        write_json(args.json, stats_document(stats, tally))
        print(f"wrote {args.json}", file=sys.stderr)
    if args.report:
        write_report(stats, args.report, tally, args.top, browser)
        print(f"wrote {args.report}/ (summary.md, stats.json, plots{'' if browser is None else ', index.html'})", file=sys.stderr)
    where = args.json or (str(Path(args.report) / "stats") if args.report else "stats")
    finish(args, tally, f"{where}.rejects.jsonl")
    return 0
