from __future__ import annotations

import sys

from ..synth import CONFIG_CHOICES, configs_of, write
from .common import rows_output


def add(sub) -> None:
    p = sub.add_parser(
        "synth",
        help="write seeded synthetic traces in the dataset's layout (Parquet, or JSONL .gz/.zst), any size",
    )
    p.add_argument("--rows", type=int, required=True, metavar="N")
    p.add_argument("-o", "--output", required=True, metavar="FILE", type=rows_output, help="FILE.parquet, FILE.jsonl, FILE.jsonl.gz or FILE.jsonl.zst")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--config", choices=CONFIG_CHOICES, default="both",
        help="which config's profile; both (default) interleaves them in the card's proportion",
    )
    p.add_argument("--row-group", type=int, default=128, metavar="ROWS", help="Parquet rows per row group (default 128)")
    p.set_defaults(func=run)


def run(args) -> int:
    try:
        size = write(args.output, args.rows, seed=args.seed, configs=configs_of(args.config), row_group=args.row_group)
    except ValueError as e:
        print(f"streamproc synth: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.rows:,} rows, {size / 1e6:,.1f} MB to {args.output}")
    return 0
