"""Output files: written to a temporary name beside the target, then renamed into place; the
format of a file of rows or records told from its extension, in one place."""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

import orjson

from .records import BadRow


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's directory; rename it to `path` on success only."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    # mkstemp makes the file private (0600); outputs get the usual permissions instead.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: str | os.PathLike, obj) -> None:
    write_bytes(path, orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY))


def write_rejects(path: str | os.PathLike, bad: Iterable[BadRow]) -> int:
    """One JSON line per rejected row: file, row, field, error and the raw row where it was read."""
    n = 0
    try:
        compression = output_format(path).compression
    except ValueError:  # a rejects file named otherwise is plain JSON lines
        compression = None
    with atomic_path(path) as tmp, jsonl_writer(tmp, compression) as f:
        for b in bad:
            rec = {"file": b.loc.file, "row": b.loc.row, "field": b.field, "error": b.message, "raw": b.raw}
            f.write(orjson.dumps(rec, default=str, option=orjson.OPT_APPEND_NEWLINE))
            n += 1
    return n


@dataclass(slots=True, frozen=True)
class OutputFormat:
    kind: str  # jsonl | parquet
    compression: str | None = None  # jsonl: gzip | zstd


# The extensions the readers accept (sources.py), less .json arrays, which cannot be streamed.
_OUTPUTS = {
    ".jsonl": OutputFormat("jsonl"),
    ".ndjson": OutputFormat("jsonl"),
    ".jsonl.gz": OutputFormat("jsonl", "gzip"),
    ".ndjson.gz": OutputFormat("jsonl", "gzip"),
    ".jsonl.zst": OutputFormat("jsonl", "zstd"),
    ".jsonl.zstd": OutputFormat("jsonl", "zstd"),
    ".ndjson.zst": OutputFormat("jsonl", "zstd"),
    ".parquet": OutputFormat("parquet"),
    ".pq": OutputFormat("parquet"),
}
OUTPUT_EXTENSIONS = tuple(_OUTPUTS)


def output_format(path: str | os.PathLike) -> OutputFormat:
    """The format of a rows/records output by its extension; ValueError naming the ones known."""
    name = os.path.basename(str(path)).lower()
    for ext in sorted(_OUTPUTS, key=len, reverse=True):
        if name.endswith(ext) and len(name) > len(ext):
            return _OUTPUTS[ext]
    raise ValueError(f"{path}: unknown output type (expected a name ending in {', '.join(OUTPUT_EXTENSIONS)})")


@contextlib.contextmanager
def jsonl_writer(path: str | os.PathLike, compression: str | None) -> Iterator[BinaryIO]:
    """A binary file for JSON lines at `path`, compressed as asked. gzip without a timestamp,
    so the same lines make the same bytes."""
    with open(path, "wb") as raw:
        if compression == "gzip":
            with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) as f:
                yield f
        elif compression == "zstd":
            import zstandard

            # Buffered: zstandard's writer has no writelines, and many small writes cost more.
            with io.BufferedWriter(zstandard.ZstdCompressor().stream_writer(raw, closefd=False)) as f:
                yield f
        else:
            yield raw
