"""The parse job: every row parsed into one record per trace, written as JSONL or Parquet."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Callable, Iterator, Sequence

import orjson

from streamproc.io.files import atomic_path, jsonl_writer, output_format
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


@contextlib.contextmanager
def record_writer(out: str | os.PathLike) -> Iterator[Callable[[list[bytes]], None]]:
    """A function that appends a split's encoded records to OUT: JSONL (.gz, .zst) or Parquet,
    by its extension; the file
    appears complete under its name on leaving the block, or not at all (atomic_path)."""
    out = Path(out)
    fmt = output_format(out)
    with atomic_path(out) as tmp:
        if fmt.kind == "parquet":
            writer = _ParquetRecords(tmp)
            try:
                yield writer.add
            finally:
                writer.close()
        else:
            with jsonl_writer(tmp, fmt.compression) as f:
                yield f.writelines


class ParseJob:
    """Parsed records of every row into OUT, in input order; the file is complete on leaving the
    `with` block without an error, or absent."""

    def __init__(self, out: str | os.PathLike):
        self.stages: list[Stage] = [ParseStage()]
        self.tally = Tally()
        self._writer = record_writer(out)

    def __enter__(self) -> "ParseJob":
        self._write = self._writer.__enter__()
        return self

    def add(self, partials: list, tallies: list[Tally]) -> None:
        self._write(partials[0])
        self.tally.add(tallies[0])

    def __exit__(self, *exc):
        return self._writer.__exit__(*exc)


def parse_to_file(splits: Sequence[Split], out: str | os.PathLike, *, workers: int | Engine = 1, on_error: str = "skip") -> Tally:
    """Parse every row and write one record per trace: JSONL (.gz, .zst) or Parquet, by `out`'s extension."""
    with ParseJob(out) as job:
        run_jobs(splits, [job], workers=workers, on_error=on_error, progress="parse")
    return job.tally


class _ParquetRecords:
    """Records in PARQUET_SCHEMA, derived from the record's one definition (record_schema): tool
    arguments and response content vary by tool, so they are stored as JSON text."""

    def __init__(self, path: Path):
        self.path = path
        self.writer = None

    def add(self, records: list[bytes]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not records:
            return
        recs = [to_parquet_row(orjson.loads(b)) for b in records]
        table = pa.Table.from_pylist(recs, schema=self.writer.schema if self.writer else PARQUET_SCHEMA)
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.path, table.schema)
        self.writer.write_table(table)

    def close(self) -> None:
        import pyarrow.parquet as pq

        if self.writer is None:
            pq.write_table(PARQUET_SCHEMA.empty_table(), self.path)
        else:
            self.writer.close()


PARQUET_SCHEMA = parquet_schema()
