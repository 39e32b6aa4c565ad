from __future__ import annotations

import sys
from pathlib import Path

from ..fileio import check_output_dir, check_output_file, write_json
from ..report import stats_document, summary_text, write_report
from ..stats_job import StatsJob
from .common import add_engine_args, add_input_args, check_rejects, finish, run_jobs


def add(sub) -> None:
    p = sub.add_parser(
        "stats",
        help="agent-behaviour metrics: tools, parallel calls, failures, reasoning length, data quality, per source",
    )
    add_input_args(p)
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
    if args.json:
        check_output_file(args.json)
    if args.report:
        check_output_dir(args.report)
    check_rejects(args)
    job = StatsJob(args.tokenizer, browser=bool(args.report) and not args.no_browser)
    run_jobs(args, [job], progress="stats")
    stats, browser, tally = job.result()
    print(summary_text(stats, top=args.top))
    if args.json:
        write_json(args.json, stats_document(stats, tally))
        print(f"wrote {args.json}", file=sys.stderr)
    if args.report:
        write_report(stats, args.report, tally, args.top, browser)
        print(f"wrote {args.report}/ (summary.md, stats.json, plots{'' if browser is None else ', index.html'})", file=sys.stderr)
    where = args.json or (str(Path(args.report) / "stats") if args.report else None)
    finish(args, tally, f"{where}.rejects.jsonl" if where else None)
    return 0
