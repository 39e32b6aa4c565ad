from __future__ import annotations

import sys

import orjson

from streamproc.curate.job import FilterJob
from streamproc.io.files import to_stdout, write_json
from streamproc.io.writer import check_rows_output
from streamproc.cli.common import add_curate_args, add_input_args, add_rows_output, check_rejects, curator_from, finish, input_from, rejects_beside, say
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
    add_rows_output(p)
    add_curate_args(p)
    p.add_argument("--removed", metavar="FILE", help="also write each removed row, with a removed_reason column (.jsonl (.gz, .zst) or .parquet)")
    p.add_argument("--with-source", action="store_true", help="a source column on every row: the input's, else the file name or --source (default: only where the input has one)")
    p.add_argument(
        "--tokenizer", metavar="TOK", nargs="?", const="default",
        help="add tokens, trained_tokens and system_prompt_tokens to the columns --where can use (alone: the shipped Qwen2.5 tokenizer)",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    check_rows_output(args.output)
    if args.removed:
        check_rows_output(args.removed)
    check_rejects(args)
    curator = curator_from(args, tokens=bool(args.tokenizer))
    if curator is None:
        print("streamproc filter: error: give --where, --preset or --dedup", file=sys.stderr)
        return 2
    source = input_from(args)
    with FilterJob(args.output, curator, args.removed, args.tokenizer, with_source=args.with_source) as job:
        source.run([job], progress="filter")
    doc, tally = job.summary(), job.tally
    finish(args, source, tally, rejects_beside(args.output))
    if to_stdout(args.output):  # stdout is the rows alone: the summary is the count line
        say(args, f"wrote {doc['kept']:,} of {doc['read']:,} rows to stdout")
        return 0
    summary = f"{args.output}.summary.json"
    write_json(summary, doc)
    print(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
    say(args, f"wrote {args.output} ({doc['kept']:,} of {doc['read']:,} rows) and {summary}")
    return 0
