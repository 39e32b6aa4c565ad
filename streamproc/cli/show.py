from __future__ import annotations

import argparse
import os
import sys

from ..fileio import write_rejects
from ..parse import parse_trace
from ..records import BadRow, Row, RowError, Trace
from ..render import DEFAULT, to_text, trace_lines
from .. import runner
from ..runner import Stage
from ..sources import Split, read
from .common import add_input_args, shards_from


def add(sub) -> None:
    p = sub.add_parser("show", help="print one trace, readable: task, turns, reasoning, tool calls and results")
    add_view_args(p)
    p.set_defaults(func=run)


def add_view_args(p: argparse.ArgumentParser) -> None:
    """Input, which trace, and how to print it: shared by `show` and `replay`."""
    add_input_args(p)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", help="the trace with this id")
    which.add_argument("--index", type=int, metavar="N", help="the N-th row of the input, from 0 (bad rows count too)")
    p.add_argument("--full", action="store_true", help="show every value in full, and the system prompt")
    p.add_argument("--color", choices=("auto", "always", "never"), default="auto", help="auto: only on a terminal")


def run(args) -> int:
    trace = trace_from(args)
    if trace is None:
        return 2
    sys.stdout.write(to_text(trace_lines(trace, None if args.full else DEFAULT), use_color(args)))
    return 0


def use_color(args) -> bool:
    if args.color != "auto":
        return args.color == "always"
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


def trace_from(args) -> Trace | None:
    """The selected trace, or None after saying on stderr why there is none."""
    rejects: list[BadRow] = []
    try:
        row = find_row(shards_from(args), id=args.id, index=args.index, on_error=args.on_error,
                       workers=args.workers, rejects=rejects)
    except LookupError as e:
        print(f"streamproc {args.command}: {e}", file=sys.stderr)
        return None
    finally:
        if rejects:
            print(f"passed over {len(rejects):,} bad rows (first: {rejects[0]})", file=sys.stderr)
            if args.rejects:
                write_rejects(args.rejects, rejects)
    return parse_trace(row)


def find_row(
    shards: list[Split], *, id: str | None = None, index: int | None = None, on_error: str = "skip",
    workers: int = 1, rejects: list[BadRow] | None = None,
) -> Row:
    """The row with this id (shards searched in parallel, first in input order wins) or at this
    position. Raises LookupError when there is none, RowError when the row asked for is bad."""
    rejects = [] if rejects is None else rejects
    if index is not None:
        n = 0
        for item in (item for shard in shards for item in read(shard)):
            if n == index:
                if isinstance(item, BadRow):
                    raise RowError(item)
                return item
            n += 1
        raise LookupError(f"no row {index}: the input has {n:,} rows")
    for folded in runner.run(shards, [FindStage(id)], workers=workers, on_error=on_error):
        rejects.extend(folded.tallies[0].rejected)
        if folded.partials[0]:
            return folded.partials[0][0]
    raise LookupError(f"no trace with id {id!r} in the input")


class FindStage(Stage):
    """The rows of a split with one id."""

    name = "find"
    trace = False

    def __init__(self, id: str):
        self.id = id

    def start(self) -> list[Row]:
        return []

    def fold(self, acc: list[Row], row: Row, trace: Trace | None) -> None:
        if row.id == self.id:
            acc.append(row)
