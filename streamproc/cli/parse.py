from __future__ import annotations

from streamproc.io.files import check_output_file
from streamproc.parse.job import parse_to_file
from streamproc.cli.common import add_input_args, add_rows_output, check_rejects, engine_from, finish, rejects_beside, say, shards_from
from streamproc.cli.manners import RAW, output_path, to_stdout
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
    if not to_stdout(args.output):
        check_output_file(args.output)
    check_rejects(args)
    with output_path(args.output) as out:
        tally = parse_to_file(shards_from(args), out, workers=engine_from(args), on_error=args.on_error)
    finish(args, tally, rejects_beside(args.output))
    if not to_stdout(args.output):
        say(args, f"wrote {tally.parsed:,} records to {args.output}")
    return 0
