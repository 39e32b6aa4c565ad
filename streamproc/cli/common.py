"""Options shared by every command that reads traces, and the way they become shards."""

from __future__ import annotations

import argparse
import os
import sys

from ..fileio import output_format, write_rejects
from ..pipeline import Tally
from ..sources import HUB_DATASET, ON_ERROR, Shard, SourceError, plan, scan


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


def rows_output(path: str) -> str:
    """argparse type of an output file of rows or records: an extension streamproc writes."""
    try:
        output_format(path)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return path


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
    args.unread = scan([i for i in args.inputs if "://" not in i])[1]  # for finish's count line
    return dict(inputs=args.inputs, source=args.source, limit=args.limit, on_error=args.on_error, address=args.address)


def shards_from(args: argparse.Namespace) -> list[Shard]:
    shards = plan(
        args.inputs, dataset=args.dataset, configs=args.config, split=args.split, source=args.source, limit=args.limit
    )
    args.unread = shards.unread  # for finish's count line
    return shards


def finish(args: argparse.Namespace, tally: Tally, default_rejects: str) -> None:
    """Print the row count line and write rejected rows, so nothing is silently lost."""
    msg = tally.summary()
    if tally.rejected:
        path = args.rejects or default_rejects
        write_rejects(path, tally.rejected)
        msg += f" (set aside in {path}; first: {tally.rejected[0]})"
    unread = getattr(args, "unread", ())
    if unread:
        more = f", and {len(unread) - 5} more" if len(unread) > 5 else ""
        msg += f"; {len(unread)} {'path' if len(unread) == 1 else 'paths'} not read: {', '.join(map(str, unread[:5]))}{more}"
    print(msg, file=sys.stderr)
