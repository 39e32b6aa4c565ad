from __future__ import annotations

from ..chat import TOOL_FALLBACK
from ..export import FORMATS, TOOL_ROLES, export
from .common import add_input_args, finish, shards_from


def add(sub) -> None:
    p = sub.add_parser("export", help="write normalized chat messages or prompt/completion pairs (JSONL or Parquet)")
    add_input_args(p, view=True)
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="OUT.jsonl, or OUT.parquet")
    p.add_argument("--format", choices=FORMATS, default="messages", help="messages: one conversation per row; pairs: one prompt/completion per assistant turn")
    p.add_argument(
        "--tool-role", choices=TOOL_ROLES, default="keep",
        help="keep: tool role, text as in the data; unwrap: one tool message per response without <tool_response> tags (for Qwen-style templates); user: user role with --tool-prefix",
    )
    p.add_argument("--tool-prefix", default=TOOL_FALLBACK, help="prefix of tool turns written as user messages (default %(default)r)")
    p.set_defaults(func=run)


def run(args) -> int:
    tally = export(
        shards_from(args), args.output, fmt=args.format, tool_role=args.tool_role, tool_prefix=args.tool_prefix,
        workers=args.workers, on_error=args.on_error,
    )
    finish(args, tally, f"{args.output}.rejects.jsonl")
    print(f"wrote {args.output}")
    return 0
