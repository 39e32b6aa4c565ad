"""The Ray engine: `stats` and `pack` on a Ray cluster (Ray Data) instead of local processes.

Ray reads the inputs: Parquet with `read_parquet`, JSONL as whole files (`read_binary_files`, so
gzip / zstd and any pyarrow filesystem work) cut into lines, decoded and validated by the local
reader's own functions (sources.decode_line, sources.validate_row). Each `map_batches` call folds
one Arrow batch with the very code a local worker runs on a split (runner.fold_items with the same
public stages), and returns the `runner.Folded` pickled. Batches come back in input order
(`preserve_order`), so the jobs merge them in the order the local engine gives its splits, and
the result is the same.

JSONL lines carry their line numbers, but a Parquet batch does not know where in its file it
starts: a worker numbers its rows from 0 per file and reports how many it saw, and the driver adds
the running offset to the rejected rows' locations.
"""

from __future__ import annotations

import os
import pickle
from collections import Counter
from dataclasses import dataclass
from itertools import groupby
from typing import Iterator, Sequence

from .records import BadRow, Location, Row, RowError
from .runner import Folded, Job, Stage, feed, fold_items
from .sources import SAMPLE, SourceError, decode_line, expand, file_kind, source_label, validate_row

INSTALL = 'the Ray engine needs Ray Data: pip install "streamproc[ray]"'
BATCH_ROWS = 256  # rows per map_batches call: big enough to amortise a task, small enough to spread


class RayUnavailable(RuntimeError):
    """`--engine ray` without Ray installed."""


def require_ray():
    try:
        import ray
        import ray.data  # noqa: F401  (ray without the [data] extra lacks it)
    except ImportError as e:
        raise RayUnavailable(f"{INSTALL} ({e})") from e
    return ray


def connect(address: str | None = None):
    """Join the cluster at `address` (`auto`, `ray://head:10001`) or start a local one.

    A process already connected (a notebook, a test) keeps its connection. On a remote cluster
    this very streamproc package is shipped to the workers; its dependencies must be there.
    """
    ray = require_ray()
    if not ray.is_initialized():
        if address:
            import streamproc

            ray.init(address=address, runtime_env={"py_modules": [streamproc]})
        else:
            ray.init()
    return ray


# ----------------------------------------------------------------------------- inputs


@dataclass(slots=True, frozen=True)
class InputFile:
    uri: str  # what Ray is given: a local path or a URI
    key: str  # what Ray writes in the `path` column for it
    kind: str  # parquet | jsonl
    source: str


def input_files(inputs: Sequence[str | os.PathLike], source: str | None = None) -> list[InputFile]:
    """Files to read, in the local engine's order. URIs (`s3://`, `gs://`, `hdfs://`, `file://`)
    go through pyarrow filesystems; a URI directory is listed recursively, sorted. None: the
    built-in sample."""
    out = []
    for item in map(str, inputs or [SAMPLE]):
        for uri, key in _uri_files(item) if "://" in item else ((p, p) for p in expand([item])):
            kind = file_kind(key)
            if kind not in ("parquet", "jsonl"):
                raise SourceError(f"{uri}: the Ray engine reads Parquet and JSONL files only (use --engine local)")
            out.append(InputFile(uri, key, kind, source_label(key, source)))
    return out


def _uri_files(uri: str) -> list[tuple[str, str]]:
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise SourceError(f"{uri}: no such file or directory")
    if info.type == pafs.FileType.File:
        return [(uri, path)]
    scheme = uri.split("://", 1)[0]
    found = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    keys = sorted(i.path for i in found if i.type == pafs.FileType.File and file_kind(i.path) is not None)
    if not keys:
        raise SourceError(f"{uri}: directory holds no .parquet or .jsonl file")
    return [(f"{scheme}://{k}", k) for k in keys]


# ----------------------------------------------------------------------------- workers


def _lines(batch):
    """Whole files -> one row per non-blank line, numbered as the local reader numbers them."""
    import pyarrow as pa

    paths, rows, lines = [], [], []
    for path, data in zip(batch.column("path").to_pylist(), batch.column("bytes").to_pylist()):
        split = data.split(b"\n")
        for i, line in enumerate(split):
            if line.strip():
                paths.append(path)
                rows.append(i)
                lines.append(line + b"\n" if i < len(split) - 1 else line)  # as readline() gives it
    return pa.table({"path": paths, "row": pa.array(rows, pa.int64()), "line": pa.array(lines, pa.large_binary())})


class _Fold:
    """Picklable `map_batches` function: one Arrow batch -> one row holding the pickled
    (runner.Folded, rows seen per file). Bad rows are kept (`skip`): the driver applies the
    error policy once their locations are final."""

    def __init__(self, stages: Sequence[Stage], kind: str, files: Sequence[InputFile]):
        self.stages = list(stages)
        self.kind = kind
        self.files = {f.key: f for f in files}

    def __call__(self, batch) -> dict[str, list[bytes]]:
        seen: Counter = Counter()
        result = fold_items(self._items(batch, seen), self.stages, "skip")
        return {"result": [pickle.dumps((result, seen), protocol=5)]}

    def _items(self, batch, seen: Counter) -> Iterator[Row | BadRow]:
        files = [self.files[k] for k in batch.column("path").to_pylist()]
        if self.kind == "jsonl":
            # Lines carry their own numbers: a file is never split across batches by `_lines`.
            for f, row, line in zip(files, batch.column("row").to_pylist(), batch.column("line").to_pylist()):
                item = decode_line(line, Location(f.uri, row), f.source)
                if item is not None:
                    yield item
            return
        for f, obj in zip(files, batch.drop_columns(["path"]).to_pylist()):
            loc = Location(f.uri, seen[f.uri])
            seen[f.uri] += 1
            yield validate_row(obj, loc, f.source)


# ----------------------------------------------------------------------------- driver


def run(
    inputs: Sequence[str | os.PathLike],
    stages: Sequence[Stage],
    *,
    source: str | None = None,
    limit: int | None = None,
    on_error: str = "skip",
    address: str | None = None,
    batch_rows: int = BATCH_ROWS,
) -> Iterator[Folded]:
    """Yield each batch of the inputs folded by `stages` (runner.fold_items), in input order,
    rejected rows numbered as the local engine numbers them. `on_error="fail"` raises at the
    first one, in order."""
    ray = connect(address)
    offsets: Counter = Counter()
    left = limit
    for (kind, _scheme), group in groupby(input_files(inputs, source), key=lambda f: (f.kind, f.uri.partition("://")[1])):
        group = list(group)
        if left is not None and left <= 0:
            return
        ds = _read(ray, kind, [f.uri for f in group])
        if left is not None:
            ds = ds.limit(left)
        ds = ds.map_batches(_Fold(stages, kind, group), batch_format="pyarrow", batch_size=batch_rows)
        for out in ds.iter_rows():
            result, seen = pickle.loads(out["result"])
            moved = set()  # stages share their BadRows: each is renumbered once
            for tally in result.tallies:
                for bad in tally.rejected:
                    if id(bad) not in moved:
                        moved.add(id(bad))
                        bad.loc = Location(bad.loc.file, bad.loc.row + offsets[bad.loc.file])
            offsets.update(seen)
            first = next((t.rejected[0] for t in result.tallies if t.rejected), None)
            if on_error == "fail" and first is not None:
                raise RowError(first)
            if left is not None and result.tallies:
                left -= result.tallies[0].read
            yield result


def _read(ray, kind: str, uris: list[str]):
    if kind == "parquet":
        # Ray 2.60's new Parquet reader lists files in threads that race on an optional import
        # (fsspec's HTTP filesystem, without aiohttp) and fail at random; the classic one does not.
        ctx = ray.data.DataContext.get_current()
        v2, ctx.use_datasource_v2 = ctx.use_datasource_v2, False
        try:
            ds = ray.data.read_parquet(uris, include_paths=True, partitioning=None, file_extensions=None)
        finally:
            ctx.use_datasource_v2 = v2
    else:
        ds = ray.data.read_binary_files(uris, include_paths=True).map_batches(_lines, batch_format="pyarrow", batch_size=1)
    ds.context.execution_options.preserve_order = True  # later datasets inherit it
    return ds


# ----------------------------------------------------------------------------- jobs


def run_jobs(inputs: Sequence[str | os.PathLike], jobs: Sequence[Job], **read) -> None:
    """runner.run_jobs on Ray: every job from one pass. `read`: run()'s source, limit, on_error,
    address and batch_rows."""
    feed(run(inputs, [s for job in jobs for s in job.stages], **read), jobs)


def collect(inputs: Sequence[str | os.PathLike], *, tokenizer: str | None = None, **read):
    """`metrics.collect` on Ray: the same (Stats, Tally) for the same input."""
    from .stats_job import StatsJob

    job = StatsJob(tokenizer)
    run_jobs(inputs, [job], **read)
    stats, _, tally = job.result()
    return stats, tally


def collect_with_browser(inputs: Sequence[str | os.PathLike], *, tokenizer: str | None = None, **read):
    """`stats_job.collect_with_browser` on Ray: (Stats, Browser, Tally); the browser's compressed
    trace bodies come back to this process, which writes the page."""
    from .stats_job import StatsJob

    job = StatsJob(tokenizer, browser=True)
    run_jobs(inputs, [job], **read)
    return job.result()


def pack(
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    options=None,
    *,
    on_error: str = "skip",
    restart: bool = False,
    source: str | None = None,
    limit: int | None = None,
    address: str | None = None,
):
    """`pack_job.pack_to_dir` on Ray: shards holding the same sequences and labels for the same
    input (possibly packed together otherwise). An interrupted Ray run starts over (`restart`)."""
    from .pack_job import PackError, PackJob

    plan = ["ray", *(f.uri for f in input_files(inputs, source)), f"limit={limit}"]
    with PackJob(out_dir, options, plan, on_error=on_error, restart=restart) as job:
        if job.resumed_after:
            raise PackError(f"{out_dir} holds an interrupted Ray run, which cannot resume; pass --restart")
        run_jobs(inputs, [job], source=source, limit=limit, on_error=on_error, address=address)
        return job.finish()
