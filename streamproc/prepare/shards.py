"""Packed rows on disk: Arrow IPC shards, written atomically, read back memory-mapped.

One row = one packed row (see SCHEMA and docs/shards.md). Rows are not padded:
prefix_len + sum(seq_lens) == len(input_ids) <= row_len. A row with prefix_len > 0 holds a shared
system-turn prefix once, then remainders that each continue it as if alone. Shards use the Arrow IPC *stream* format, the one `datasets` writes and reads
(`datasets.Dataset.from_file` opens nothing else), under the `.arrow` extension.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa

from streamproc.io.files import atomic_path
from streamproc.prepare.pack import IGNORE, Packed
from streamproc.records import PARTITIONS

SCHEMA = pa.schema(
    [
        ("input_ids", pa.list_(pa.int32())),
        ("labels", pa.list_(pa.int32())),  # IGNORE (-100) or the input id at the same position, unshifted
        ("seq_lens", pa.list_(pa.int32())),  # lengths of the packed sequences, in order
        ("trace_ids", pa.list_(pa.string())),  # the trace each sequence came from
        ("prefix_len", pa.int32()),  # leading tokens every sequence of the row shares; 0: none
    ]
)
MANIFEST = "manifest.json"
FORMAT = "streamproc-packed/2"
"""Version 2 added `prefix_len` (shared-prefix rows); version 1 rows read as prefix_len 0."""
FORMATS = ("streamproc-packed/1", FORMAT)


class ShardFormatError(ValueError):
    """Shards this version cannot read, or damaged ones."""


@dataclass(slots=True)
class ShardInfo:
    """One written shard, as listed in the manifest."""

    split: str
    file: str  # name inside the output directory
    rows: int
    sequences: int
    tokens: int
    trainable: int
    sha256: str
    sequence_tokens: int = 0  # tokens of its sequences written whole (> tokens where rows share a prefix)


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:05d}.arrow"


def to_table(p: Packed) -> pa.Table:
    # Arrays are made from their buffers: pa.array() would import pandas (0.2 s of CPU) to ask
    # whether its argument is a pandas object.
    def ints(a: np.ndarray) -> pa.Array:
        a = np.ascontiguousarray(a, np.int32)
        return pa.Array.from_buffers(pa.int32(), len(a), [None, pa.py_buffer(a)])

    def lists(values: pa.Array, bounds: np.ndarray) -> pa.Array:
        return pa.ListArray.from_arrays(ints(bounds), values)

    raw = [t.encode() for t in p.trace_ids]
    offsets = np.zeros(len(raw) + 1, np.int32)
    np.cumsum([len(b) for b in raw], out=offsets[1:])
    names = pa.Array.from_buffers(pa.string(), len(raw), [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(raw))])
    return pa.Table.from_arrays(
        [
            lists(ints(p.input_ids), p.row_bounds),
            lists(ints(p.labels), p.row_bounds),
            lists(ints(p.seq_lens), p.seq_bounds),
            lists(names, p.seq_bounds),
            ints(p.prefix_lens),
        ],
        schema=SCHEMA,
    )


def write_shard(path: Path, split: str, packed: Packed) -> ShardInfo:
    with atomic_path(path) as tmp:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_stream(sink, SCHEMA) as writer:
            writer.write_table(to_table(packed))
    return ShardInfo(
        split,
        path.name,
        packed.rows,
        len(packed.seq_lens),
        len(packed.input_ids),
        int(np.count_nonzero(packed.labels != IGNORE)),
        sha256(path),
        packed.sequence_tokens(),
    )


def sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def read_shard(path: str | os.PathLike) -> pa.Table:
    """One shard, memory-mapped: the columns point into the file, nothing is copied."""
    return pa.ipc.open_stream(pa.memory_map(str(path))).read_all()


def read_manifest(out_dir: str | os.PathLike) -> dict:
    """The manifest of a finished pack. It is written last, so a directory without one holds an
    unfinished run."""
    path = Path(out_dir) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{path}: no manifest; is {out_dir} the output of a finished `streamproc pack`?")
    try:
        manifest = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as e:
        raise ShardFormatError(f"{path}: not a manifest ({e})") from e
    if not isinstance(manifest, dict) or manifest.get("format") not in FORMATS:
        got = manifest.get("format") if isinstance(manifest, dict) else None
        raise ShardFormatError(
            f"{path}: shard format {got!r}, this streamproc reads {', '.join(FORMATS)}; "
            f"pack again with this version, or use the streamproc that wrote it"
        )
    return manifest


def shared_prefix(manifest: dict) -> bool:
    """Whether the rows may hold a shared prefix (pack --share-prefix)."""
    return bool(manifest.get("options", {}).get("share_prefix"))


def prefix_lens(table: pa.Table) -> list[int]:
    """Each row's prefix_len (0 for every row of a version-1 shard)."""
    if "prefix_len" not in table.column_names:
        return [0] * table.num_rows
    return table.column("prefix_len").to_pylist()


def sequences(row: dict) -> list[tuple[str, list[int], list[int]]]:
    """(trace id, input ids, labels) of every sequence of a row as a dict (`to_pylist`), each
    whole: a remainder with the row's shared prefix in front of it."""
    p = row.get("prefix_len") or 0
    ids, labels = row["input_ids"], row["labels"]
    out, pos = [], p
    for n, tid in zip(row["seq_lens"], row["trace_ids"]):
        out.append((tid, ids[:p] + ids[pos : pos + n], labels[:p] + labels[pos : pos + n]))
        pos += n
    return out


def verify(out_dir: str | os.PathLike, split: str | None = None) -> None:
    """Check each shard's size and sha256 against the manifest; ShardFormatError naming the first
    damaged or missing one."""
    for s in read_manifest(out_dir)["shards"]:
        if split is not None and s["split"] != split:
            continue
        path = Path(out_dir) / s["file"]
        if not path.exists():
            raise ShardFormatError(f"{path}: shard listed in the manifest is missing")
        if sha256(path) != s["sha256"]:
            raise ShardFormatError(f"{path}: damaged (its sha256 differs from the manifest's); pack again")


def shard_paths(out_dir: str | os.PathLike, split: str = "train") -> list[str]:
    """The shard files of a split, in the manifest's order."""
    if split not in PARTITIONS:
        raise ValueError(f"split must be one of {', '.join(PARTITIONS)}, not {split!r}")
    return [str(Path(out_dir) / s["file"]) for s in read_manifest(out_dir)["shards"] if s["split"] == split]


def read_shards(out_dir: str | os.PathLike, split: str = "train") -> pa.Table:
    """Every shard of a split that the manifest lists, in order, as one memory-mapped table."""
    tables = [read_shard(p) for p in shard_paths(out_dir, split)]
    if tables and "prefix_len" not in tables[0].column_names:
        tables = [t.append_column("prefix_len", pa.array([0] * t.num_rows, pa.int32())) for t in tables]
    return pa.concat_tables(tables) if tables else SCHEMA.empty_table()
