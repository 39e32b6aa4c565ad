from __future__ import annotations

from streamproc import benchmarks
from streamproc.io.files import output_path, to_stdout, write_json
from streamproc.cli.common import add_input_args, say
from streamproc.cli.manners import RAW
from streamproc.run.progress import bar
from streamproc.cli import COMMANDS

EXAMPLES = """examples:
  streamproc bench --quick                         a smoke run on the first 300 rows of the built-in sample
  streamproc bench data/ --section parse --section stats --json bench.json
"""


def add(sub) -> None:
    p = sub.add_parser(
        "bench", help=COMMANDS["bench"],
        description="Measure each stage against the baseline it replaces, in the same run on the same data: "
        "parsing against a regex parser, masking against the per-message recipe, packing against one sequence "
        "per row. With no INPUT: the built-in sample.",
        epilog=EXAMPLES, formatter_class=RAW,
    )
    p.add_argument(
        "--section", action="append", choices=benchmarks.SECTIONS, metavar="NAME",
        help=f"run only this section (repeatable): {', '.join(benchmarks.SECTIONS)}; default: all",
    )
    p.add_argument("--quick", action="store_true", help="fewer repetitions on the first 300 rows: a smoke run")
    p.add_argument("--json", metavar="OUT", help="also write the results as a JSON list to OUT (-: to stdout, instead of the table)")
    add_input_args(p, engine=False)
    p.set_defaults(func=run)


def run(args) -> int:
    ctx = benchmarks.context(
        args.inputs, quick=args.quick, workers=args.workers,
        dataset=args.dataset, configs=args.config, split=args.split, source=args.source, limit=args.limit,
    )
    sections = args.section or benchmarks.SECTIONS
    results = []
    with bar("bench", len(sections), "sections") as progress:
        for name in sections:
            progress.set_description(f"bench {name}")
            results += benchmarks.run([name], ctx)
            progress.update()
    if not to_stdout(args.json):
        print(benchmarks.format_table(results))
    if ctx.rejected:
        say(args, f"{len(ctx.rejected):,} bad rows skipped (first: {ctx.rejected[0]})")
    if args.json:
        with output_path(args.json, ".json") as out:
            write_json(out, benchmarks.to_json(results))
        if not to_stdout(args.json):
            say(args, f"wrote {args.json}")
    return 0
