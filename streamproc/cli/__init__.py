"""`streamproc` command line: one module per command, each a thin layer over the Python API."""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading

from .. import __version__
from .._compiled import parser_build
from .manners import command_error, quiet_progress

# Command modules in the order `--help` lists them. Each defines add(subparsers), which
# registers its parser with set_defaults(func=...); func(args) returns an exit code.
COMMANDS = ["run", "parse", "synth", "stats", "report", "ls", "show", "replay", "pack", "export", "train", "bench"]


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


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C's KeyboardInterrupt, so the same cleanup
    runs: workers killed, temporary files removed, the last checkpoint kept."""


def _terminate(signum, frame) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main else None
    name = "streamproc"
    try:
        argv = sys.argv[1:] if argv is None else argv
        parser = build_parser()
        early = command_error(parser, argv, COMMANDS)
        if early is not None:
            return early
        args = parser.parse_args(argv)
        name = f"streamproc {args.command}"
        return _run(args, name)
    except KeyboardInterrupt as e:  # workers and temporary files are gone by now (finally blocks)
        terminated = isinstance(e, Terminated)
        print(f"{name}: {'terminated' if terminated else 'interrupted'}", file=sys.stderr)
        return 143 if terminated else 130
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)


def _run(args: argparse.Namespace, name: str) -> int:
    from ..chat import TemplateError
    from ..engine_ray import RayUnavailable
    from ..fileio import OutputError
    from ..pack_job import PackError
    from ..records import RowError
    from ..sources import SourceError

    try:
        with quiet_progress(getattr(args, "quiet", False)):
            return int(args.func(args) or 0)
    except (SourceError, RowError, RayUnavailable, PackError, TemplateError, OutputError) as e:
        print(f"{name}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `| head` has read what it wanted: not an error, and nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
