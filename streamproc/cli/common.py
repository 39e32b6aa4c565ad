"""Options shared by every command that reads traces, and what they make: the input a command reads (Input)."""

from __future__ import annotations

import argparse
import os
import sys

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from streamproc.io.files import check_output_file, to_stdout, write_rejects
from streamproc.records import Tally
from streamproc.run.runner import Engine, Job, Local, View
from streamproc.io.sources import HUB_DATASET, ON_ERROR, Plan, plan
from streamproc.cli.argtypes import positive_int
from streamproc.views.safe import visible

if TYPE_CHECKING:
    from streamproc.curate.curator import Curator


def add_input_args(p: argparse.ArgumentParser, *, workers: bool = True, view: bool = False, engine: bool = True) -> None:
    """The input options; with `workers` and `engine`, also --engine/--address (engine_from);
    with `view`, also --where/--preset/--dedup, the view input_from gives the run."""
    # A group of its own: --help lists it after the command's own options.
    g = p.add_argument_group("input options")
    g.add_argument(
        "inputs", nargs="*", metavar="INPUT",
        help="Parquet / JSONL (.gz, .zst) / JSON files, directories or globs; none: the built-in sample",
    )
    g.add_argument("--dataset", help=f"a Hugging Face dataset to stream instead, e.g. {HUB_DATASET}")
    g.add_argument("--config", action="append", default=[], help="dataset config (repeatable: combined, with a source column)")
    g.add_argument("--split", default="train", help="--dataset split to read (default: %(default)s)")
    g.add_argument("--source", help="source label for local inputs (default: the file name)")
    g.add_argument("--limit", type=positive_int, metavar="N", help="read at most N rows, in order")
    g.add_argument("--on-error", choices=ON_ERROR, default="skip", help="skip: count bad rows and set them aside; fail: stop at the first")
    g.add_argument("--rejects", metavar="FILE", help="where rejected rows go (default: OUTPUT.rejects.jsonl beside the output)")
    if workers:
        g.add_argument("--workers", type=positive_int, default=os.cpu_count() or 1, metavar="N", help="worker processes (default: all cores, %(default)s here)")
        if engine:
            add_engine_args(g)
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no count line (errors are still printed)")
    if view:
        add_curate_args(p, view=True)


def add_rows_output(p: argparse.ArgumentParser) -> None:
    """-o OUT for a command that writes rows or records (parse, export, filter, features); its
    name is checked by the command before any work (io/writer.check_rows_output), in one line."""
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="OUT.jsonl (.gz, .zst), OUT.parquet, or - for JSONL on stdout")


def rejects_beside(output: str) -> str | None:
    """OUTPUT.rejects.jsonl, where rejected rows go by default; none for stdout (see finish)."""
    return None if to_stdout(output) else f"{output}.rejects.jsonl"


def add_curate_args(p: argparse.ArgumentParser, *, view: bool = False) -> None:
    from streamproc.curate.options import DEDUP_MODES, PRESET_HELP

    g = p.add_argument_group("curation" + (" (read only the rows kept, as `streamproc filter` would)" if view else ""))
    g.add_argument("--where", metavar="SQL", help='a SQL condition over the per-trace features, e.g. "failed_responses = 0 AND tool_calls > 2"')
    g.add_argument("--preset", choices=list(PRESET_HELP), help="; ".join(f"{k}: {v}" for k, v in PRESET_HELP.items()))
    g.add_argument("--dedup", choices=DEDUP_MODES, help="exact: same conversation text (whitespace normalized); near: MinHash LSH over user and assistant text; the first occurrence is kept")
    g.add_argument("--threshold", type=float, default=0.8, metavar="J", help="--dedup near: Jaccard similarity that counts as a duplicate (default %(default)s)")
    p.set_defaults(view=view)


def curator_from(args: argparse.Namespace, tokens: bool = False) -> "Curator | None":
    """The Curator of --where/--preset/--dedup (checked before any data is read), or None when none is given."""
    from streamproc.curate.curator import Curator
    from streamproc.curate.conditions import conditions_of

    conditions = conditions_of(args.where, args.preset)
    if not conditions and not args.dedup:
        return None
    return Curator(conditions, args.dedup, args.threshold, tokens=tokens)


def add_engine_args(g) -> None:
    g.add_argument(
        "--engine", choices=("local", "ray"), default="local",
        help='local: --workers processes on this machine; ray: Ray tasks on a Ray cluster (pip install "streamproc[ray]")',
    )
    g.add_argument("--address", help="--engine ray: the cluster to join (auto, ray://HEAD:10001); default: start one here")


def engine_from(args: argparse.Namespace) -> "Engine":
    """Where the splits are folded: --workers local processes, or Ray (--engine ray)."""
    if getattr(args, "engine", "local") == "ray":
        from streamproc.run.ray_engine import RayEngine, require_ray

        require_ray()  # before any work: without Ray, say how to get it
        return RayEngine(args.address)
    return Local(args.workers)


@dataclass(slots=True)
class Input:
    """What a command reads, as its options say: the planned splits (and what the inputs named
    that is not read), the view of --where/--preset/--dedup, the engine and --on-error."""

    splits: Plan
    view: View | None
    engine: Engine
    on_error: str

    def run(self, jobs: Sequence[Job], progress: str) -> None:
        """Every job from one pass over the input (runner.run_jobs), through the view."""
        from streamproc.run.runner import run_jobs

        run_jobs(self.splits, jobs, view=self.view, workers=self.engine, on_error=self.on_error, progress=progress)


def input_from(args: argparse.Namespace) -> Input:
    """The planned splits; with --where/--preset/--dedup on a command that takes them, the view
    that only the kept rows go through (curate.stage.view; finish prints its account)."""
    curator = curator_from(args) if getattr(args, "view", False) else None  # a bad condition fails before any read
    splits = plan(
        args.inputs, dataset=args.dataset, configs=args.config, split=args.split, source=args.source, limit=args.limit
    )
    engine = engine_from(args)
    view = None
    if curator is not None:
        from streamproc.curate.stage import view as view_of

        view = view_of(splits, curator, engine, args.on_error)
    return Input(splits, view, engine, args.on_error)


def check_rejects(args: argparse.Namespace) -> None:
    """--rejects FILE is checked with the other outputs, before the work starts."""
    if getattr(args, "rejects", None):
        check_output_file(args.rejects)


def finish(args: argparse.Namespace, source: Input, tally: Tally, default_rejects: str | None) -> None:
    """Print the row count line and write rejected rows, so nothing is silently lost. With no
    default place (no output file, or the output went to stdout) rejects are written only where
    --rejects says. A filtered view's account comes first."""
    if source.view is not None:
        acct = source.view.acct
        by = ", ".join(f"{k} {v:,}" for k, v in acct.removed_by.items() if v) or "none"
        say(args, f"filtered view: {acct.kept:,} of {acct.read:,} rows kept (removed by {by}; {acct.rejected:,} rejected)")
    msg = tally.summary()
    if tally.rejected:
        path = args.rejects or default_rejects
        if path:
            write_rejects(path, tally.rejected)
            msg += f" (set aside in {path}; first: {tally.rejected[0]})"
        else:
            msg += f" (first: {tally.rejected[0]}; --rejects FILE keeps them all)"
    unread = source.splits.unread
    if unread:
        more = f", and {len(unread) - 5} more" if len(unread) > 5 else ""
        msg += f"; {len(unread)} {'path' if len(unread) == 1 else 'paths'} not read: {', '.join(map(str, unread[:5]))}{more}"
    if tally.rejected or unread or not getattr(args, "quiet", False):
        print(visible(msg), file=sys.stderr)  # it quotes a rejected value and file names


def say(args: argparse.Namespace, msg: str) -> None:
    """A progress or result note for people: on stderr, so stdout stays the data; not with --quiet."""
    if not getattr(args, "quiet", False):
        print(visible(msg), file=sys.stderr)
