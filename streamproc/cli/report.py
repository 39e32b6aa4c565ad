from __future__ import annotations

from streamproc.views import report
from pathlib import Path

from streamproc.io.files import check_output_dir, check_output_file
from streamproc.analyze.job import StatsJob
from streamproc.views.page import FOLDER_FROM, write_page
from streamproc.cli.argtypes import positive_int
from streamproc.cli.common import add_input_args, check_rejects, finish, input_from, rejects_beside, say
from streamproc.cli.manners import RAW
from streamproc.cli import COMMANDS

EXAMPLES = """examples:
  streamproc report -o report.html                        the built-in sample
  streamproc report data/ -o report.html --title "March traces"
  streamproc report big/ -o big-report                    a folder: big-report/index.html opens at any size
"""


def add(sub) -> None:
    p = sub.add_parser(
        "report", help=COMMANDS["report"],
        description="Write one HTML file that opens anywhere without a server: the trace browser (filter by "
        "source, category, tool, failure), the summary tables and the plots. Given a folder (-o DIR), write "
        "DIR/index.html with the trace list and bodies in files beside it, read as needed: it opens as fast "
        "at 150,000 traces as at 100 (copy the whole folder to share it).",
        epilog=EXAMPLES, formatter_class=RAW,
    )
    p.add_argument("-o", "--output", required=True, metavar="FILE.html|DIR", help="the page to write (a name ending in .html), or the folder")
    p.add_argument("--title", default="streamproc report", help="the page's title (default: %(default)s)")
    p.add_argument("--top", type=positive_int, default=10, metavar="N", help="tools listed in the summary (default %(default)s)")
    add_input_args(p, view=True)
    p.set_defaults(func=run)


def is_folder(output: str) -> bool:
    return not output.lower().endswith((".html", ".htm"))


def run(args) -> int:
    (check_output_dir if is_folder(args.output) else check_output_file)(args.output)
    check_rejects(args)
    source = input_from(args)
    job = StatsJob(browser=True)
    source.run([job], progress="stats")
    stats, browser, tally = job.result()
    say(args, f"drawing plots for {len(browser.entries):,} traces ...")
    plots = report.pngs(stats, dpi=100)
    folder = is_folder(args.output)
    if folder:
        Path(args.output).mkdir(parents=True, exist_ok=True)
    page = write_page(args.output, browser, tables=report.tables(stats, args.top), plots=plots, note=tally.summary(), title=args.title, folder=folder)
    finish(args, source, tally, rejects_beside(str(page)))
    say(args, f"wrote {page} ({len(browser.entries):,} traces)")
    if not folder and len(browser.entries) >= FOLDER_FROM:
        say(args, f"a page of {len(browser.entries):,} traces opens slowly: -o DIR writes a folder that opens at once")
    return 0
