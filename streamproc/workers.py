"""Run a function over shards in worker processes, results back in shard order.

Both `stats` and `pack` use this: each worker turns one shard into a small mergeable result,
the parent merges in plan order, so output is identical for any number of workers.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
from typing import Callable, Iterator, Sequence, TypeVar

from .sources import Shard

R = TypeVar("R")


def map_shards(
    fn: Callable[[Shard], R],
    shards: Sequence[Shard],
    workers: int = 1,
    *,
    progress: str | None = None,
    rows_of: Callable[[R], int] | None = None,
) -> Iterator[R]:
    """Yield fn(shard) for each shard, in order. workers=1 runs in this process.

    `progress` names a tqdm bar sized in input bytes (so it shows MB/s); `rows_of` reads a row
    count off each result for the rows/s figure. The bar is hidden when stderr is not a terminal
    unless STREAMPROC_PROGRESS=1; STREAMPROC_PROGRESS=0 (--quiet) hides it always.
    """
    # With --limit the input is read only in part: count rows of the limit, not bytes of the files.
    by_rows = bool(shards) and rows_of is not None and all(s.limit is not None for s in shards)
    total = sum(s.limit or 0 for s in shards) if by_rows else sum(s.nbytes for s in shards)
    bar = _bar(progress, total, "rows" if by_rows else "B") if progress else None
    rows = 0
    try:
        if workers <= 1 or len(shards) <= 1:
            results: Iterator[R] = map(fn, shards)
        else:
            # fork keeps start-up cheap; the children never use threads inherited from the parent.
            ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
            pool = ctx.Pool(min(workers, len(shards)))
            results = _pooled(pool, fn, shards)
        for shard, r in zip(shards, results):
            if bar is not None:
                if rows_of is not None:
                    n = rows_of(r)
                    rows += n
                    if not by_rows:
                        bar.set_postfix_str(f"{rows / max(bar.format_dict['elapsed'], 1e-9):,.0f} rows/s", refresh=False)
                bar.update(n if by_rows else shard.nbytes)
            yield r
    finally:
        if bar is not None:
            bar.close()


def _pooled(pool, fn, shards) -> Iterator:
    try:
        yield from pool.imap(fn, shards)
        pool.close()
    finally:
        pool.terminate()
        pool.join()


def progress_shown() -> bool:
    env = os.environ.get("STREAMPROC_PROGRESS")
    return env != "0" and (sys.stderr.isatty() or env == "1")


def _bar(desc: str, total: int, unit: str = "B"):
    from tqdm.auto import tqdm

    scale = unit == "B"
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=scale, unit_divisor=1000, disable=not progress_shown(), smoothing=0.1)
