from __future__ import annotations

from streamproc.curate.job import FeaturesJob
from streamproc.io.writer import check_rows_output
from streamproc.cli.common import add_input_args, add_rows_output, check_rejects, finish, input_from, rejects_beside, say
from streamproc.cli.manners import RAW
from streamproc.cli import COMMANDS

EXAMPLES = """examples:
  streamproc features -o features.parquet                      the built-in sample
  streamproc features data/ -o features.parquet --tokenizer    with token counts (shipped Qwen2.5 tokenizer)
  duckdb -c "SELECT source, avg(failed_responses) FROM 'features.parquet' GROUP BY 1"
"""


def add(sub) -> None:
    p = sub.add_parser(
        "features", help=COMMANDS["features"],
        description="Write one row per trace with the quality features `filter --where` reads: calls, parallel "
        "width, failed responses by class, unrecovered failures, schema problems, reasoning and answer lengths. "
        "Every column is defined in docs/curate.md.",
        epilog=EXAMPLES, formatter_class=RAW,
    )
    add_input_args(p)
    add_rows_output(p)
    p.add_argument(
        "--tokenizer", metavar="TOK", nargs="?", const="default",
        help="add tokens, trained_tokens and system_prompt_tokens (alone: the shipped Qwen2.5 tokenizer)",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    check_rows_output(args.output)
    check_rejects(args)
    source = input_from(args)
    with FeaturesJob(args.output, args.tokenizer) as job:
        source.run([job], progress="features")
    n, tally = job.rows, job.tally
    finish(args, source, tally, rejects_beside(args.output))
    say(args, f"wrote {args.output} ({n:,} traces)")
    return 0
