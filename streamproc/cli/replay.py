from __future__ import annotations

import sys

from ..render import DEFAULT
from ..replay import commands_from, play, step_lines, steps, to_text
from .show import add_view_args, trace_from, use_color


def add(sub) -> None:
    p = sub.add_parser("replay", help="step through one trace an assistant turn at a time (n, p, number, q)")
    add_view_args(p)
    p.add_argument("--step", type=int, metavar="K", help="print step K (from 1) and exit, without asking for keys")
    p.set_defaults(func=run)


def run(args) -> int:
    trace = trace_from(args)
    if trace is None:
        return 2
    limits = None if args.full else DEFAULT
    color = use_color(args)
    if args.step is None:
        with commands_from(sys.stdin, sys.stdout) as commands:
            play(trace, commands, sys.stdout, limits=limits, color=color)
        return 0
    all_steps = steps(trace)
    if not 1 <= args.step <= len(all_steps):
        print(f"streamproc replay: no step {args.step}: trace {trace.id} has {len(all_steps)} steps", file=sys.stderr)
        return 2
    sys.stdout.write(to_text(step_lines(trace, all_steps[args.step - 1], len(all_steps), limits), color))
    return 0
