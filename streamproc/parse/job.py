"""The parse job: every row parsed into one record per trace, written as JSONL or Parquet."""

from __future__ import annotations

import os
from typing import Sequence

import orjson

from streamproc.io.writer import Encoding, RowsJob
from streamproc.parse.parser import trace_to_record
from streamproc.parse.schema import parquet_schema, to_parquet_row
from streamproc.records import Row, Tally, Trace
from streamproc.run.runner import Engine, Stage, run_jobs
from streamproc.io.sources import Split


class ParseStage(Stage):
    """Parsed records of a split, each encoded as one JSON line. A record the encoder refuses
    (orjson stops at 255 levels of nesting) sets its row aside, with the reason."""

    name = "parse"

    def start(self) -> list[bytes]:
        return []

    def fold(self, acc: list[bytes], row: Row, trace: Trace | None) -> None:
        acc.append(orjson.dumps(trace_to_record(trace), option=orjson.OPT_APPEND_NEWLINE))


class ParseJob(RowsJob):
    """Parsed records of every row into OUT (io/writer.py: JSONL, .gz, .zst, Parquet or `-`), in
    input order; the file is complete on leaving the `with` block without an error, or absent."""

    def __init__(self, out: str | os.PathLike):
        super().__init__(ParseStage(), out, RECORDS)


def parse_to_file(splits: Sequence[Split], out: str | os.PathLike, *, workers: int | Engine = 1, on_error: str = "skip") -> Tally:
    """Parse every row and write one record per trace: JSONL (.gz, .zst), Parquet or `-`, by `out`'s name."""
    with ParseJob(out) as job:
        run_jobs(splits, [job], workers=workers, on_error=on_error, progress="parse")
    return job.tally


def _records_table(records: list[bytes], schema):
    """Records in PARQUET_SCHEMA, derived from the record's one definition (parse/schema.py): tool
    arguments and response content vary by tool, so they are stored as JSON text."""
    import pyarrow as pa

    return pa.Table.from_pylist([to_parquet_row(orjson.loads(b)) for b in records], schema=schema)


PARQUET_SCHEMA = parquet_schema()
RECORDS = Encoding(lines=lambda records: records, table=_records_table, schema=PARQUET_SCHEMA)
"""A split's records are JSON lines already (encoded in the worker)."""
