"""Input files by local path or by URI (`s3://`, `gs://`, `abfs://`, `hdfs://`, `file://`).

Local paths go through the OS; URIs through pyarrow's filesystems, which streamproc already
depends on, so no other client library is needed. The reader (sources.py) opens every input
here, so the local engine and the Ray engine read URIs alike.
"""

from __future__ import annotations

import io
import os
from typing import BinaryIO


def is_uri(path: str) -> bool:
    """A remote URI; `file://` ones are read as the local paths they name (see local_path)."""
    return "://" in path and not path.startswith("file://")


def local_path(path: str) -> str:
    """`file:///a/b` -> `/a/b`: local files are walked by the OS, which follows links to
    directories once each (pyarrow's local listing loops through a link to a parent)."""
    return path[len("file://"):] if path.startswith("file://") else path


def _fs(uri: str):
    import pyarrow.fs as pafs

    return pafs.FileSystem.from_uri(uri)


def list_uri(uri: str) -> list[str]:
    """The URI itself if it names a file, else the URIs of every file under it, sorted."""
    import pyarrow.fs as pafs

    fs, path = _fs(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"{uri}: no such file or directory")
    if info.type == pafs.FileType.File:
        return [uri]
    # Each file's URI is the directory's URI plus the file's path below it, so what the URI holds
    # besides the path (an HDFS host and port, an Azure account) is kept.
    base, root = path.rstrip("/"), uri.rstrip("/")
    found = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    return sorted(root + i.path[len(base):] for i in found if i.type == pafs.FileType.File)


def size(path: str) -> int:
    """The file's size in bytes; OSError if it cannot be opened."""
    if not is_uri(path):
        with open(path, "rb"):  # an unreadable file fails here, not later in a worker
            return os.path.getsize(path)
    fs, p = _fs(path)
    with fs.open_input_file(p) as f:
        return f.size()


def open_input(path: str) -> BinaryIO:
    """A buffered, seekable binary reader."""
    if not is_uri(path):
        return open(path, "rb")
    fs, p = _fs(path)
    return io.BufferedReader(_Raw(fs.open_input_file(p)), buffer_size=1 << 20)


def parquet_file(path: str):
    import pyarrow.parquet as pq

    if not is_uri(path):
        return pq.ParquetFile(path)
    fs, p = _fs(path)
    return pq.ParquetFile(fs.open_input_file(p))


class _Raw(io.RawIOBase):
    """A pyarrow input file as a Python raw stream (pyarrow's own has no readline)."""

    def __init__(self, f):
        self.f = f

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        data = self.f.read(len(b))
        b[: len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.f.seek(offset, whence)

    def tell(self) -> int:
        return self.f.tell()

    def close(self) -> None:
        self.f.close()
        super().close()
