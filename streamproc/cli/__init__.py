"""`streamproc` command line: one module per command, each a thin layer over the Python API."""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading
import warnings

from streamproc import __version__
from streamproc._compiled import parser_build
from streamproc.cli.manners import command_error, quiet_progress

# Commands in the order `--help` lists them, with the line it shows (the one place it is written). Each module
# streamproc.cli.<name> defines add(subparsers), which registers its parser with
# set_defaults(func=...); func(args) returns an exit code. Only the chosen command's module is
# imported: start-up, --version and --help stay free of numpy, numba, matplotlib and the rest.
COMMANDS = {
    "run": "the whole job: parse, stats report and packed shards (default: the built-in sample)",
    "parse": "parse traces into one structured record per trace (JSONL or Parquet)",
    "synth": "write seeded synthetic traces in the dataset's layout (Parquet, or JSONL .gz/.zst), any size",
    "stats": "agent-behaviour metrics: tools, parallel calls, failures, reasoning length, data quality, per source",
    "features": "one row of quality features per trace (calls, failures, schema problems, lengths) as Parquet, for SQL or dataframes",
    "filter": "keep the traces worth training on: SQL conditions over per-trace features, presets, de-duplication",
    "report": "one self-contained HTML page: summary, plots and a browser of every trace",
    "ls": "list traces, filtered by source, category, tool, failure or text, with ids for show/replay",
    "show": "print one trace, readable: task, turns, reasoning, tool calls and results",
    "replay": "step through one trace an assistant turn at a time (arrows, n, p, number, q)",
    "pack": "tokenize, mask and pack traces into Arrow shards for training (with manifest.json)",
    "export": "write normalized chat messages or prompt/completion pairs (JSONL or Parquet)",
    "train": "fine-tune a causal LM on packed shards (padding-free, no attention across packed sequences)",
    "bench": "measure each stage against the baseline it replaces (a regex parser, the per-message recipe), same run, same data",
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser with `command`'s options loaded; the other commands are listed by name only."""
    p = argparse.ArgumentParser(
        prog="streamproc",
        description="Streaming processor for agent reasoning-trace datasets (ShareGPT with <think>/<tool_call>).",
    )
    p.add_argument("--version", action="version", version=f"streamproc {__version__} (parser: {parser_build()})")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, line in COMMANDS.items():
        if name == command:
            importlib.import_module(f"streamproc.cli.{name}").add(sub)
        else:
            sub.add_parser(name, help=line)
    return p


def chosen_command(argv: list[str]) -> str | None:
    """The command named on the line: the first word that is not an option (the top-level
    options, -h and --version, take no value)."""
    word = next((a for a in argv if not a.startswith("-")), None)
    return word if word in COMMANDS else None


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
        parser = build_parser(chosen_command(argv))
        early = command_error(parser, argv, list(COMMANDS))
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
    try:
        with quiet_progress(getattr(args, "quiet", False)), warnings.catch_warnings():
            warnings.showwarning = _warning_line(name)
            return int(args.func(args) or 0)
    except BrokenPipeError:  # `| head` has read what it wanted: not an error, and nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as e:
        from streamproc.run.runner import WorkerDied
        from streamproc.views.safe import visible  # an error may quote a value or a file name from the data

        if isinstance(e, WorkerDied):  # the machine's doing, not the input's: one line, exit 1
            print(visible(f"{name}: error: {e}"), file=sys.stderr)
            return 1
        if not isinstance(e, _user_errors()):
            raise
        print(visible(f"{name}: error: {e}"), file=sys.stderr)
        return 2


def _warning_line(name: str):
    """A library's warning as one line naming the command, not a file, a line number and a line
    of someone else's source that reads like a traceback."""
    from streamproc.views.safe import visible

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        print(visible(f"{name}: warning: {message}"), file=file or sys.stderr)

    return show


def _user_errors() -> tuple[type[Exception], ...]:
    """Errors that a user's input or options cause: one line, exit 2. Imported once one is
    raised, so that a command does not load the modules of the others."""
    from streamproc.prepare.chat import TemplateError
    from streamproc.curate.conditions import ConditionError
    from streamproc.run.ray_engine import RayUnavailable
    from streamproc.io.files import OutputError
    from streamproc.prepare.job import PackError
    from streamproc.prepare.spill import SpillError
    from streamproc.records import RowError
    from streamproc.io.sources import SourceError
    from streamproc.prepare.tokenizer import TokenizerError

    return (SourceError, RowError, RayUnavailable, PackError, SpillError, TemplateError, TokenizerError, ConditionError, OutputError)


if __name__ == "__main__":
    sys.exit(main())
