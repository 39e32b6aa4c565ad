"""`streamproc` command line: one module per command, each a thin layer over the Python API."""

from __future__ import annotations

import argparse
import importlib
import sys

from .. import __version__
from .._compiled import parser_build

# Command modules in the order `--help` lists them. Each defines add(subparsers), which
# registers its parser with set_defaults(func=...); func(args) returns an exit code.
COMMANDS = ["run", "parse", "synth", "stats", "features", "filter", "report", "show", "replay", "pack", "export", "train", "bench"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="streamproc",
        description="Streaming processor for agent reasoning-trace datasets (ShareGPT with <think>/<tool_call>).",
    )
    p.add_argument("--version", action="version", version=f"streamproc {__version__} (parser: {parser_build()})")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"streamproc.cli.{name}").add(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    from ..chat import TemplateError
    from ..curate import ConditionError
    from ..engine_ray import RayUnavailable
    from ..prepare import PackError
    from ..records import RowError
    from ..sources import SourceError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (SourceError, RowError, RayUnavailable, PackError, TemplateError, ConditionError) as e:
        print(f"streamproc {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"streamproc {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
