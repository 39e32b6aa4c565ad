"""`streamproc run`: the main job, end to end, on the built-in sample unless told otherwise.

source -> parse (DIR/parsed.jsonl) | packed shards (DIR/packed/) | stats report (DIR/report/), all
three from one pass over the input: each row is read and parsed once.
"""

from __future__ import annotations

import sys
from pathlib import Path

from streamproc.io.files import check_output_dir, write_rejects
from streamproc.prepare.job import PackJob
from streamproc.parse.job import ParseJob
from streamproc.views.report import write_report
from streamproc.run.runner import plan_key
from streamproc.analyze.job import StatsJob
from streamproc.views.terminal import print_tables
from streamproc.cli.common import add_input_args, check_rejects, finish, input_from
from streamproc.cli.manners import RAW
from streamproc.cli.pack import add_pack_args, no_training_data, pack_options, print_counts
from streamproc.cli import COMMANDS

EXAMPLES = """examples:
  streamproc run                              the built-in sample into ./out
  streamproc run data/*.parquet -o out/ --seq-len 4096
"""


def add(sub) -> None:
    p = sub.add_parser(
        "run", help=COMMANDS["run"],
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
    check_output_dir(out)
    check_rejects(args)
    options = pack_options(args)
    source = input_from(args)
    out.mkdir(parents=True, exist_ok=True)
    parsed = out / "parsed.jsonl"
    with ParseJob(parsed) as parse, PackJob(out / "packed", options, plan_key(source.splits, source.view), on_error=args.on_error, restart=args.restart) as pack:
        if pack.resuming():  # the packed splits are not masked again; parse and stats read them all
            print(pack.resuming(), file=sys.stderr)
        stats = StatsJob(browser=True, spill_dir=str(out))  # trace bodies wait on disk beside the outputs
        source.run([parse, stats, pack], progress="run")
        packed = pack.finish()
    finish(args, source, parse.tally, str(out / "rejects.jsonl"))
    print(f"[1/3] parsed traces: {parsed}", file=sys.stderr)

    if packed.tally.rejected:  # the bad rows above, plus any the chat template could not render
        write_rejects(out / "packed" / "rejects.jsonl", packed.tally.rejected)
    print_counts(packed)
    print(f"[2/3] packed shards: {out / 'packed'} (manifest.json)", file=sys.stderr)

    # The report's training-data section reads what the pack wrote.
    stats_, browser, stally = stats.result()
    print("writing the report: plots and pages ...", file=sys.stderr)
    write_report(stats_, out / "report", stally, 10, browser, packed=out / "packed")
    print_tables(stats_, top=10)
    print(f"[3/3] stats report: {out / 'report'}/index.html (summary.md, stats.json, plots)", file=sys.stderr)
    return no_training_data(packed)
