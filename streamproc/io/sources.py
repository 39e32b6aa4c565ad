"""Streaming sources: local Parquet / JSONL (plain, gzip, zstd) / JSON, and Hugging Face datasets.

Work is planned as splits without reading the data: Parquet by row groups (from the footer),
plain JSONL by byte ranges (aligned to the next newline when read), anything else is one split
per file. A split is a small picklable record, so worker processes each open their own.
Rows come out validated (`Row`) or set aside (`BadRow`); reading never raises on bad data.
"""

from __future__ import annotations

import glob
import gzip
import io
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import orjson

from streamproc.io import storage
from streamproc.io.layouts import MESSAGE_KEYS, row_from_record
from streamproc.records import BadRow, Location, Row, RowError

HUB_DATASET = "lambda/hermes-agent-reasoning-traces"
SAMPLE = Path(__file__).parents[1] / "data" / "sample.parquet"
SHARD_BYTES = 32 << 20  # fixed target, so the plan (and every result) is the same for any --workers

_PARQUET = (".parquet", ".pq")
_JSONL = (".jsonl", ".ndjson", ".jsonl.gz", ".jsonl.zst", ".jsonl.zstd", ".ndjson.gz", ".ndjson.zst")
_JSON = (".json", ".json.gz", ".json.zst")
BOM = b"\xef\xbb\xbf"
ROW_KEYS = ("data", "rows", "train")  # where a .json object usually keeps its list of rows


@dataclass(slots=True, frozen=True)
class Part:
    """A contiguous piece of one input."""

    kind: str  # parquet | jsonl | json | hub | error
    path: str
    source: str
    row_groups: tuple[int, ...] = ()  # parquet
    first_row: int = 0  # parquet: index of the first row of the first row group
    rows: int = -1  # parquet: rows in these row groups (from the footer); -1: not known before reading
    byte_range: tuple[int, int] | None = None  # plain jsonl
    config: str | None = None  # hub
    split: str = "train"  # hub
    data_files: tuple[str, ...] = ()  # hub builder on local files (parquet/json)
    index: int = 0  # hub: this shard of num_shards
    num_shards: int = 1
    nbytes: int = 0  # for progress
    error: str = ""  # kind == error: why the input could not be opened


@dataclass(slots=True, frozen=True)
class Split:
    """An input split, the unit of work of one worker: parts read in order, at most `limit` rows.
    (Not an output shard: those are the Arrow files pack writes, see shards.py.)"""

    parts: tuple[Part, ...]
    limit: int | None = None

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.parts)

    def key(self) -> str:
        """What the split reads, as a stable string (a pack run's plan, to resume it)."""
        return f"Split({self.parts!r}, limit={self.limit})"

    def where(self) -> str:
        """What the split reads, for messages: `a.jsonl (bytes 0-33554432)`, `b.parquet (row groups 4-7)`."""
        named = "; ".join(_part_where(p) for p in self.parts[:3]) + ("; ..." if len(self.parts) > 3 else "")
        return f"the first {self.limit:,} rows of {named}" if self.limit is not None else named


def _part_where(p: Part) -> str:
    if p.kind == "parquet" and p.row_groups:
        groups = f"{p.row_groups[0]}" if len(p.row_groups) == 1 else f"{p.row_groups[0]}-{p.row_groups[-1]}"
        return f"{p.path} (row groups {groups}, from row {p.first_row})"
    if p.byte_range:
        return f"{p.path} (bytes {p.byte_range[0]}-{p.byte_range[1]})"
    if p.kind == "hub" and p.num_shards > 1:
        return f"{p.path} (shard {p.index} of {p.num_shards})"
    return p.path


class SourceError(RuntimeError):
    """An input that cannot be used at all (missing file, unreachable hub)."""


@dataclass(slots=True, frozen=True)
class Unread:
    """Something an input named that is not read, and why (listed in the count line)."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path} ({self.reason})"


class Plan(list):
    """The splits of a run (a plain list of Split), and `unread`: what the inputs named that
    is not read, so a run can say so."""

    def __init__(self, splits: Iterable[Split] = (), unread: Iterable[Unread] = ()):
        super().__init__(splits)
        self.unread: tuple[Unread, ...] = tuple(unread)


def expand(inputs: Sequence[str | os.PathLike]) -> list[str]:
    """The files `scan` reads."""
    return scan(inputs)[0]


def scan(inputs: Sequence[str | os.PathLike]) -> tuple[list[str], list[Unread]]:
    """Files to read, and what is not read. Files as named, directories (recursively, through
    links to directories, each directory once), globs (a matched directory as if named) and URIs
    (storage.py: a URI directory is listed recursively),
    each directory's or glob's files in sorted order. A named file of an unknown type is read as
    a file-level reject; inside a directory or glob it is listed as unread, with unreadable
    directories, broken links, FIFOs and streamproc's own rejects files."""
    out: list[str] = []
    unread: list[Unread] = []
    for item in inputs:
        s = storage.local_path(str(item))
        if storage.is_uri(s):
            out.extend(_collect_uri(s, unread))
        elif any(c in s for c in "*?["):
            matches = sorted(glob.glob(s, recursive=True))
            if not matches:
                raise SourceError(f"{s}: no file matches this pattern")
            out.extend(_collect(matches, unread))
        elif os.path.isdir(s):
            before = len(unread)
            found = _collect([s], unread)
            if not found:
                why = "".join(f"; not read: {u}" for u in unread[before:before + 5])
                raise SourceError(f"{s}: directory holds no .parquet, .jsonl or .json file{why}")
            out.extend(found)
        elif os.path.isfile(s):
            out.append(s)
        elif os.path.exists(s):
            raise SourceError(f"{s}: not a regular file")
        else:
            raise SourceError(f"{s}: no such file or directory")
    return out, unread


def _collect(paths: list[str], unread: list[Unread]) -> list[str]:
    """The readable-kind files under `paths` (files, or directories walked), sorted; the rest
    appended to `unread`. A file or directory reached twice (overlapping matches, links) once."""
    files: dict[str, str] = {}  # real path -> path as reached
    seen: set[str] = set()  # real paths of the files met
    dirs: set[tuple[int, int]] = set()

    def add_file(path: str) -> None:
        real = os.path.realpath(path)
        if real in seen:
            return
        seen.add(real)
        if not os.path.exists(path):
            unread.append(Unread(path, "broken link"))
        elif not os.path.isfile(path):  # a FIFO or device: opening it could wait forever
            unread.append(Unread(path, "not a regular file"))
        elif why := _not_input(path):
            unread.append(Unread(path, why))
        else:
            files[real] = path

    def unreadable(e: OSError) -> None:
        unread.append(Unread(str(e.filename), f"unreadable directory: {e.strerror}"))

    for top in paths:  # files first: a link inside a matched directory may lead back to them
        if not os.path.isdir(top):
            add_file(top)
    for top in filter(os.path.isdir, paths):
        for dirpath, dirnames, filenames in os.walk(top, onerror=unreadable, followlinks=True):
            st = os.stat(dirpath)
            if (st.st_dev, st.st_ino) in dirs:  # a link back to a directory already walked
                dirnames[:] = []
                continue
            dirs.add((st.st_dev, st.st_ino))
            dirnames.sort()
            for name in sorted(filenames):
                add_file(os.path.join(dirpath, name))
    return sorted(files.values())


def _not_input(path: str) -> str | None:
    """Why a file met in a directory or glob is not read, or None to read it."""
    if file_kind(path) is None:
        return "unsupported type"
    if path.endswith(".rejects.jsonl"):
        return "a rejects file streamproc wrote"
    return None


def _collect_uri(uri: str, unread: list[Unread]) -> list[str]:
    """The readable-kind files a URI names (a directory: listed recursively, sorted)."""
    try:
        found = storage.list_uri(uri)
    except OSError as e:
        raise SourceError(str(e) if isinstance(e, FileNotFoundError) else f"{uri}: cannot list: {e}") from None
    if found == [uri]:
        return found
    files = []
    for f in found:
        why = _not_input(f)
        if why:
            unread.append(Unread(f, why))
        else:
            files.append(f)
    if not files:
        raise SourceError(f"{uri}: directory holds no .parquet, .jsonl or .json file")
    return files


def file_kind(path: str) -> str | None:
    """parquet, jsonl or json by the file's extension (compressed ones included), else None."""
    p = path.lower()
    if p.endswith(_PARQUET):
        return "parquet"
    if p.endswith(_JSONL):
        return "jsonl"
    if p.endswith(_JSON):
        return "json"
    return None


def plan(
    inputs: Sequence[str | os.PathLike] = (),
    *,
    dataset: str | None = None,
    configs: Sequence[str] = (),
    split: str = "train",
    source: str | None = None,
    limit: int | None = None,
    shard_bytes: int = SHARD_BYTES,
    hub_shards: int = 8,
) -> Plan:
    """Plan splits for local inputs or a Hub dataset. With no input at all: the built-in sample.

    With `limit`, the first N rows of a sequential read, exactly: Parquet parts whose row counts
    (from their footers) fit in what is left stay splits of their own, read in parallel; the rest
    becomes one split read in order up to the remaining count.
    """
    unread: list[Unread] = []
    if dataset:
        parts = _hub_parts(dataset, list(configs) or [None], split, hub_shards)
    else:
        files, unread = scan(inputs) if inputs else ([str(SAMPLE)], [])
        parts = [p for f in files for p in _file_parts(f, source, shard_bytes)]
    if limit is not None:
        return Plan(_first_rows(parts, limit), unread)
    return Plan((Split((p,)) for p in parts), unread)


def _first_rows(parts: list[Part], limit: int) -> list[Split]:
    """Splits reading exactly the first `limit` rows of `parts` (a Parquet part yields one item,
    a Row or a BadRow, per row its footer counts, so whole parts can be counted in advance)."""
    splits, left = [], limit
    for k, part in enumerate(parts):
        if left <= 0:
            break
        if part.rows < 0 or part.rows > left:
            splits.append(Split(tuple(parts[k:]), left))
            break
        splits.append(Split((part,), part.rows))
        left -= part.rows
    return splits or [Split(tuple(parts), limit)]


def source_label(path: str, source: str | None) -> str:
    """The `source` value of a file's rows: the one given, else the file's name less extensions."""
    if source:
        return source
    name = os.path.basename(path)
    for ext in sorted(_PARQUET + _JSONL + _JSON, key=len, reverse=True):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


def _file_parts(path: str, source: str | None, shard_bytes: int) -> list[Part]:
    kind = file_kind(path)
    label = source_label(path, source)
    if kind is None:
        return [Part("error", path, label, error="unknown file type (expected .parquet, .jsonl[.gz|.zst] or .json)")]
    try:
        size = storage.size(path)
    except OSError as e:  # an unreadable file is a file-level reject, not the end of the run
        return [Part("error", path, label, error=f"cannot open: {e.strerror or e}")]
    if kind == "parquet":
        try:
            meta = storage.parquet_file(path).metadata
        except Exception as e:  # a truncated or corrupt footer
            return [Part("error", path, label, error=f"not a readable Parquet file: {e}")]
        parts, group, first, acc, row = [], [], 0, 0, 0
        for g in range(meta.num_row_groups):
            rg = meta.row_group(g)
            if not group:
                first = row
            group.append(g)
            acc += rg.total_byte_size
            row += rg.num_rows
            if acc >= shard_bytes:
                parts.append(Part("parquet", path, label, tuple(group), first, rows=row - first, nbytes=acc))
                group, acc = [], 0
        if group or not parts:
            parts.append(Part("parquet", path, label, tuple(group), first, rows=row - first, nbytes=acc))
        # Row-group byte sizes are uncompressed; scale so progress adds up to the file size.
        total = sum(p.nbytes for p in parts) or 1
        return [replace(p, nbytes=p.nbytes * size // total) for p in parts]
    if kind == "jsonl" and path.lower().endswith((".jsonl", ".ndjson")):
        n = max(1, -(-size // shard_bytes))
        step = -(-size // n) if size else 0
        return [
            Part("jsonl", path, label, byte_range=(i * step, min(size, (i + 1) * step)), nbytes=min(size, (i + 1) * step) - i * step)
            for i in range(n)
        ]
    return [Part(kind, path, label, nbytes=size)]


def _hub_parts(dataset: str, configs: list[str | None], split: str, hub_shards: int) -> list[Part]:
    parts = []
    for config in configs:
        ds = _load_streaming(dataset, config, split, ())
        n = max(1, min(hub_shards, getattr(ds, "num_shards", 1) or 1))
        label = config or dataset.rsplit("/", 1)[-1]
        parts.extend(Part("hub", dataset, label, config=config, split=split, index=i, num_shards=n) for i in range(n))
    return parts


def hub_part(builder: str, data_files: Sequence[str], source: str, split: str = "train") -> Part:
    """A part read through `datasets` streaming from local files (builder `parquet` or `json`).

    Same code path as the Hub, usable offline; also the way to compare the two readers.
    """
    return Part("hub", builder, source, split=split, data_files=tuple(data_files))


def _load_streaming(dataset: str, config: str | None, split: str, data_files: tuple[str, ...]):
    import datasets

    try:
        if data_files:
            return datasets.load_dataset(dataset, data_files=list(data_files), split=split, streaming=True)
        return datasets.load_dataset(dataset, config, split=split, streaming=True)
    except Exception as e:
        where = f"{dataset}" + (f" (config {config})" if config else "")
        raise SourceError(
            f"cannot open {where} from the Hugging Face Hub: {type(e).__name__}: {e}\n"
            f"Offline? Download the Parquet files and pass them as INPUT, "
            f"or run without --dataset to use the built-in sample ({SAMPLE.name})."
        ) from e


# ----------------------------------------------------------------------------- reading


def read(split: Split) -> Iterator[Row | BadRow]:
    """Rows of a split in order: validated Rows, or BadRows for what does not fit."""
    left = split.limit
    for part in split.parts:
        for item in _read_part(part):
            if left is not None:
                if left <= 0:
                    return
                left -= 1
            yield item


def iter_rows(inputs: Sequence[str | os.PathLike] = (), **plan_kwargs) -> Iterator[Row | BadRow]:
    """Every row of the inputs in order, in this process (the notebook entry point)."""
    for split in plan(inputs, **plan_kwargs):
        yield from read(split)


def _read_part(part: Part) -> Iterator[Row | BadRow]:
    if part.kind == "error":
        yield BadRow(Location(part.path, -1), "<file>", part.error)
    elif part.kind == "parquet":
        yield from _read_parquet(part)
    elif part.kind == "jsonl":
        yield from _read_jsonl(part)
    elif part.kind == "json":
        yield from _read_json(part)
    else:
        yield from _read_hub(part)


def validate_row(obj, loc: Location, source: str) -> Row | BadRow:
    """A decoded record as a Row (in either layout, io/layouts.py), or the BadRow saying which field is wrong."""
    try:
        return row_from_record(obj, loc, source)
    except RowError as e:
        return e.bad


def _read_parquet(part: Part) -> Iterator[Row | BadRow]:
    row = part.first_row
    try:
        pf = storage.parquet_file(part.path)
    except Exception as e:  # the file changed or broke since plan() read its footer
        yield BadRow(Location(part.path, row), "<file>", f"not a readable Parquet file: {e}")
        return
    # One row group at a time: a corrupt group costs its own rows only, each counted and named.
    for g in part.row_groups:
        end = row + pf.metadata.row_group(g).num_rows
        try:
            for batch in pf.iter_batches(batch_size=256, row_groups=[g]):
                for obj in batch.to_pylist():
                    yield validate_row(obj, Location(part.path, row), part.source)
                    row += 1
        except Exception as e:
            why = f"row group {g} unreadable from row {row} on ({end - row} rows lost): {type(e).__name__}: {e}"
            for lost in range(row, end):
                yield BadRow(Location(part.path, lost), "<row group>", why)
        row = end


def _open_text(path: str) -> io.BufferedIOBase:
    p = path.lower()
    if p.endswith(".gz"):
        raw = storage.open_input(path)
        f = gzip.GzipFile(fileobj=raw, mode="rb")
        f.myfileobj = raw  # what gzip.open sets, so that closing f closes the file too
        return f
    if p.endswith((".zst", ".zstd")):
        import zstandard

        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(storage.open_input(path)))
    return storage.open_input(path)


def _read_jsonl(part: Part) -> Iterator[Row | BadRow]:
    try:
        f = _open_text(part.path)
    except OSError as e:  # unreadable since plan() opened it
        yield BadRow(Location(part.path, -1), "<file>", f"cannot open: {e.strerror or e}")
        return
    with f:
        base: int | None = 0  # line number of the range's first line; counted only when an error needs it
        first = 0
        end = None
        if part.byte_range:
            start, end = part.byte_range
            if start > 0:
                # A range starts after the first newline at or past `start - 1`: the line that
                # straddles the boundary belongs to the previous range.
                f.seek(start - 1)
                f.readline()
                first = f.tell()
                base = None
        rel = 0
        while True:
            at = f.tell()
            if end is not None and at >= end:
                return
            try:
                line = f.readline()
            except Exception as e:  # a truncated or corrupt .gz / .zst stream (each decoder has its own error type)
                yield BadRow(Location(part.path, -1, at), "<file>", f"unreadable from here on: {type(e).__name__}: {e}")
                return
            if not line:
                return
            item = decode_line(line, Location(part.path, -1 if base is None else base + rel, at), part.source)
            if isinstance(item, BadRow) and base is None:
                # Counting the lines before this range costs a read of them: done for errors only,
                # so planning and reading stay linear in the file size.
                base = _count_lines(part.path, first)
                item.loc = Location(part.path, base + rel, at)
            rel += 1
            if item is not None:
                yield item


def decode_line(line: bytes, loc: Location, source: str) -> Row | BadRow | None:
    """One JSONL line as a row, a BadRow, or None when it is blank. A UTF-8 byte-order mark
    (which some editors write at the start of a file) is dropped."""
    if line.startswith(BOM):
        line = line[3:]
    if not line.strip():
        return None
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as e:
        msg = "invalid UTF-8" if "utf-8" in str(e).lower() else f"broken JSON line: {e}"
        return BadRow(loc, "<line>", msg, line.decode("utf-8", "replace")[:2000])
    return validate_row(obj, loc, source)


def _count_lines(path: str, upto: int) -> int:
    """Line number at byte offset `upto` (a range's first line), counted in 1 MiB blocks."""
    n = 0
    with storage.open_input(path) as f:
        left = upto
        while left > 0:
            block = f.read(min(left, 1 << 20))
            if not block:
                break
            n += block.count(b"\n")
            left -= len(block)
    return n


def _read_json(part: Part) -> Iterator[Row | BadRow]:
    try:
        with _open_text(part.path) as f:
            data = f.read()
    except Exception as e:  # a truncated or corrupt .gz / .zst stream
        yield BadRow(Location(part.path, -1), "<file>", f"unreadable: {type(e).__name__}: {e}")
        return
    try:
        obj = orjson.loads(data[3:] if data.startswith(BOM) else data)
    except orjson.JSONDecodeError as e:
        yield BadRow(Location(part.path, -1), "<file>", f"broken JSON: {e}")
        return
    rows = rows_in(obj)
    if isinstance(rows, str):
        yield BadRow(Location(part.path, -1), "<file>", rows)
        return
    for i, r in enumerate(rows):
        yield validate_row(r, Location(part.path, i), part.source)


_TURN_KEYS = ("conversations", *MESSAGE_KEYS)


def rows_in(obj: Any) -> list | str:
    """The rows of a decoded .json file, or why they cannot be told: an array of rows, one row,
    or an object whose one list of rows (objects with `conversations` or `messages`) holds them,
    else the list under a well-known key (data, rows, train)."""
    if isinstance(obj, list):
        return obj
    if not isinstance(obj, dict):
        return f"expected a JSON array of rows, found a {type(obj).__name__}"
    if any(k in obj for k in _TURN_KEYS):
        return [obj]
    lists = {k: v for k, v in obj.items() if isinstance(v, list) and k not in _TURN_KEYS}
    holding = [k for k, v in lists.items() if any(isinstance(r, dict) and any(t in r for t in _TURN_KEYS) for r in v)]
    if len(holding) == 1:
        return lists[holding[0]]
    known = [k for k in lists if k in ROW_KEYS]
    if not holding and len(known) == 1:
        return lists[known[0]]
    if not lists:
        return f"expected a JSON array of rows, or an object holding one; the object's keys: {', '.join(obj) or 'none'}"
    return f"cannot tell which list holds the rows: {', '.join(holding or lists)} (keep the rows under one key, e.g. \"data\")"


def _read_hub(part: Part) -> Iterator[Row | BadRow]:
    ds = _load_streaming(part.path, part.config, part.split, part.data_files)
    if part.num_shards > 1:
        ds = ds.shard(num_shards=part.num_shards, index=part.index)
    where = f"hf://{part.path}" + (f"/{part.config}" if part.config else "") + f"[{part.split}]"
    if part.num_shards > 1:
        where += f"#shard{part.index}"
    for i, obj in enumerate(ds):
        yield validate_row(obj, Location(where, i), part.source)


ON_ERROR = ("skip", "fail")


def apply_on_error(items: Iterable[Row | BadRow], on_error: str) -> Iterator[Row | BadRow]:
    """Read items under --on-error, the one definition of it: `fail` raises RowError at the
    first bad row; `skip` passes bad rows on, to be counted and set aside."""
    for item in items:
        if isinstance(item, BadRow) and on_error == "fail":
            raise RowError(item)
        yield item


def good_rows(split: Split, on_error: str, rejects: list[BadRow]) -> Iterator[Row]:
    """The good rows of a split, in this process (a notebook, a benchmark; commands use the
    runner), bad ones set aside in `rejects` under `skip`."""
    for item in apply_on_error(read(split), on_error):
        if isinstance(item, BadRow):
            rejects.append(item)
        else:
            yield item
