"""Output files: written to a temporary name beside the target, then renamed into place."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

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
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        for b in bad:
            rec = {"file": b.loc.file, "row": b.loc.row, "field": b.field, "error": b.message, "raw": b.raw}
            f.write(orjson.dumps(rec, default=str, option=orjson.OPT_APPEND_NEWLINE))
            n += 1
    return n
