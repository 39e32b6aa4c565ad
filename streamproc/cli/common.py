"""Options shared by every command that reads traces, and the way they become shards."""

from __future__ import annotations

import argparse
import os
import sys

from typing import Sequence

from ..fileio import check_output_file, write_rejects
from ..records import Tally
from ..runner import Job
from ..sources import HUB_DATASET, ON_ERROR, SourceError, Split, plan


def add_input_args(p: argparse.ArgumentParser, *, workers: bool = True) -> None:
    p.add_argument(
        "inputs", nargs="*", metavar="INPUT",
        help="Parquet / JSONL (.gz, .zst) / JSON files, directories or globs; none: the built-in sample",
    )
    p.add_argument("--dataset", help=f"a Hugging Face dataset to stream instead, e.g. {HUB_DATASET}")
    p.add_argument("--config", action="append", default=[], help="dataset config (repeatable: combined, with a source column)")
    p.add_argument("--split", default="train")
    p.add_argument("--source", help="source label for local inputs (default: the file name)")
    p.add_argument("--limit", type=int, help="read at most N rows, in order")
    p.add_argument("--on-error", choices=ON_ERROR, default="skip", help="skip: count bad rows and set them aside; fail: stop at the first")
    p.add_argument("--rejects", metavar="FILE", help="where rejected rows go (default: OUTPUT.rejects.jsonl beside the output)")
    if workers:
        p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="worker processes (default: all cores)")


def add_engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--engine", choices=("local", "ray"), default="local",
        help='local: worker processes on this machine; ray: Ray Data on a Ray cluster (pip install "streamproc[ray]")',
    )
    p.add_argument("--address", help="--engine ray: the cluster to join (auto, ray://HEAD:10001); default: start one here")


def ray_inputs(args: argparse.Namespace) -> dict:
    """The input options as keyword arguments of the Ray engine's stage functions."""
    if args.dataset:
        raise SourceError("--engine ray reads files or URIs; download the dataset's Parquet files and pass them as INPUT")
    return dict(inputs=args.inputs, source=args.source, limit=args.limit, on_error=args.on_error, address=args.address)


def shards_from(args: argparse.Namespace) -> list[Split]:
    return plan(
        args.inputs, dataset=args.dataset, configs=args.config, split=args.split, source=args.source, limit=args.limit
    )


def run_jobs(args: argparse.Namespace, jobs: Sequence[Job], progress: str) -> None:
    """Every job from one pass over the input, on the engine asked for (`--engine`)."""
    if getattr(args, "engine", "local") == "ray":
        from .. import engine_ray

        engine_ray.run_jobs(jobs=jobs, **ray_inputs(args))
    else:
        from .. import runner

        runner.run_jobs(shards_from(args), jobs, workers=args.workers, on_error=args.on_error, progress=progress)


def check_rejects(args: argparse.Namespace) -> None:
    """--rejects FILE is checked with the other outputs, before the work starts."""
    if getattr(args, "rejects", None):
        check_output_file(args.rejects)


def finish(args: argparse.Namespace, tally: Tally, default_rejects: str | None) -> None:
    """Print the row count line and write rejected rows (to --rejects, else beside the output:
    `default_rejects`; a command with no output file writes them only where asked)."""
    msg = tally.summary()
    if tally.rejected:
        path = args.rejects or default_rejects
        if path:
            write_rejects(path, tally.rejected)
            msg += f" (set aside in {path}; first: {tally.rejected[0]})"
        else:
            msg += f" (first: {tally.rejected[0]}; pass --rejects FILE to keep them all)"
    print(msg, file=sys.stderr)
