"""One writer of rows and records: the output's name picks the format.

`.jsonl` / `.ndjson` (plain, `.gz`, `.zst`), `.parquet` / `.pq`, or `-` for JSON lines on stdout;
any other name is refused before the work starts (`check_rows_output`). Each job says how its
batches become JSON lines and Arrow tables (`Encoding`); the writer owns the rest: the format,
compression, atomic replacement, stdout, and a Parquet file whose batches must share a schema.
parse, export, filter and features write through it; `RowsJob` is a job that does.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable

import orjson

from streamproc.io.files import (
    OUTPUT_EXTENSIONS, OutputError, OutputFormat, atomic_path, check_output_file, jsonl_writer, output_format, output_path, to_stdout,
)
from streamproc.records import Tally
from streamproc.run.runner import Job, Stage

if TYPE_CHECKING:
    import pyarrow as pa


def check_rows_output(path: str | os.PathLike) -> OutputFormat:
    """The format OUT's name asks for (`-`: JSON lines on stdout), once OUT is known to be
    writable; OutputError, naming the path and the names known, before any work otherwise."""
    if to_stdout(path):
        return OutputFormat("jsonl")
    try:
        fmt = output_format(path)
    except ValueError:
        raise OutputError(f"{path}: unknown output type (expected a name ending in {', '.join(OUTPUT_EXTENSIONS)}, or - for stdout)") from None
    check_output_file(path)
    return fmt


def json_lines(records: Iterable[dict[str, Any]]) -> Iterable[bytes]:
    return (orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE) for r in records)


def records_table(records: list[dict[str, Any]], schema: "pa.Schema | None") -> "pa.Table":
    """Records as a table of `schema`; one with a key the schema lacks keeps it (and the writer
    refuses it by name) instead of losing it."""
    import pyarrow as pa

    if schema is not None and any(k not in schema.names for r in records for k in r):
        schema = None
    return pa.Table.from_pylist(records, schema=schema)


@dataclass(slots=True, frozen=True)
class Encoding:
    """How one job's batches are written: as JSON lines, and as an Arrow table (given the file's
    schema once it has one). With `schema`, every Parquet batch takes it; without, the first
    batch's is the file's and a later batch must fit it; `empty` is the schema of a Parquet file
    that gets no row."""

    lines: Callable[[Any], Iterable[bytes]] = json_lines
    table: Callable[[Any, "pa.Schema | None"], "pa.Table"] = records_table
    schema: "pa.Schema | None" = None
    empty: "pa.Schema | None" = None
    compression: str = "snappy"  # Parquet's


class RowWriter:
    """Batches to OUT in the format its name says; the file is complete under its name on
    leaving the `with` block without an error, or absent. `-`: JSON lines on stdout, all at once
    when the block ends, so stdout gets a whole output or nothing."""

    def __init__(self, path: str | os.PathLike, encoding: Encoding = Encoding()):
        self.path = str(path)
        self.format = check_rows_output(path)
        self.encoding = encoding
        self.rows = 0  # batches' rows written, as Parquet counts them or JSON lines
        self._stack = contextlib.ExitStack()
        self._lines = None
        self._parquet = None

    def __enter__(self) -> "RowWriter":
        with self._stack as stack:
            self._tmp = stack.enter_context(atomic_path(stack.enter_context(output_path(self.path))))
            if self.format.kind == "jsonl":
                self._lines = stack.enter_context(jsonl_writer(self._tmp, self.format.compression))
            self._stack = stack.pop_all()
        return self

    def write(self, batch: Any) -> None:
        """Append one batch, in the job's own form (its Encoding turns it into lines or a table)."""
        if self._lines is not None:
            lines = list(self.encoding.lines(batch))
            self._lines.writelines(lines)
            self.rows += len(lines)
            return
        self._write_table(batch)

    def _write_table(self, batch: Any) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = self.encoding.schema if self._parquet is None else self._parquet.schema
        try:
            table = self.encoding.table(batch, schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:  # a column whose type changes between batches
            raise OutputError(f"{self.path}: rows after row {self.rows} do not fit the Parquet schema ({e}); write .jsonl instead") from None
        if not table.num_rows:
            return
        if self._parquet is None:
            self._parquet = pq.ParquetWriter(self._tmp, table.schema, compression=self.encoding.compression)
        elif table.schema.names != self._parquet.schema.names:
            new = sorted(set(table.schema.names) - set(self._parquet.schema.names)) or table.schema.names
            raise OutputError(f"{self.path}: column {new[0]!r} first appears after row {self.rows}; write .jsonl instead")
        self._parquet.write_table(table)
        self.rows += table.num_rows

    def __exit__(self, *exc) -> bool | None:
        try:
            if self._parquet is not None:
                self._parquet.close()
            elif self.format.kind == "parquet" and exc[0] is None:  # no row: still a valid, empty file
                import pyarrow as pa
                import pyarrow.parquet as pq

                schema = self.encoding.empty or self.encoding.schema or pa.schema([])
                pq.write_table(schema.empty_table(), self._tmp, compression=self.encoding.compression)
        except BaseException:
            self._stack.__exit__(*sys.exc_info())
            raise
        return self._stack.__exit__(*exc)


class RowsJob(Job):
    """A job that writes its stage's partial of every split through a RowWriter, in plan order
    (parse, export, features); OUT is complete on leaving the `with` block without an error, or
    absent."""

    def __init__(self, stage: Stage, out: str | os.PathLike, encoding: Encoding = Encoding()):
        self.stages = [stage]
        self.tally = Tally()
        self.writer = RowWriter(out, encoding)

    def __enter__(self):
        self.writer.__enter__()
        return self

    def add(self, partials: list[Any], tallies: list[Tally]) -> None:
        self.writer.write(partials[0])
        self.tally.add(tallies[0])

    def __exit__(self, *exc) -> bool | None:
        return self.writer.__exit__(*exc)
