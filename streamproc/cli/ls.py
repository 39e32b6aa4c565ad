"""`streamproc ls`: list traces, filtered as in the trace browser, with ids `show` and `replay` take."""

from __future__ import annotations

import sys

from streamproc.views.listing import Filters, ScanJob, Summary, unique_prefix_length
from streamproc.analyze.outcomes import ERROR_CLASSES, MALFORMED_CALL
from streamproc.views.safe import visible
from streamproc.views.terminal import page, trimmed, use_color, width_of
from streamproc.cli.common import add_input_args, input_from
from streamproc.cli.manners import RAW
from streamproc.cli import COMMANDS

EXAMPLES = """examples:
  streamproc ls                                      every trace of the built-in sample
  streamproc ls --from kimi --category "Browser Automation"
  streamproc ls --failed-tool browser_navigate       traces where that tool failed (not just any tool)
  streamproc ls --failure traceback --search pandas
  streamproc ls data/ | cut -f1 | head               off a terminal: tab-separated, full ids first
"""
FAILURES = (*ERROR_CLASSES, MALFORMED_CALL)
HEADER = ("id", "source", "category", "turns", "calls", "errors", "task")
NUMBERS = {"turns", "calls", "errors"}


def add(sub) -> None:
    p = sub.add_parser(
        "ls", help=COMMANDS["ls"],
        description="List the traces that pass every filter given, with the id `show --id` and `replay --id` "
        "take (on a terminal, the shortest unique prefix). Off a terminal: one tab-separated line per trace "
        "(id, source, category, turns, calls, errors, failed tools, task).",
        epilog=EXAMPLES, formatter_class=RAW,
    )
    p.add_argument("--from", dest="from_source", metavar="SOURCE", help="only traces from this source, e.g. kimi (--source names the source of unlabelled inputs)")
    p.add_argument("--category", help="only this category or subcategory")
    p.add_argument("--tool", metavar="NAME", help="only traces that call this tool")
    p.add_argument("--failed-tool", metavar="NAME", help="only traces where this tool failed at least once")
    p.add_argument("--failure", choices=FAILURES, metavar="CLASS", help=f"only traces with a failure of this class: {', '.join(FAILURES)}")
    p.add_argument("--errors", action="store_true", help="only traces with any failure")
    p.add_argument("--search", metavar="TEXT", help="only traces whose id, task, category or any turn contains TEXT (any case)")
    p.add_argument("--no-pager", action="store_true", help="never page, even on a terminal")
    add_input_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    filters = Filters(source=args.from_source, category=args.category, tool=args.tool, failed_tool=args.failed_tool,
                      failure=args.failure, errors=args.errors, text=args.search)
    job = ScanJob(filters)
    input_from(args).run([job], progress="ls")
    found = job.found
    if sys.stdout.isatty():
        page(table_text(found.matches, unique_prefix_length(found.ids), width_of(sys.stdout), use_color(sys.stdout)),
             pager=not args.no_pager)
    else:
        sys.stdout.writelines(tsv_line(s) for s in found.matches)
    if not args.quiet or found.rejects:
        bad = f"; {len(found.rejects):,} bad rows passed over (first: {found.rejects[0]})" if found.rejects else ""
        print(visible(f"{len(found.matches):,} of {len(found.ids):,} traces match{bad}"), file=sys.stderr)
    return 0 if found.matches else 1


def _clean(text: str) -> str:
    """One line of text as shown: runs of blanks as one space, control characters as escapes."""
    return visible(" ".join(text.split()))


def tsv_line(s: Summary) -> str:
    return "\t".join([*map(visible, [s.id, s.source, s.category]), str(s.turns), str(s.calls), str(s.errors),
                      visible(",".join(s.failed_tools)), _clean(s.task)]) + "\n"


def table_text(matches: list[Summary], prefix: int, width: int, color: bool) -> str:
    """The matches as a table fitted to `width`: the task takes what the other columns leave,
    one line each."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console(width=width, force_terminal=color, color_system="auto" if color else None, highlight=False,
                      emoji=False)
    t = Table(box=None, pad_edge=False, header_style="bold underline")
    cat = 20 if width >= 120 else 14
    rows = [[visible(s.id[:prefix]), _clean(s.source), _clean(s.category) or "-",
             str(s.turns), str(s.calls), str(s.errors), _clean(s.task)] for s in matches]
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(HEADER[:-1])]
    widths[1], widths[2] = min(widths[1], 12), min(widths[2], cat)
    # Two columns of padding between columns, none at the edges: the task gets what is left.
    task = max(10, width - sum(widths) - 2 * len(widths))
    for i, (h, w) in enumerate(zip(HEADER, [*widths, task])):
        t.add_column(h, no_wrap=True, overflow="ellipsis", min_width=w if i < len(widths) else None, max_width=w,
                     justify="right" if h in NUMBERS else "left", style="cyan" if h == "id" else "")
    for r in rows:  # Text, not str: rich would take `[red]` in a task for markup
        t.add_row(*map(Text, r[:5]), Text(r[5], style="red" if r[5] != "0" else ""), Text(r[6]))
    with console.capture() as captured:
        console.print(t)
    return trimmed(captured.get())
