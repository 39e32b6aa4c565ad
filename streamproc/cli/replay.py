from __future__ import annotations

import shutil
import sys

from streamproc.views.render import DEFAULT
from streamproc.views.safe import visible
from streamproc.views.replay import Screen, commands_from, play, step_lines, steps, to_text
from streamproc.cli.manners import RAW
from streamproc.cli.show import add_view_args, trace_from, use_color
from streamproc.cli import COMMANDS

EXAMPLES = """examples:
  streamproc replay --id 8c679f12                   keys: Right/n next, Left/p previous, Up/Down scroll, 12 Enter, q
  streamproc replay --id 8c679f12 --step 3          print step 3 and exit
  printf 'n\\nn\\n5\\nq\\n' | streamproc replay --index 0   commands from a pipe, one per line
"""


def add(sub) -> None:
    p = sub.add_parser(
        "replay", help=COMMANDS["replay"],
        description="Step through one trace an assistant step at a time: what led to it, its reasoning, each "
        "call with its result, its answer. On a terminal each step replaces the last (Right/Left or n/p move, "
        "Up/Down and PgUp/PgDn scroll, a number and Enter jumps, q quits); from a pipe, one command per line. "
        "Steps and turns are numbered from 1.",
        epilog=EXAMPLES, formatter_class=RAW,
    )
    p.add_argument("--step", type=int, metavar="K", help="print step K (from 1) and exit, without asking for keys")
    add_view_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    trace = trace_from(args)
    if trace is None:
        return 2
    limits = None if args.full else DEFAULT
    color = use_color(args)
    if args.step is None:
        screen = Screen(_size) if sys.stdin.isatty() and sys.stdout.isatty() else None
        with commands_from(sys.stdin, sys.stdout) as commands:
            play(trace, commands, sys.stdout, limits=limits, color=color, screen=screen)
        return 0
    all_steps = steps(trace)
    if not 1 <= args.step <= len(all_steps):
        print(visible(f"streamproc replay: no step {args.step}: trace {trace.id} has {len(all_steps)} steps"), file=sys.stderr)
        return 2
    sys.stdout.write(to_text(step_lines(trace, all_steps[args.step - 1], len(all_steps), limits), color))
    return 0


def _size() -> tuple[int, int]:
    size = shutil.get_terminal_size((80, 24))
    return size.columns, size.lines
