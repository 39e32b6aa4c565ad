from __future__ import annotations

from streamproc.io.files import to_stdout
from streamproc.io.writer import check_rows_output
from streamproc.parse.job import ParseJob
from streamproc.cli.common import add_input_args, add_rows_output, check_rejects, finish, input_from, rejects_beside, say
from streamproc.cli.manners import RAW
from streamproc.cli import COMMANDS

EXAMPLES = """examples:
  streamproc parse -o parsed.jsonl                  the built-in sample, one record per trace
  streamproc parse data/*.parquet -o parsed.parquet
  streamproc parse traces.jsonl.zst -o - | jq -r .id   records to stdout (JSONL), notes to stderr
"""


def add(sub) -> None:
    p = sub.add_parser(
        "parse", help=COMMANDS["parse"],
        description="Parse each trace into one record: turns with their reasoning, tool calls (arguments decoded) "
        "and tool responses (content decoded, matched to their call). Bad rows are counted and set aside.",
        epilog=EXAMPLES, formatter_class=RAW,
    )
    add_rows_output(p)
    add_input_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    check_rows_output(args.output)
    check_rejects(args)
    source = input_from(args)
    with ParseJob(args.output) as job:
        source.run([job], progress="parse")
    finish(args, source, job.tally, rejects_beside(args.output))
    if not to_stdout(args.output):
        say(args, f"wrote {job.tally.parsed:,} records to {args.output}")
    return 0
