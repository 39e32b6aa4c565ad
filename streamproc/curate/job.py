"""The `filter` and `features` jobs: kept rows and feature tables written in plan order."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

import numpy as np
import orjson
import pyarrow as pa

from streamproc.analyze.features import feature_schema
from streamproc.curate.curator import Curator
from streamproc.curate.stage import CuratedSplit, CurateStage
from streamproc.io.layouts import sharegpt_record
from streamproc.records import Row, Tally
from streamproc.run.runner import Engine, Job, Stage, run_jobs
from streamproc.io.files import OutputError, to_stdout
from streamproc.io.sources import Split
from streamproc.io.writer import Encoding, RowWriter, RowsJob


def row_record(row: Row, with_source: bool = False) -> dict[str, Any]:
    """A row back in the dataset schema as it was read, every extra column carried; `source`
    where the input gave one, or `with_source`."""
    return sharegpt_record(row, with_source)


def rows_encoding(with_source: bool = False) -> Encoding:
    """How `filter` writes a batch of (rows, removal reasons or None): rows as read, zstd Parquet
    (as synth writes: half the size of snappy, same CPU) whose extra columns Arrow types."""

    def lines(batch: tuple[list[Row], list[str] | None]) -> Iterator[bytes]:
        rows, reasons = batch
        for i, row in enumerate(rows):
            rec = row_record(row, with_source)
            if reasons is not None:
                rec["removed_reason"] = reasons[i]
            yield orjson.dumps(rec, default=str, option=orjson.OPT_APPEND_NEWLINE)

    def table(batch: tuple[list[Row], list[str] | None], schema: pa.Schema | None) -> pa.Table:
        return _rows_table(*batch, schema, with_source)

    empty = DATASET_SCHEMA if with_source else DATASET_SCHEMA.remove(DATASET_SCHEMA.get_field_index("source"))
    return Encoding(lines, table, empty=empty, compression="zstd")


def _rows_table(rows: list[Row], reasons: list[str] | None, schema: pa.Schema | None, with_source: bool = False) -> pa.Table:
    """Rows as an Arrow table in the dataset schema, built column by column (converting a list
    of nested dicts costs five times as much). Extra columns are typed by Arrow from their
    values, or cast to `schema`, the file's schema once its first batch is written."""
    turns = [t for r in rows for t in r.conversations]
    offsets = np.zeros(len(rows) + 1, dtype=np.int32)
    np.cumsum([len(r.conversations) for r in rows], out=offsets[1:])
    convs = pa.ListArray.from_arrays(
        pa.array(offsets),
        pa.StructArray.from_arrays([pa.array([t[0] for t in turns], pa.string()), pa.array([t[1] for t in turns], pa.string())], ["from", "value"]),
    )
    cols: dict[str, pa.Array] = {"id": pa.array([r.id for r in rows], pa.string()), "conversations": convs}
    for name in ("tools", "category", "subcategory", "task"):
        cols[name] = pa.array([getattr(r, name) for r in rows], pa.string())
    if with_source or any(r.source_in_data for r in rows):
        cols["source"] = pa.array([r.source if with_source or r.source_in_data else None for r in rows], pa.string())
    extra = list(dict.fromkeys(k for r in rows for k in r.extra))
    known = {} if schema is None else {f.name: f.type for f in schema}
    for name in extra:
        cols[name] = pa.array([r.extra.get(name) for r in rows], known.get(name))
    if reasons is not None:
        cols["removed_reason"] = pa.array(reasons, pa.string())
    if schema is not None:  # columns a batch lacks are null, in the file's order
        return pa.table({f.name: cols.get(f.name, pa.nulls(len(rows), f.type)) for f in schema} | {k: v for k, v in cols.items() if k not in known})
    return pa.table(cols)


DATASET_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("conversations", pa.list_(pa.struct([("from", pa.string()), ("value", pa.string())]))),
        ("tools", pa.string()),
        ("category", pa.string()),
        ("subcategory", pa.string()),
        ("task", pa.string()),
        ("source", pa.string()),
    ]
)


class FilterJob(Job):
    """The rows the curator keeps to OUT, unchanged; with `removed`, the others there with their
    reasons (io/writer.py: JSONL, .gz, .zst or Parquet by the name; OUT may be `-`). The files
    are complete on leaving the `with` block without an error, or absent."""

    def __init__(self, out: str, curator: Curator, removed: str | None = None, tokenizer: str | None = None, *, with_source: bool = False):
        encoding = rows_encoding(with_source)
        self.kept = RowWriter(out, encoding)
        if removed is not None and to_stdout(removed):
            raise OutputError("--removed -: the kept rows may go to stdout, the removed ones only to a file")
        self.gone = RowWriter(removed, encoding) if removed else None
        self.stages: list[Stage] = [CurateStage(curator.dedup, tokenizer, keep_rows=True)]
        self.curator = curator
        self.tally = Tally()
        self._files = contextlib.ExitStack()

    def __enter__(self) -> "FilterJob":
        with contextlib.ExitStack() as files:
            for w in (self.kept, self.gone):
                if w is not None:
                    files.enter_context(w)
            self._files = files.pop_all()
        return self

    def add(self, partials: list[Any], tallies: list[Tally]) -> None:
        part = partials[0]
        self.tally.add(tallies[0])
        reasons = self.curator.decide_split(part, tallies[0])
        self.kept.write(([r for r, why in zip(part.rows, reasons) if why is None], None))
        if self.gone is not None:
            gone = [(r, why) for r, why in zip(part.rows, reasons) if why is not None]
            self.gone.write(([r for r, _ in gone], [why for _, why in gone]))

    def __exit__(self, *exc):
        return self._files.__exit__(*exc)

    def summary(self) -> dict[str, Any]:
        doc = self.curator.summary()
        doc["output"] = self.kept.path
        if self.gone is not None:
            doc["removed_rows"] = self.gone.path
        return doc


def filter_to_file(
    splits: Sequence[Split], out: str, curator: Curator, *, workers: int | Engine = 1, on_error: str = "skip",
    removed: str | None = None, tokenizer: str | None = None, with_source: bool = False,
) -> tuple[dict[str, Any], Tally]:
    """Write the rows the curator keeps to `out`, unchanged, in input order; with `removed`, the
    others there with a `removed_reason` column; `with_source`: a `source` column on every row
    (the input's, else the file's label). Returns the accounting summary and the tally."""
    with FilterJob(out, curator, removed, tokenizer, with_source=with_source) as job:
        run_jobs(splits, [job], workers=workers, on_error=on_error, progress="filter")
    return job.summary(), job.tally


def _feature_lines(split: CuratedSplit) -> Iterator[bytes]:
    return (orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE) for r in split.features.to_pylist())


class FeaturesJob(RowsJob):
    """One row of features per trace into OUT (io/writer.py: JSONL, .gz, .zst, Parquet or `-`),
    written as each split arrives; complete on leaving the `with` block without an error, or absent."""

    def __init__(self, out: str, tokenizer: str | None = None):
        encoding = Encoding(_feature_lines, lambda split, schema: split.features, schema=feature_schema(tokenizer is not None))
        super().__init__(CurateStage(tokenizer=tokenizer), out, encoding)

    @property
    def rows(self) -> int:
        return self.writer.rows


def features_to_file(
    splits: Sequence[Split], out: str, *, tokenizer: str | None = None, workers: int | Engine = 1, on_error: str = "skip"
) -> tuple[int, Tally]:
    """One row of features per trace to `out` (JSONL, .gz, .zst, Parquet or `-`). Returns (rows written, tally)."""
    with FeaturesJob(out, tokenizer) as job:
        run_jobs(splits, [job], workers=workers, on_error=on_error, progress="features")
    return job.rows, job.tally
