from __future__ import annotations

from .. import benchmarks
from ..fileio import write_json
from .common import add_input_args


def add(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="measure each stage against the baseline it replaces (the guide's code), same run, same data",
        description="Measure each stage against the baseline it replaces, in the same run on the same data. "
        "With no INPUT: the built-in sample.",
    )
    add_input_args(p)
    p.add_argument(
        "--section", action="append", choices=benchmarks.SECTIONS, metavar="NAME",
        help=f"run only this section (repeatable): {', '.join(benchmarks.SECTIONS)}; default: all",
    )
    p.add_argument("--quick", action="store_true", help="fewer repetitions on the first 300 rows: a smoke run")
    p.add_argument("--json", metavar="OUT", help="also write the results as a JSON list to OUT")
    p.set_defaults(func=run)


def run(args) -> int:
    ctx = benchmarks.context(
        args.inputs, quick=args.quick, workers=args.workers,
        dataset=args.dataset, configs=args.config, split=args.split, source=args.source, limit=args.limit,
    )
    results = benchmarks.run(args.section or benchmarks.SECTIONS, ctx)
    print(benchmarks.format_table(results))
    if ctx.rejected:
        print(f"{len(ctx.rejected):,} bad rows skipped (first: {ctx.rejected[0]})")
    if args.json:
        write_json(args.json, benchmarks.to_json(results))
        print(f"wrote {args.json}")
    return 0
