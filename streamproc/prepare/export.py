"""Normalized chat messages for users of other trainers: one conversation per row (`messages`),
or one prompt/completion pair per assistant turn (`pairs`, TRL's conversational prompt-completion
layout), written as JSONL or Parquet.

Messages are the ones the masker renders (chat.to_messages): roles mapped, assistant content
verbatim. `tool_role` says how tool turns are written: `keep` (tool role, text as in the data,
tags included), `unwrap` (one tool message per response, tags off: for templates that add the
tags themselves, like Qwen's) or `user` (a user message with `tool_prefix` in front).
"""

from __future__ import annotations

import os
from typing import Sequence

from streamproc.prepare.chat import TOOL_FALLBACK, to_messages
from streamproc.io.writer import Encoding, RowsJob
from streamproc.records import Row, Tally, Trace
from streamproc.run.runner import Engine, Stage, run_jobs
from streamproc.io.sources import Split

FORMATS = ("messages", "pairs")
TOOL_ROLES = ("keep", "unwrap", "user")


def row_records(row: Row, fmt: str = "messages", tool_role: str = "keep", tool_prefix: str = TOOL_FALLBACK) -> list[dict]:
    """The export records of one row."""
    msgs = to_messages(row.conversations, tool_role, tool_prefix)
    dicts = [m.as_dict() for m in msgs]
    if fmt == "messages":
        return [{"id": row.id, "source": row.source, "messages": dicts}]
    return [
        {"id": row.id, "source": row.source, "turn": m.turn, "prompt": dicts[:i], "completion": [dicts[i]]}
        for i, m in enumerate(msgs)
        if m.role == "assistant"
    ]


class ExportStage(Stage):
    """Export records of a split's rows (the Row's turns: no parse needed)."""

    name = "export"
    needs_trace = False

    def __init__(self, fmt: str, tool_role: str, tool_prefix: str):
        self.fmt, self.tool_role, self.tool_prefix = fmt, tool_role, tool_prefix

    def start(self) -> list[dict]:
        return []

    def fold(self, acc: list[dict], row: Row, trace: Trace | None) -> None:
        acc.extend(row_records(row, self.fmt, self.tool_role, self.tool_prefix))


class ExportJob(RowsJob):
    """Export records of every row into OUT (io/writer.py: JSONL, .gz, .zst, Parquet or `-`), in
    input order; the file is complete on leaving the `with` block without an error, or absent."""

    def __init__(self, out: str | os.PathLike, fmt: str = "messages", tool_role: str = "keep", tool_prefix: str = TOOL_FALLBACK):
        if fmt not in FORMATS:
            raise ValueError(f"format {fmt!r}: expected one of {', '.join(FORMATS)}")
        if tool_role not in TOOL_ROLES:
            raise ValueError(f"tool role {tool_role!r}: expected one of {', '.join(TOOL_ROLES)}")
        super().__init__(ExportStage(fmt, tool_role, tool_prefix), out, Encoding(schema=_schema(fmt)))


def export(
    splits: Sequence[Split],
    out: str | os.PathLike,
    *,
    fmt: str = "messages",
    tool_role: str = "keep",
    tool_prefix: str = TOOL_FALLBACK,
    workers: int | Engine = 1,
    on_error: str = "skip",
) -> Tally:
    """Write the records of every row to OUT: JSONL (.gz, .zst), Parquet or `-`, by its name, atomically."""
    with ExportJob(out, fmt, tool_role, tool_prefix) as job:
        run_jobs(splits, [job], workers=workers, on_error=on_error, progress="export")
    return job.tally


def _schema(fmt: str):
    import pyarrow as pa

    s = pa.string()
    msgs = pa.list_(pa.struct([("role", s), ("content", s)]))
    if fmt == "messages":
        return pa.schema([("id", s), ("source", s), ("messages", msgs)])
    return pa.schema([("id", s), ("source", s), ("turn", pa.int32()), ("prompt", msgs), ("completion", msgs)])
