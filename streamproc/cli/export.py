from __future__ import annotations

import sys

from streamproc.prepare.chat import TOOL_FALLBACK
from streamproc.prepare.export import FORMATS, LAYOUTS, TOOL_ROLES, ExportJob
from streamproc.io.files import to_stdout
from streamproc.io.writer import check_rows_output
from streamproc.cli.common import add_input_args, add_rows_output, check_rejects, finish, input_from, rejects_beside, say
from streamproc.cli.manners import RAW
from streamproc.cli import COMMANDS

EXAMPLES = """examples:
  streamproc export -o chats.jsonl                          one conversation per row
  streamproc export data/ --format pairs -o pairs.parquet   one prompt/completion per assistant turn
  streamproc export --tool-role unwrap -o - | head -c 2000  JSONL on stdout
  streamproc export data/ --layout openai -o chat.parquet   messages with tool_calls and a tools column (TRL)
  streamproc export chat.parquet --layout sharegpt -o sharegpt.jsonl   back to from/value with tags
"""


def add(sub) -> None:
    p = sub.add_parser(
        "export", help=COMMANDS["export"],
        description="Write each trace as chat messages (role/content, the form chat templates read), or as "
        "prompt/completion pairs, for training tools other than `streamproc train`.",
        epilog=EXAMPLES, formatter_class=RAW,
    )
    add_rows_output(p)
    p.add_argument("--format", choices=FORMATS, default="messages", help="messages (default): one conversation per row; pairs: one prompt/completion per assistant turn")
    p.add_argument(
        "--tool-role", choices=TOOL_ROLES, default="keep",
        help="keep (default): tool role, text as in the data; unwrap: one tool message per response without <tool_response> tags (for Qwen-style templates); user: user role with --tool-prefix",
    )
    p.add_argument(
        "--layout", choices=LAYOUTS, default="text",
        help="text (default): role/content messages, tool calls as tags in the text; openai: the chat messages layout with "
        "structured tool_calls, tool_call_id, reasoning_content and a tools column; sharegpt: the dataset schema (conversations of from/value)",
    )
    p.add_argument("--tool-prefix", default=TOOL_FALLBACK, help="prefix of tool turns written as user messages (default %(default)r)")
    add_input_args(p, view=True)
    p.set_defaults(func=run)


def run(args) -> int:
    if args.layout == "sharegpt" and args.format == "pairs":
        print("streamproc export: error: --layout sharegpt writes whole conversations: use --format messages", file=sys.stderr)
        return 2
    check_rows_output(args.output)
    check_rejects(args)
    source = input_from(args)
    with ExportJob(args.output, args.format, args.tool_role, args.tool_prefix, args.layout) as job:
        source.run([job], progress="export")
    finish(args, source, job.tally, rejects_beside(args.output))
    where = "stdout" if to_stdout(args.output) else args.output
    say(args, f"wrote {job.writer.rows:,} {args.format} records from {job.tally.parsed:,} traces to {where}")
    return 0
