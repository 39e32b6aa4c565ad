"""Job-level functions the CLI calls: read shards in workers, parse, write outputs."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import orjson

from .fileio import atomic_path, jsonl_writer, output_format
from .parse import parse_trace, trace_to_record
from .records import BadRow
from .sources import Shard, good_rows
from .workers import map_shards


@dataclass(slots=True)
class Tally:
    """Rows read, parsed and rejected, plus the rejected rows themselves."""

    read: int = 0
    parsed: int = 0
    rejected: list[BadRow] = field(default_factory=list)

    def add(self, other: "Tally") -> None:
        self.read += other.read
        self.parsed += other.parsed
        self.rejected.extend(other.rejected)

    def summary(self) -> str:
        return f"{self.read:,} rows read, {self.parsed:,} parsed, {len(self.rejected):,} rejected"


@dataclass(slots=True)
class _ParsedShard:
    records: list[bytes]
    tally: Tally


def _parse_shard(shard: Shard, on_error: str) -> _ParsedShard:
    tally = Tally()
    out = []
    for row in good_rows(shard, on_error, tally.rejected):
        out.append(orjson.dumps(trace_to_record(parse_trace(row)), option=orjson.OPT_APPEND_NEWLINE))
        tally.parsed += 1
    tally.read = tally.parsed + len(tally.rejected)
    return _ParsedShard(out, tally)


class _ParseShard:
    """Picklable callable for the worker pool."""

    def __init__(self, on_error: str):
        self.on_error = on_error

    def __call__(self, shard: Shard) -> _ParsedShard:
        return _parse_shard(shard, self.on_error)


def parse_to_file(shards: Sequence[Shard], out: str | os.PathLike, *, workers: int = 1, on_error: str = "skip") -> Tally:
    """Parse every row and write one record per trace: JSONL (.gz, .zst) or Parquet, by `out`'s extension."""
    out = Path(out)
    fmt = output_format(out)
    tally = Tally()
    results = map_shards(_ParseShard(on_error), shards, workers, progress="parse", rows_of=lambda r: r.tally.read)
    with atomic_path(out) as tmp:
        if fmt.kind == "parquet":
            _write_parquet(tmp, results, tally)
        else:
            with jsonl_writer(tmp, fmt.compression) as f:
                for r in results:
                    f.writelines(r.records)
                    tally.add(r.tally)
    return tally


def _write_parquet(tmp: Path, results, tally: Tally) -> None:
    """Parquet needs one schema: tool arguments and response content vary by tool, so they are
    stored as JSON text (`arguments_json`, `content_json`)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    writer = None
    try:
        for r in results:
            tally.add(r.tally)
            if not r.records:
                continue
            recs = [_flatten_json(orjson.loads(b)) for b in r.records]
            table = pa.Table.from_pylist(recs, schema=writer.schema if writer else PARQUET_SCHEMA)
            if writer is None:
                writer = pq.ParquetWriter(tmp, table.schema)
            writer.write_table(table)
        if writer is None:
            pq.write_table(PARQUET_SCHEMA.empty_table(), tmp)
    finally:
        if writer is not None:
            writer.close()


def _flatten_json(rec: dict) -> dict:
    for t in rec["turns"]:
        for c in t.get("tool_calls", ()):
            c["arguments_json"] = orjson.dumps(c.pop("arguments")).decode()
        for r in t.get("tool_responses", ()):
            r["content_json"] = orjson.dumps(r.pop("content")).decode()
    return rec


def _parquet_schema():
    import pyarrow as pa

    s = pa.string()
    call = pa.struct([("name", s), ("arguments_json", s), ("valid", pa.bool_()), ("error", s), ("raw", s)])
    resp = pa.struct([("tool_call_id", s), ("name", s), ("content_json", s), ("error", s)])
    turn = pa.struct(
        [
            ("role", s),
            ("text", s),
            ("thoughts", pa.list_(s)),
            ("tool_calls", pa.list_(call)),
            ("answer", s),
            ("tool_responses", pa.list_(resp)),
        ]
    )
    return pa.schema(
        [("id", s), ("source", s), ("category", s), ("subcategory", s), ("task", s), ("turns", pa.list_(turn))]
    )


PARQUET_SCHEMA = _parquet_schema()
