"""`streamproc run`: the main job, end to end, on the built-in sample unless told otherwise.

source -> parse (DIR/parsed.jsonl) | stats report (DIR/report/) | packed shards (DIR/packed/), all
three from one pass over the input: each row is read and parsed once.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..fileio import check_output_dir, write_rejects
from ..parse_job import ParseJob
from ..pack_job import PackJob
from ..report import summary_text, write_report
from ..runner import run_jobs
from ..stats_job import StatsJob
from .common import add_input_args, check_rejects, finish, shards_from
from .pack import add_pack_args, pack_options, print_counts


def add(sub) -> None:
    p = sub.add_parser("run", help="the whole job: parse, stats report and packed shards (default: the built-in sample)")
    add_input_args(p)
    p.add_argument("-o", "--output", default="out", metavar="DIR", help="output directory (default: ./out)")
    add_pack_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    out = Path(args.output)
    check_output_dir(out)
    check_rejects(args)
    options = pack_options(args)
    splits = shards_from(args)
    out.mkdir(parents=True, exist_ok=True)
    parsed = out / "parsed.jsonl"
    with ParseJob(parsed) as parse, PackJob(out / "packed", options, [repr(s) for s in splits], on_error=args.on_error, restart=args.restart) as pack:
        stats = StatsJob(browser=True)
        run_jobs(splits, [parse, stats, pack], workers=args.workers, on_error=args.on_error, progress="run")
        packed = pack.finish()
    finish(args, parse.tally, str(out / "rejects.jsonl"))
    print(f"[1/3] parsed traces: {parsed}", file=sys.stderr)

    stats_, browser, stally = stats.result()
    write_report(stats_, out / "report", stally, 10, browser)
    print(summary_text(stats_, top=10))
    print(f"[2/3] stats report: {out / 'report'}/index.html (summary.md, stats.json, plots)", file=sys.stderr)

    if packed.tally.rejected:  # the bad rows above, plus any the chat template could not render
        write_rejects(out / "packed" / "rejects.jsonl", packed.tally.rejected)
    print_counts(packed)
    print(f"[3/3] packed shards: {out / 'packed'} (manifest.json)", file=sys.stderr)
    return 0
