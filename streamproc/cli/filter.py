from __future__ import annotations

import sys

import orjson

from streamproc.curate.job import filter_job
from streamproc.io.files import write_json
from streamproc.cli.common import add_curate_args, add_input_args, curator_from, finish, rejects_beside, run_jobs, say
from streamproc.cli.manners import RAW
from streamproc.cli import COMMANDS

EXAMPLES = """examples:
  streamproc filter data/ --preset clean -o clean.parquet
  streamproc filter data/ --where "failed_responses = 0 AND tool_calls >= 3" --dedup near -o kept.jsonl.zst
  streamproc filter data/ --preset strict --removed removed.jsonl -o strict.parquet
"""


def add(sub) -> None:
    p = sub.add_parser(
        "filter", help=COMMANDS["filter"],
        description="Write the rows that meet the conditions, unchanged and in input order, and an accounting "
        "summary (OUT.summary.json). Columns for --where: `streamproc features`, or docs/curate.md.",
        epilog=EXAMPLES, formatter_class=RAW,
    )
    add_input_args(p)
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="OUT.parquet, OUT.jsonl or OUT.jsonl.zst")
    add_curate_args(p)
    p.add_argument("--removed", metavar="FILE", help="also write each removed row, with a removed_reason column (.jsonl, .jsonl.zst or .parquet)")
    p.add_argument(
        "--tokenizer", metavar="TOK", nargs="?", const="default",
        help="add tokens, trained_tokens and system_prompt_tokens to the columns --where can use (alone: the shipped Qwen2.5 tokenizer)",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    curator = curator_from(args, tokens=bool(args.tokenizer))
    if curator is None:
        print("streamproc filter: error: give --where, --preset or --dedup", file=sys.stderr)
        return 2
    with filter_job(args.output, curator, args.removed, args.tokenizer) as job:
        run_jobs(args, [job], progress="filter")
    doc, tally = job.summary(), job.tally
    summary = f"{args.output}.summary.json"
    write_json(summary, doc)
    print(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
    finish(args, tally, rejects_beside(args.output))
    say(args, f"wrote {args.output} ({doc['kept']:,} of {doc['read']:,} rows) and {summary}")
    return 0
