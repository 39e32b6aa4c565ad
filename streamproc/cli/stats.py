from __future__ import annotations

from pathlib import Path

from streamproc.io.files import check_output_dir, check_output_file, output_path, to_stdout, write_json
from streamproc.views.report import stats_document, write_report
from streamproc.analyze.job import StatsJob
from streamproc.views.terminal import print_tables
from streamproc.cli.argtypes import positive_int
from streamproc.cli.common import add_input_args, check_rejects, finish, input_from, say
from streamproc.cli.manners import RAW
from streamproc.cli import COMMANDS

EXAMPLES = """examples:
  streamproc stats                                  the built-in sample
  streamproc stats data/ --report rep/              plus plots, summary.md and the trace browser rep/index.html
  streamproc stats data/ --json - | jq .by_source   every figure as JSON on stdout
  streamproc stats data/ --tokenizer                reasoning length in tokens too
"""


def add(sub) -> None:
    p = sub.add_parser(
        "stats", help=COMMANDS["stats"],
        description="Count what the agents did: tool calls and their failures by class, parallel calls, reasoning "
        "length, data-quality problems; per source when there are several. Tables on the terminal; "
        "--json and --report write files.",
        epilog=EXAMPLES, formatter_class=RAW,
    )
    p.add_argument("--json", metavar="OUT.json", help="write every figure as JSON (keys documented in docs/stats.md); -: to stdout, instead of the tables")
    p.add_argument("--report", metavar="DIR", help="write DIR/*.png plots, DIR/summary.md, DIR/stats.json and the viewer page DIR/index.html")
    p.add_argument(
        "--tokenizer", metavar="TOK", nargs="?", const="default",
        help="also count reasoning in tokens: a tokenizer directory or name; alone: the shipped Qwen2.5 tokenizer",
    )
    p.add_argument("--no-browser", action="store_true", help="--report without index.html (its trace browser)")
    p.add_argument("--top", type=positive_int, default=10, metavar="N", help="tools listed in the summary (default %(default)s)")
    add_input_args(p, view=True)
    p.set_defaults(func=run)


def run(args) -> int:
    if args.json and not to_stdout(args.json):
        check_output_file(args.json)
    if args.report:
        check_output_dir(args.report)
    check_rejects(args)
    job = StatsJob(args.tokenizer, browser=bool(args.report) and not args.no_browser)
    source = input_from(args)
    source.run([job], progress="stats")
    stats, browser, tally = job.result()
    if not to_stdout(args.json):  # `--json -`: stdout is the JSON alone
        print_tables(stats, args.top)
    if args.json:
        with output_path(args.json, ".json") as out:
            write_json(out, stats_document(stats, tally))
        if not to_stdout(args.json):
            say(args, f"wrote {args.json}")
    if args.report:
        say(args, f"writing {args.report}/: plots and pages ...")
        write_report(stats, args.report, tally, args.top, browser)
        say(args, f"wrote {args.report}/ (summary.md, stats.json, plots{'' if browser is None else ', index.html'})")
    # Rejects go beside a file output; with none (tables, or JSON on stdout) only where --rejects says.
    if args.json and not to_stdout(args.json):
        beside = args.json
    else:
        beside = str(Path(args.report) / "stats") if args.report else None
    finish(args, source, tally, f"{beside}.rejects.jsonl" if beside else None)
    return 0
