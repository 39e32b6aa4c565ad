"""Unix manners shared by the commands: quiet progress, help for a bare or mistyped command (`-` as stdout: io/files.py)."""

from __future__ import annotations

import argparse
import contextlib
import difflib
import os
import sys
from typing import Iterator


@contextlib.contextmanager
def quiet_progress(quiet: bool) -> Iterator[None]:
    """--quiet: progress bars off (STREAMPROC_PROGRESS=0, which worker processes inherit) for
    the command, the environment as it was afterwards."""
    if not quiet:
        yield
        return
    saved = os.environ.get("STREAMPROC_PROGRESS")
    os.environ["STREAMPROC_PROGRESS"] = "0"
    try:
        yield
    finally:
        if saved is None:
            del os.environ["STREAMPROC_PROGRESS"]
        else:
            os.environ["STREAMPROC_PROGRESS"] = saved


def command_error(parser: argparse.ArgumentParser, argv: list[str], commands: list[str]) -> int | None:
    """Before argparse sees `argv`: with no command, print the help (exit 0); with an unknown
    one, a usage error that suggests the nearest command names (exit 2). None: argv is fine."""
    if not argv:
        parser.print_help()
        return 0
    word = argv[0]
    if word.startswith("-") or word in commands:  # options (--help, --version): argparse's
        return None
    near = difflib.get_close_matches(word, commands, n=3, cutoff=0.6)
    if not near:  # a prefix is a likely typo too: `rep` for `replay` and `report`
        near = [c for c in commands if c.startswith(word[:3])]
    hint = f"; did you mean {' or '.join(repr(c) for c in near)}?" if near else f" (commands: {', '.join(commands)})"
    parser.print_usage(sys.stderr)
    print(f"{parser.prog}: error: unknown command {word!r}{hint}", file=sys.stderr)
    return 2


class RAW(argparse.HelpFormatter):
    """Help formatter that wraps descriptions but keeps an epilog of examples as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith("examples:"):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)
