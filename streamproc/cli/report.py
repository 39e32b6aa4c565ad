from __future__ import annotations

from streamproc.views import report
from streamproc.io.files import check_output_file
from streamproc.analyze.job import StatsJob
from streamproc.views.page import write_page
from streamproc.cli.argtypes import positive_int
from streamproc.cli.common import add_input_args, check_rejects, finish, input_from, rejects_beside, say
from streamproc.cli.manners import RAW
from streamproc.cli import COMMANDS

EXAMPLES = """examples:
  streamproc report -o report.html                        the built-in sample
  streamproc report data/ -o report.html --title "March traces"
"""


def add(sub) -> None:
    p = sub.add_parser(
        "report", help=COMMANDS["report"],
        description="Write one HTML file that opens anywhere without a server: the trace browser (filter by "
        "source, category, tool, failure), the summary tables and the plots.",
        epilog=EXAMPLES, formatter_class=RAW,
    )
    p.add_argument("-o", "--output", required=True, metavar="FILE.html", help="the page to write")
    p.add_argument("--title", default="streamproc report", help="the page's title (default: %(default)s)")
    p.add_argument("--top", type=positive_int, default=10, metavar="N", help="tools listed in the summary (default %(default)s)")
    add_input_args(p, view=True)
    p.set_defaults(func=run)


def run(args) -> int:
    check_output_file(args.output)
    check_rejects(args)
    source = input_from(args)
    job = StatsJob(browser=True)
    source.run([job], progress="stats")
    stats, browser, tally = job.result()
    say(args, f"drawing plots for {len(browser.entries):,} traces ...")
    plots = report.pngs(stats, dpi=100)
    write_page(args.output, browser, tables=report.tables(stats, args.top), plots=plots, note=tally.summary(), title=args.title)
    finish(args, source, tally, rejects_beside(args.output))
    say(args, f"wrote {args.output} ({len(browser.entries):,} traces)")
    return 0
