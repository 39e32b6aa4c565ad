"""Terminal output: summary tables that fit the width, colour only where a person reads it,
long lines wrapped at word boundaries, and a pager for output taller than the screen.

Colour follows the usual rules: on a terminal only, never with NO_COLOR set; `--color
always|never` overrides where a command offers it.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from dataclasses import replace
from typing import TYPE_CHECKING, TextIO

from streamproc.views.safe import visible
from streamproc.views.tables import FAILURE, FIGURES_TABLE, QUALITY, TableRow
from streamproc.views.tables import Table as SummaryTable

if TYPE_CHECKING:  # rich and matplotlib load only for the commands that print tables
    from rich.console import Console
    from rich.table import Table

    from streamproc.analyze.metrics import Stats

LABEL_MAX = 44  # characters of a figure's name on one line before it wraps

PIPE_WIDTH = 1000  # not a terminal: a table as wide as its content, for grep and files


def use_color(stream: TextIO, choice: str = "auto") -> bool:
    if choice != "auto":
        return choice == "always"
    return stream.isatty() and not os.environ.get("NO_COLOR")


def width_of(stream: TextIO) -> int:
    """The terminal's columns (COLUMNS wins, as for every tool), or PIPE_WIDTH off a terminal."""
    if not stream.isatty():
        return PIPE_WIDTH
    return shutil.get_terminal_size((80, 24)).columns


_TRAILING = re.compile(r" +((?:\x1b\[[0-9;]*m)*)$", re.M)


def trimmed(text: str) -> str:
    """rich pads every line to the table's width (before the closing colour code): trailing
    blanks are noise in a file or a diff."""
    return _TRAILING.sub(r"\1", text.rstrip("\n")) + "\n"


def _zero(value: str) -> bool:
    return value.split(" ", 1)[0] in ("0", "-", "0.0%")


# ----------------------------------------------------------------------------- stats tables


def print_tables(stats: Stats, top: int, file: TextIO | None = None) -> None:
    """The summary tables of `stats`, each fitted to the width: a Figures table with more
    sources than fit is printed as several tables of a few sources each."""
    from rich.console import Console
    from rich.text import Text

    from streamproc.views.report import tables

    file = file or sys.stdout
    color = use_color(file)
    console = Console(file=file, width=width_of(file), force_terminal=color, color_system="auto" if color else None,
                      highlight=False, emoji=False)
    with console.capture() as captured:
        for table in tables(stats, top):
            if not table.rows:
                continue
            # escaped before the widths are reckoned (_label_width, _needed)
            table = replace(table, columns=[replace(c, label=visible(c.label)) for c in table.columns],
                            rows=[replace(r, cells=[visible(v) for v in r.cells]) for r in table.rows])
            if table.key == FIGURES_TABLE:
                table, quiet = _quality_folded(table)
                for part in _column_chunks(console, table):
                    console.print(part)
                    console.print()
                console.print(Text(quiet, style="green"))
            else:
                console.print(_table(table, console.width))
            console.print()
    file.write(trimmed(captured.get()))
    file.flush()


def _quality_folded(table: SummaryTable) -> tuple[SummaryTable, str]:
    """The Figures table without data-quality rows that are zero everywhere, and a line saying
    what was left out."""
    zero = [r for r in table.rows if r.mark == QUALITY and all(_zero(v) for v in r.cells[1:])]
    kept = replace(table, rows=[r for r in table.rows if r not in zero])
    if len(zero) == sum(r.mark == QUALITY for r in table.rows):
        return kept, "no data-quality problems (malformed or unmatched calls, unknown tools or arguments, unreadable tools JSON)"
    return kept, f"{len(zero)} other data-quality checks found nothing" if zero else ""


def _table(table: SummaryTable, width: int) -> Table:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    # Text, never str, for what the data names (tools, sources, categories): rich would take `[red]` for markup.
    t = Table(title=Text(table.title, style="bold"), title_justify="left", box=box.SIMPLE_HEAD, show_edge=False,
              pad_edge=False, header_style="bold")
    fit = width < PIPE_WIDTH  # off a terminal, names are never wrapped
    first, *columns = table.columns
    t.add_column(Text(first.label), overflow="fold", max_width=_label_width(table, width) if fit else None)
    for c in columns:
        t.add_column(Text(c.label), justify="right", no_wrap=True)
    for r in table.rows:
        cells = [Text(r.cells[0])]
        for c, v in zip(columns, r.cells[1:]):
            style = ""
            if not _zero(v):
                style = "bold red" if FAILURE in (r.mark, c.mark) else "yellow" if r.mark else ""
            cells.append(Text(v, style=style))
        t.add_row(*cells)
    return t


def _label_width(table: SummaryTable, width: int) -> int:
    return max(16, min(LABEL_MAX, width // 2, max(len(r.cells[0]) for r in table.rows)))


def _needed(table: SummaryTable, cols: list[int], width: int) -> int:
    """Columns a table of these value columns takes: the name column as wrapped, then each value
    column at its widest, 3 columns of padding and rule between columns."""
    values = sum(max(len(table.columns[c].label), *(len(r.cells[c]) for r in table.rows)) for c in cols)
    return _label_width(table, width) + values + 3 * len(cols)


def _column_chunks(console: Console, table: SummaryTable) -> list[Table]:
    """As many value columns per table as fit the width (at least one): a wide Figures table
    becomes a stack of narrower ones, each with the figure names."""
    n = len(table.columns) - 1
    width = console.width
    per = n
    while per > 1 and any(_needed(table, list(range(s, min(s + per, n + 1))), width) > width
                          for s in range(1, n + 1, per)):
        per -= 1
    parts = []
    for start in range(1, n + 1, per):
        cols = [0, *range(start, min(start + per, n + 1))]
        title = table.title if per == n else f"{table.title}: {', '.join(table.columns[c].label for c in cols[1:])}"
        part = replace(table, title=title, columns=[table.columns[c] for c in cols],
                       rows=[TableRow(r.key, [r.cells[c] for c in cols], r.mark) for r in table.rows])
        parts.append(_table(part, width))
    return parts


# ----------------------------------------------------------------------------- long text


def wrap(text: str, width: int) -> str:
    """Each line longer than `width` broken at word boundaries, continuation lines indented
    two more than the line's own indent (words longer than a line are broken)."""
    out = []
    for line in text.split("\n"):
        if len(line) <= width:
            out.append(line)
            continue
        lead = line[: len(line) - len(line.lstrip(" "))]
        out.extend(textwrap.wrap(line, width, initial_indent="", subsequent_indent=lead + "  ",
                                 drop_whitespace=True, replace_whitespace=False, break_on_hyphens=False) or [line])
    return "\n".join(out)


def page(text: str, stream: TextIO | None = None, *, pager: bool = True) -> None:
    """Write `text`; through $PAGER (default `less -R`: colour kept, quits at once if the text
    fits) when `stream` is a terminal and the text is taller than it."""
    stream = stream or sys.stdout
    rows = shutil.get_terminal_size((80, 24)).lines
    command = os.environ.get("PAGER", "less -R")
    if not (pager and stream.isatty() and text.count("\n") >= rows and command.strip() and command != "cat"):
        stream.write(text)
        stream.flush()
        return
    env = dict(os.environ)
    env.setdefault("LESS", "FRX")  # -F: no pager for what fits; -X: the text stays on screen after q
    try:
        proc = subprocess.Popen(shlex.split(command), stdin=subprocess.PIPE, env=env, encoding="utf-8", errors="replace")
    except OSError:  # no such pager: print plainly
        stream.write(text)
        stream.flush()
        return
    try:
        proc.stdin.write(text)
        proc.stdin.close()
    except BrokenPipeError:  # q before the end
        pass
    while True:
        try:
            proc.wait()
            break
        except KeyboardInterrupt:  # Ctrl-C is the pager's to handle
            continue
