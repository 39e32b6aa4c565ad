from __future__ import annotations

from streamproc.curate.job import features_job
from streamproc.cli.common import add_input_args, finish, rejects_beside, run_jobs, say
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
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="OUT.parquet, or OUT.jsonl")
    p.add_argument(
        "--tokenizer", metavar="TOK", nargs="?", const="default",
        help="add tokens, trained_tokens and system_prompt_tokens (alone: the shipped Qwen2.5 tokenizer)",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    with features_job(args.output, args.tokenizer) as job:
        run_jobs(args, [job], progress="features")
    n, tally = job.rows, job.tally
    finish(args, tally, rejects_beside(args.output))
    say(args, f"wrote {args.output} ({n:,} traces)")
    return 0
