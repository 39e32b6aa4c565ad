"""The `filter` and `features` jobs: kept rows and feature tables written in plan order."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pyarrow as pa

from streamproc.analyze.features import feature_schema
from streamproc.curate.conditions import ConditionError
from streamproc.curate.curator import Curator
from streamproc.curate.stage import CurateStage
from streamproc.io.layouts import sharegpt_record
from streamproc.records import Row, Tally
from streamproc.run.runner import Engine, Stage, run_jobs
from streamproc.io.sources import Shard


ROW_FORMATS = (".parquet", ".jsonl", ".jsonl.zst")


row_record = sharegpt_record  # a row back in the dataset schema, every extra column carried


def check_row_path(path: str) -> None:
    if not str(path).lower().endswith(ROW_FORMATS):
        raise ConditionError(f"{path}: the output must end in {', '.join(ROW_FORMATS)}")


class RowSink:
    """Writes records to .parquet, .jsonl or .jsonl.zst atomically (in place on close only).

    Parquet takes its schema from the first batch; a later batch with a column the first lacked
    is refused by name (JSONL takes any)."""

    def __init__(self, path: str):
        check_row_path(path)
        self.path = str(path)
        self.rows = 0
        self._atomic = None
        self._f = None
        self._writer = None

    def __enter__(self) -> "RowSink":
        from streamproc.io.files import atomic_path

        self._atomic = atomic_path(self.path)
        self._tmp = self._atomic.__enter__()
        low = self.path.lower()
        if low.endswith(".jsonl.zst"):
            import zstandard

            self._raw = open(self._tmp, "wb")
            self._f = zstandard.ZstdCompressor(level=3).stream_writer(self._raw)
        elif low.endswith(".jsonl"):
            self._f = open(self._tmp, "wb")
        return self

    def write(self, rows: list[Row], reasons: list[str] | None = None) -> None:
        """Append rows; with `reasons`, a `removed_reason` column too."""
        if not rows:
            return
        self.rows += len(rows)
        if self._f is not None:
            import orjson

            records = [row_record(r) for r in rows]
            if reasons is not None:
                for rec, why in zip(records, reasons):
                    rec["removed_reason"] = why
            self._f.write(b"".join(orjson.dumps(r, default=str, option=orjson.OPT_APPEND_NEWLINE) for r in records))
            return
        import pyarrow.parquet as pq

        try:
            table = _rows_table(rows, reasons, None if self._writer is None else self._writer.schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:  # an extra column whose type changes between batches
            raise ConditionError(f"{self.path}: rows after row {self.rows - len(rows)} do not fit the Parquet schema ({e}); write .jsonl instead") from None
        if self._writer is None:
            self._writer = pq.ParquetWriter(self._tmp, table.schema, compression="zstd")  # as synth writes: half the size of snappy, same CPU
        elif table.schema.names != self._writer.schema.names:
            new = sorted(set(table.schema.names) - set(self._writer.schema.names))
            raise ConditionError(f"{self.path}: column {new[0]!r} first appears after row {self.rows - len(rows)}; write .jsonl instead")
        self._writer.write_table(table)

    def __exit__(self, *exc) -> None:
        try:
            if self._f is not None:
                self._f.close()
            elif self._writer is not None:
                self._writer.close()
            elif exc[0] is None:  # nothing kept: still a valid, empty file
                import pyarrow.parquet as pq

                pq.write_table(DATASET_SCHEMA.empty_table(), self._tmp)
        finally:
            self._atomic.__exit__(*exc)


def _rows_table(rows: list[Row], reasons: list[str] | None, schema: pa.Schema | None) -> pa.Table:
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
    for name in ("tools", "category", "subcategory", "task", "source"):
        cols[name] = pa.array([getattr(r, name) for r in rows], pa.string())
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


class FilterJob:
    """The rows the curator keeps to one sink, the others (with their reasons) to another."""

    def __init__(self, curator: Curator, kept: "RowSink", gone: "RowSink | _NoSink", tokenizer: str | None = None):
        self.stages: list[Stage] = [CurateStage(curator.dedup, tokenizer, keep_rows=True)]
        self.curator, self.kept, self.gone = curator, kept, gone
        self.tally = Tally()

    def add(self, partials: list[Any], tallies: list[Tally]) -> None:
        part = partials[0]
        self.tally.add(tallies[0])
        reasons = self.curator.decide_split(part, tallies[0])
        self.kept.write([r for r, why in zip(part.rows, reasons) if why is None])
        gone = [(r, why) for r, why in zip(part.rows, reasons) if why is not None]
        self.gone.write([r for r, _ in gone], [why for _, why in gone])

    def summary(self) -> dict[str, Any]:
        doc = self.curator.summary()
        doc["output"] = self.kept.path
        if isinstance(self.gone, RowSink):
            doc["removed_rows"] = self.gone.path
        return doc


@contextlib.contextmanager
def filter_job(out: str, curator: Curator, removed: str | None = None, tokenizer: str | None = None) -> Iterator[FilterJob]:
    """A FilterJob for any engine to run; its files are complete on leaving the block, or absent."""
    check_row_path(out)
    if removed:
        check_row_path(removed)
    with RowSink(out) as kept, (RowSink(removed) if removed else _NoSink()) as gone:
        yield FilterJob(curator, kept, gone, tokenizer)


def filter_to_file(
    shards: Sequence[Shard], out: str, curator: Curator, *, workers: int | Engine = 1, on_error: str = "skip",
    removed: str | None = None, tokenizer: str | None = None,
) -> tuple[dict[str, Any], Tally]:
    """Write the rows the curator keeps to `out`, unchanged, in input order; with `removed`, the
    others there with a `removed_reason` column. Returns the accounting summary and the tally."""
    with filter_job(out, curator, removed, tokenizer) as job:
        run_jobs(shards, [job], workers=workers, on_error=on_error, progress="filter")
    return job.summary(), job.tally


class _NoSink:
    def __enter__(self):
        return self

    def write(self, rows, reasons=None) -> None:
        pass

    def __exit__(self, *exc) -> None:
        pass


class FeaturesJob:
    """One row of features per trace, written as each split arrives; `write` takes a pa.Table."""

    def __init__(self, write: Callable[[pa.Table], None], tokenizer: str | None = None):
        self.stages: list[Stage] = [CurateStage(tokenizer=tokenizer)]
        self.write = write
        self.tally = Tally()
        self.rows = 0

    def add(self, partials: list[Any], tallies: list[Tally]) -> None:
        table = partials[0].features
        self.tally.add(tallies[0])
        self.write(table)
        self.rows += table.num_rows


@contextlib.contextmanager
def features_job(out: str, tokenizer: str | None = None) -> Iterator[FeaturesJob]:
    """A FeaturesJob writing `out` (.parquet, or .jsonl), complete on leaving the block, or absent."""
    import pyarrow.parquet as pq

    from streamproc.io.files import atomic_path

    with atomic_path(out) as tmp:
        if str(out).lower().endswith(".parquet"):
            with pq.ParquetWriter(tmp, feature_schema(tokenizer is not None)) as w:
                yield FeaturesJob(w.write_table, tokenizer)
        else:
            import orjson

            with open(tmp, "wb") as f:
                yield FeaturesJob(lambda t: f.writelines(orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE) for r in t.to_pylist()), tokenizer)


def features_to_file(
    shards: Sequence[Shard], out: str, *, tokenizer: str | None = None, workers: int | Engine = 1, on_error: str = "skip"
) -> tuple[int, Tally]:
    """One row of features per trace to `out` (.parquet, or .jsonl). Returns (rows written, tally)."""
    with features_job(out, tokenizer) as job:
        run_jobs(shards, [job], workers=workers, on_error=on_error, progress="features")
    return job.rows, job.tally
