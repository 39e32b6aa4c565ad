from __future__ import annotations

import argparse
import sys

from streamproc.io.files import write_rejects
from streamproc.views.listing import lookup
from streamproc.parse.parser import parse_trace
from streamproc.records import BadRow, Row, RowError, Trace
from streamproc.views.render import DEFAULT, Line, to_text, trace_lines
from streamproc.views.safe import visible
from streamproc.io.sources import Split, read
from streamproc.views.terminal import page, use_color as color_for, width_of, wrap
from streamproc.cli.common import add_input_args, input_from
from streamproc.cli.manners import RAW
from streamproc.cli import COMMANDS

EXAMPLES = """examples:
  streamproc ls --failed-tool terminal              find a trace first: ids to pass to --id
  streamproc show --id 3f2a9c01                     a unique prefix of the id is enough
  streamproc show data/ --id 3f2a9c01 --full | less -R
  streamproc show --index 0 --color never > trace.txt
"""


def add(sub) -> None:
    p = sub.add_parser(
        "show", help=COMMANDS["show"],
        description="Print one trace: the task, then every turn in order, with reasoning, each tool call and "
        "the result it got (failures marked). Turns and calls are numbered from 1. Long values are shortened "
        "(--full shows them); on a terminal long lines wrap and a long trace opens in $PAGER (less -R).",
        epilog=EXAMPLES, formatter_class=RAW,
    )
    add_view_args(p)
    p.add_argument("--no-pager", action="store_true", help="never page, even on a terminal")
    p.set_defaults(func=run)


def add_view_args(p: argparse.ArgumentParser) -> None:
    """Which trace, and how to print it, then the input options: shared by `show` and `replay`."""
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", help="the trace with this id, or the one whose id starts with it (see `streamproc ls`)")
    which.add_argument("--index", type=int, metavar="N", help="the row at position N of the input, from 0 as in rejects files (bad rows count too)")
    p.add_argument("--full", action="store_true", help="show every value in full, and the system prompt")
    p.add_argument("--color", choices=("auto", "always", "never"), default="auto", help="auto (default): only on a terminal, and not with NO_COLOR set")
    add_input_args(p)


def run(args) -> int:
    trace = trace_from(args)
    if trace is None:
        return 2
    lines = trace_lines(trace, None if args.full else DEFAULT)
    if not sys.stdout.isatty():
        sys.stdout.write(to_text(lines, use_color(args)))
        return 0
    page(to_text(wrapped(lines, width_of(sys.stdout)), use_color(args)), pager=not args.no_pager)
    return 0


def use_color(args) -> bool:
    return color_for(sys.stdout, args.color)


def wrapped(lines: list[Line], width: int) -> list[Line]:
    """Each line broken at word boundaries to fit `width` as printed (escapes and all), in its own style."""
    return [Line(line.style, part) for line in lines for part in wrap(visible(line.text), width).split("\n")]


def trace_from(args) -> Trace | None:
    """The selected trace, or None after saying on stderr why there is none."""
    rejects: list[BadRow] = []
    source = input_from(args)
    try:
        if args.index is not None:
            row = row_at(source.splits, args.index)
        else:
            found = lookup(source.splits, args.id, workers=source.engine, on_error=args.on_error, rejects=rejects)
            row = found.row
            if found.others:
                where = ", ".join(str(loc) for loc in found.others[:10]) + (" ..." if len(found.others) > 10 else "")
                print(visible(f"streamproc {args.command}: {len(found.others) + 1} rows have id {row.id!r}: showing "
                              f"{row.loc}; the others: {where}"), file=sys.stderr)
    except LookupError as e:
        print(visible(f"streamproc {args.command}: {e}"), file=sys.stderr)
        return None
    finally:
        if rejects:
            print(visible(f"passed over {len(rejects):,} bad rows (first: {rejects[0]})"), file=sys.stderr)
            if args.rejects:
                write_rejects(args.rejects, rejects)
    return parse_trace(row)


def row_at(splits: list[Split], index: int) -> Row:
    """The row at this position (bad rows count). Raises LookupError when there is none,
    RowError when it is bad."""
    n = 0
    for item in (item for split in splits for item in read(split)):
        if n == index:
            if isinstance(item, BadRow):
                raise RowError(item)
            return item
        n += 1
    raise LookupError(f"no row {index}: the input has {n:,} rows")
