"""Output files: written to a temporary name beside the target, then renamed into place; the
format of a file of rows or records told from its extension, in one place."""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import secrets
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

import orjson

from streamproc.records import BadRow


class OutputError(RuntimeError):
    """An output path that cannot be written: it names the path and the reason."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's directory; rename it to `path` on success only.

    The temporary name, `.NAME.PID.XXXX.tmp`, holds the writer's process id: the temporary
    file a killed run left behind is removed by the next write of the same output."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    # The name is chosen before the file exists, so an interrupt at any point after it is made
    # lands in the `try` that removes it (with mkstemp, one between its return and the `try`
    # left the file behind). The mode is the usual one, less the umask.
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def remove_stale_temporaries(path: Path) -> None:
    """Delete `.NAME.*.tmp` files beside `path` whose writer is no longer running."""
    prefix = f".{path.name}."
    try:
        names = os.listdir(path.parent)
    except OSError:
        return
    for name in names:
        if name.startswith(prefix) and name.endswith(".tmp"):
            pid = name[len(prefix) :].split(".", 1)[0]
            if not (pid.isdigit() and pid_alive(int(pid))):
                with contextlib.suppress(OSError):
                    os.unlink(path.parent / name)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


@contextlib.contextmanager
def dir_lock(directory: Path, name: str) -> Iterator[None]:
    """Hold DIR/NAME, holding this process's id, while the block runs; refuse when a running
    process holds it (a lock left by a killed one is taken over)."""
    path = Path(directory) / name
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            try:
                pid = int(path.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and pid != os.getpid() and pid_alive(pid):
                raise OutputError(f"{directory}: another run (pid {pid}) is writing here; wait for it to end, or stop it") from None
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    with os.fdopen(fd, "w") as f:
        f.write(f"{os.getpid()}\n")
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def check_output_file(path: str | os.PathLike) -> None:
    """Raise OutputError, naming the path and the reason, when a file cannot be written there;
    checked before the work starts."""
    p = Path(path)
    if p.is_dir():
        raise OutputError(f"{p}: is a directory, not a file")
    _check_creatable(p.parent, p)


def check_output_dir(path: str | os.PathLike) -> None:
    """Raise OutputError when `path` cannot be (or become) a writable directory."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise OutputError(f"{p}: is a file, not a directory")
    _check_creatable(p, p)


def _check_creatable(directory: Path, target: Path) -> None:
    """`directory` exists and is writable, or its nearest existing ancestor is."""
    d = directory if str(directory) else Path(".")
    while not d.exists():
        if d.is_symlink() or d.parent == d:
            raise OutputError(f"{target}: {d} cannot be created")
        d = d.parent
    if not d.is_dir():
        raise OutputError(f"{target}: {d} is a file, not a directory")
    if not os.access(d, os.W_OK | os.X_OK):
        raise OutputError(f"{target}: {d} is not writable")


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


STDOUT = "-"


def to_stdout(path: str | os.PathLike | None) -> bool:
    return path is not None and str(path) == STDOUT


@contextlib.contextmanager
def output_path(path: str | os.PathLike, suffix: str = ".jsonl") -> Iterator[Path]:
    """The path a writer should write to. For `-`: a private temporary file (named with `suffix`,
    so the writer picks that format) copied to stdout once the writer has finished, so stdout
    gets a whole file or nothing."""
    if not to_stdout(path):
        yield Path(path)
        return
    with tempfile.TemporaryDirectory(prefix="streamproc-") as d:
        tmp = Path(d) / f"stdout{suffix}"
        yield tmp
        sys.stdout.flush()
        with open(tmp, "rb") as f:
            try:
                shutil.copyfileobj(f, sys.stdout.buffer)
                sys.stdout.buffer.flush()
            except BrokenPipeError:  # `| head`: the reader has what it wanted
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())


@contextlib.contextmanager
def jsonl_writer(path: str | os.PathLike, compression: str | None) -> Iterator[BinaryIO]:
    """A binary file for JSON lines at `path`, compressed as asked. gzip without a timestamp or
    a file name, so the same lines make the same bytes."""
    with open(path, "wb") as raw:
        if compression == "gzip":
            # No name either: the file's would be its temporary name, which differs run to run.
            with gzip.GzipFile(filename="", fileobj=raw, mode="wb", compresslevel=6, mtime=0) as f:
                yield f
        elif compression == "zstd":
            import zstandard

            # Buffered: zstandard's writer has no writelines, and many small writes cost more.
            with io.BufferedWriter(zstandard.ZstdCompressor().stream_writer(raw, closefd=False)) as f:
                yield f
        else:
            yield raw
