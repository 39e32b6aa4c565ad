"""Pack's spill: masked sequences wait on disk, not in memory, until all of them can be packed at once.

Three phases, each resumable (prepare/job.py drives them):

1. **spill**: the worker that masks an input split writes its sequences to one Arrow IPC file,
   DIR/spill/<random>.arrow (atomically), and sends back only the split's counts and the file's
   name (`SpillingMaskStage`). A file holds the fields of the masker's record (`MaskedSeq`),
   whatever they are: an ndarray field is a list column (its numpy dtype noted in the schema), a
   str, int, float or bool field a plain column; plus `split` (index in PARTITIONS) and `prefix_key`
   (a digest of the ids up to each shareable boundary, for --share-prefix).
2. **plan**: the parent reads what packing needs of every sequence (split, length, and with
   --share-prefix its boundaries and their digests; about 20 bytes a sequence and 20 a boundary, `SpillIndex`) and packs them all (`pack.plan_rows`).
3. **gather**: each output shard's rows are assembled from the spill files, memory-mapped for
   that shard only (`SpillIndex.gather`), so the parent holds one shard at a time.

The spill is about the size of the shards (8 bytes a token: ids and labels); DIR/spill/ is
removed once the manifest is written.
"""

from __future__ import annotations

import dataclasses
import mmap
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pyarrow as pa

from streamproc.io.files import atomic_path
from streamproc.prepare.stage import MaskedSplit, MaskStage
from streamproc.records import PARTITIONS

from streamproc.prepare.pack import IGNORE, prefix_keys, shareable

SPILL_DIR = "spill"
KEY_BYTES = 16
"""Bytes of one prefix digest in the `prefix_key` column."""


class SpillError(RuntimeError):
    """A spill file that could not be written (disk full, a file size limit), named with the
    space a run needs."""


@dataclass(slots=True)
class SpilledSplit:
    """What a worker sends back for one input split: its MaskedSplit with the sequences left
    out, and the name of the spill file that holds them (None: the split gave none)."""

    split: MaskedSplit
    file: str | None


class SpillingMaskStage(MaskStage):
    """MaskStage whose split result goes to a spill file in `spill_dir` as it ends."""

    def __init__(self, tokenizer: str, options, eval_fraction: float, spill_dir: str):
        super().__init__(tokenizer, options, eval_fraction)
        self.spill_dir = spill_dir

    def end(self, acc: MaskedSplit) -> SpilledSplit:
        name = write_spill(Path(self.spill_dir), acc.seqs)
        return SpilledSplit(dataclasses.replace(acc, seqs={s: [] for s in acc.seqs}), name)


# ----------------------------------------------------------------------------- writing (workers)


def write_spill(spill_dir: Path, seqs: dict[str, list]) -> str | None:
    """Write the records of every output split to a new spill file; its name, or None when
    there are none. SpillError when the disk refuses it (the partial file is removed)."""
    records = [(k, r) for k, s in enumerate(PARTITIONS) for r in seqs.get(s, ())]
    if not records:
        return None
    table = spill_table([r for _, r in records], np.fromiter((k for k, _ in records), np.int8, len(records)))
    path = spill_dir / f"{uuid.uuid4().hex}.arrow"
    try:
        with atomic_path(path) as tmp:
            with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
                writer.write_table(table)
    except OSError as e:
        raise SpillError(
            f"{path}: cannot write the spill file ({e.strerror or e}); pack needs free space in its output "
            f"directory of about twice the shards' size (docs/shards.md); free some and rerun to resume"
        ) from None
    return path.name


def spill_table(records: Sequence[Any], split: np.ndarray) -> pa.Table:
    """One column per field of the records (dataclasses of one type), plus split and prefix_key."""
    columns: dict[str, pa.Array] = {"split": _primitive(split)}
    fields: list[pa.Field] = [pa.field("split", pa.int8())]
    for f in dataclasses.fields(records[0]):
        values = [getattr(r, f.name) for r in records]
        array, dtype = _column(f.name, values)
        columns[f.name] = array
        fields.append(pa.field(f.name, array.type, metadata={"numpy": dtype} if dtype else None))
    keys = [_prefix_key(r) for r in records]
    columns["prefix_key"] = pa.Array.from_buffers(pa.large_binary(), len(keys), [None, *_offsets_and_data(keys)])
    fields.append(pa.field("prefix_key", pa.large_binary()))
    return pa.Table.from_arrays(list(columns.values()), schema=pa.schema(fields))


def _prefix_key(record: Any) -> bytes:
    """The digests of the record's shareable prefixes (`pack.prefix_keys`), KEY_BYTES each."""
    return b"".join(prefix_keys(record.input_ids, shareable(record)))


def _column(name: str, values: list) -> tuple[pa.Array, str]:
    """An Arrow array of one field's values, and the numpy dtype of an ndarray field ("" else).
    Built from numpy buffers: pa.array() would import pandas (0.2 s of CPU) in every worker."""
    first = values[0]
    if isinstance(first, np.ndarray):
        flat = np.concatenate(values) if len(values) > 1 else first
        offsets = np.zeros(len(values) + 1, np.int64)
        np.cumsum([len(v) for v in values], out=offsets[1:])
        return pa.LargeListArray.from_arrays(_primitive(offsets), _primitive(flat)), flat.dtype.str
    if isinstance(first, str):
        return pa.Array.from_buffers(pa.large_string(), len(values), [None, *_offsets_and_data([v.encode() for v in values])]), ""
    if isinstance(first, (bool, np.bool_)):
        return _primitive(np.asarray(values, np.bool_)), "|b1"
    if isinstance(first, (int, np.integer)):
        return _primitive(np.asarray(values, np.int64)), ""
    if isinstance(first, (float, np.floating)):
        return _primitive(np.asarray(values, np.float64)), ""
    raise TypeError(f"spill: field {name!r} holds a {type(first).__name__}, which the spill cannot store")


def _primitive(a: np.ndarray) -> pa.Array:
    a = np.ascontiguousarray(a)
    if a.dtype == np.bool_:
        a = a.view(np.uint8)  # Arrow's bool is a bitmap; the schema's numpy dtype restores it
    return pa.Array.from_buffers(pa.from_numpy_dtype(a.dtype), len(a), [None, pa.py_buffer(a)])


def _offsets_and_data(items: list[bytes]) -> tuple[pa.Buffer, pa.Buffer]:
    offsets = np.zeros(len(items) + 1, np.int64)
    np.cumsum([len(b) for b in items], out=offsets[1:])
    return pa.py_buffer(offsets), pa.py_buffer(b"".join(items))


# ----------------------------------------------------------------------------- reading (the parent)


class SpillFile:
    """One spill file, memory-mapped: columns as numpy views into the file; `close` unmaps it
    (every view must be gone by then). `read_list` reads one row of a list column with pread
    instead: a shard's sequences lie all over the spill, and touching them through the mapping
    maps the pages around each one too (the kernel's fault-around), so that resident memory
    grew to four times what the shard needs (measured: 510 MB mapped for 130 MB of sequences)."""

    def __init__(self, path: Path):
        self.path = path
        self._file = open(path, "rb")
        self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        self._base = pa.py_buffer(self._map)
        self.table = pa.ipc.open_file(pa.BufferReader(self._base)).read_all().combine_chunks()

    def __len__(self) -> int:
        return self.table.num_rows

    def values(self, name: str) -> np.ndarray:
        """A plain column, as numpy."""
        return _numpy(self.table.column(name).chunk(0), self.table.schema.field(name))

    def lists(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """A list column: offsets (len rows + 1) and the flat values, as numpy views."""
        column = self.table.column(name).chunk(0)
        return column.offsets.to_numpy(), _numpy(column.values, self.table.schema.field(name))

    def list_reader(self, name: str):
        """read(row) -> that row of list column `name`, as a new numpy array read from the file."""
        offsets, values = self.lists(name)
        start = values.ctypes.data - self._base.address  # where the flat values lie in the file
        fd, dtype, size = self._file.fileno(), values.dtype, values.dtype.itemsize

        def read(row: int) -> np.ndarray:
            a, b = int(offsets[row]), int(offsets[row + 1])
            out = np.empty(b - a, dtype)
            if b > a and os.preadv(fd, [out], start + a * size) != (b - a) * size:
                raise OSError(f"{self.path}: short read (the spill file was cut)")
            return out

        return read

    def close(self, strict: bool = True) -> None:
        """strict: a view still held is a BufferError (a bug); otherwise (an exception is
        unwinding, its frames may hold views) the mapping closes when the last view goes."""
        self.table = None
        self._base = None
        try:
            self._map.close()
        except BufferError:
            if strict:
                raise
        self._file.close()


def _numpy(array: pa.Array, field: pa.Field) -> np.ndarray:
    dtype = (field.metadata or {}).get(b"numpy")
    out = array.to_numpy(zero_copy_only=pa.types.is_primitive(array.type))
    return out.view(np.dtype(dtype.decode())) if dtype else out


@dataclass(slots=True)
class SpillIndex:
    """What packing needs of every spilled sequence, in plan order (file by file, row by row)."""

    spill_dir: Path
    files: list[str]  # spill files, in plan order
    file_of: np.ndarray  # int32: the file of each sequence (index into files)
    row_of: np.ndarray  # int32: its row in that file
    split: np.ndarray  # int8: index in PARTITIONS
    lengths: np.ndarray  # int32: tokens
    boundaries: list[list[int]]  # shareable prefix ends of each sequence (empty without share_prefix)
    prefix_keys: list[list[bytes]]  # the digest of the ids up to each of them

    @classmethod
    def read(cls, spill_dir: Path, files: Iterable[str | None], share_prefix: bool) -> "SpillIndex":
        names = [f for f in files if f]
        parts: dict[str, list[np.ndarray]] = {k: [] for k in ("file_of", "row_of", "split", "lengths")}
        keys: list[list[bytes]] = []
        boundaries: list[list[int]] = []
        for k, name in enumerate(names):
            f = SpillFile(spill_dir / name)
            try:
                n = len(f)
                parts["file_of"].append(np.full(n, k, np.int32))
                parts["row_of"].append(np.arange(n, dtype=np.int32))
                parts["split"].append(f.values("split").astype(np.int8))  # astype: copies, no view outlives the map
                parts["lengths"].append(np.diff(f.lists("input_ids")[0]).astype(np.int32))
                if share_prefix:
                    digests = f.table.column("prefix_key").to_pylist()
                    keys += [[d[j : j + KEY_BYTES] for j in range(0, len(d), KEY_BYTES)] for d in digests]
                    boundaries += _boundaries(f, [len(d) // KEY_BYTES for d in digests])
                else:
                    keys += [[]] * n
                    boundaries += [[]] * n
            finally:
                f.close()
        arrays = {k: np.concatenate(v) if v else np.zeros(0, np.int32) for k, v in parts.items()}
        return cls(spill_dir, names, arrays["file_of"], arrays["row_of"], arrays["split"].astype(np.int8),
                   arrays["lengths"], boundaries, keys)

    def gather(self, rows) -> "Gathered":
        """The spill files the rows need, memory-mapped; use as a context manager."""
        needed = sorted({int(self.file_of[i]) for row in rows for i in row.seqs})
        return Gathered(self, {k: SpillFile(self.spill_dir / self.files[k]) for k in needed})


def _boundaries(f: SpillFile, counts: list[int]) -> list[list[int]]:
    """Each row's shareable prefix ends: its `boundaries` column, else its `prefix_len` (a record
    without boundaries), as `pack.shareable` reads them."""
    if "boundaries" in f.table.column_names:
        offsets, values = f.lists("boundaries")
        return [values[a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:])]
    if "prefix_len" in f.table.column_names:
        return [[p] if k else [] for p, k in zip(f.values("prefix_len").tolist(), counts)]
    return [[] for _ in counts]


class Gathered:
    """ids / trained / trace_ids of spilled sequences by global index, as `pack.assemble` reads
    them: views into the memory-mapped files, valid until the block ends."""

    def __init__(self, index: SpillIndex, files: dict[int, SpillFile]):
        self.index, self.files = index, files
        self._cols = {k: (f.list_reader("input_ids"), f.list_reader("labels"), f.table.column("trace_id")) for k, f in files.items()}
        self.ids, self.trained, self.trace_ids = _ById(self, 0), _ById(self, 1), _ById(self, 2)

    def item(self, i: int, what: int):
        f, r = int(self.index.file_of[i]), int(self.index.row_of[i])
        ids, labels, names = self._cols[f]
        if what == 2:
            return names[r].as_py()
        return ids(r) if what == 0 else labels(r) != IGNORE

    def __enter__(self) -> "Gathered":
        return self

    def __exit__(self, *exc) -> None:
        self._cols = {}
        for f in self.files.values():
            f.close(strict=exc[0] is None)  # Ctrl-C mid-shard stops with its own message, not a BufferError


@dataclass(slots=True)
class _ById:
    gathered: Gathered
    what: int

    def __getitem__(self, i: int):
        return self.gathered.item(i, self.what)
