"""Normalized chat messages for users of other trainers: one conversation per row (`messages`),
or one prompt/completion pair per assistant turn (`pairs`, TRL's conversational prompt-completion
layout), written as JSONL or Parquet.

`layout` says what a message is:
- `text` (default): the messages the masker renders for a ShareGPT row (chat.to_messages): roles
  mapped, assistant content verbatim with its tags. `tool_role` says how tool turns are written:
  `keep` (tool role, text as in the data, tags included), `unwrap` (one tool message per
  response, tags off: for templates that add the tags themselves, like Qwen's) or `user` (a user
  message with `tool_prefix` in front).
- `openai`: the chat `messages` layout (io/layouts.openai_record): structured `tool_calls`,
  `tool_call_id`s, `reasoning_content`, and a `tools` column, as TRL's SFTTrainer reads them.
- `sharegpt`: the dataset schema (`conversations` of from/value, tags in the text), whatever
  layout the row was read from.
"""

from __future__ import annotations

import os
from typing import Sequence

from streamproc.prepare.chat import TOOL_FALLBACK, to_messages
from streamproc.io.layouts import arrow_schema, openai_record, sharegpt_record
from streamproc.io.writer import Encoding, RowsJob
from streamproc.records import Row, Tally, Trace
from streamproc.run.runner import Engine, Stage, run_jobs
from streamproc.io.sources import Split

FORMATS = ("messages", "pairs")
TOOL_ROLES = ("keep", "unwrap", "user")
LAYOUTS = ("text", "openai", "sharegpt")


def row_records(
    row: Row, fmt: str = "messages", tool_role: str = "keep", tool_prefix: str = TOOL_FALLBACK, layout: str = "text", trace: Trace | None = None
) -> list[dict]:
    """The export records of one row (`trace`: the row parsed, which the openai layout needs)."""
    if layout == "sharegpt":
        return [sharegpt_record(row)]
    if layout == "openai":
        rec = openai_record(trace)  # type: ignore[arg-type]
        if fmt == "messages":
            return [rec]
        dicts, head = rec.pop("messages"), {k: rec.pop(k) for k in ("id", "source")}
        turns = trace.chat.turn_of if trace.chat is not None else _turn_of(trace)  # type: ignore[union-attr]
        return [{**head, "turn": turns[i], "prompt": dicts[:i], "completion": [m], **rec} for i, m in enumerate(dicts) if m["role"] == "assistant"]
    msgs = to_messages(row.conversations, tool_role, tool_prefix)
    dicts = [m.as_dict() for m in msgs]
    if fmt == "messages":
        return [{"id": row.id, "source": row.source, "messages": dicts}]
    return [
        {"id": row.id, "source": row.source, "turn": m.turn, "prompt": dicts[:i], "completion": [dicts[i]]}
        for i, m in enumerate(msgs)
        if m.role == "assistant"
    ]


def _turn_of(trace: Trace) -> list[int]:
    """The turn of each message layouts.openai_messages writes: one per tool response, else one per turn."""
    return [i for i, t in enumerate(trace.turns) for _ in range(max(1, len(t.tool_responses)) if t.role == "tool" else 1)]


class ExportStage(Stage):
    """Export records of a split's rows (the Row's turns, except the openai layout, which writes
    the parsed calls)."""

    name = "export"

    def __init__(self, fmt: str, tool_role: str, tool_prefix: str, layout: str = "text"):
        self.fmt, self.tool_role, self.tool_prefix, self.layout = fmt, tool_role, tool_prefix, layout
        self.needs_trace = layout == "openai"

    def start(self) -> list[dict]:
        return []

    def fold(self, acc: list[dict], row: Row, trace: Trace | None) -> None:
        acc.extend(row_records(row, self.fmt, self.tool_role, self.tool_prefix, self.layout, trace))


class ExportJob(RowsJob):
    """Export records of every row into OUT (io/writer.py: JSONL, .gz, .zst, Parquet or `-`), in
    input order; the file is complete on leaving the `with` block without an error, or absent."""

    def __init__(self, out: str | os.PathLike, fmt: str = "messages", tool_role: str = "keep", tool_prefix: str = TOOL_FALLBACK, layout: str = "text"):
        if fmt not in FORMATS:
            raise ValueError(f"format {fmt!r}: expected one of {', '.join(FORMATS)}")
        if tool_role not in TOOL_ROLES:
            raise ValueError(f"tool role {tool_role!r}: expected one of {', '.join(TOOL_ROLES)}")
        if layout not in LAYOUTS:
            raise ValueError(f"layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
        if layout == "sharegpt" and fmt == "pairs":
            raise ValueError("the sharegpt layout writes whole conversations: use --format messages")
        super().__init__(ExportStage(fmt, tool_role, tool_prefix, layout), out, Encoding(schema=_schema(fmt, layout)))


def export(
    splits: Sequence[Split],
    out: str | os.PathLike,
    *,
    fmt: str = "messages",
    tool_role: str = "keep",
    tool_prefix: str = TOOL_FALLBACK,
    layout: str = "text",
    workers: int | Engine = 1,
    on_error: str = "skip",
) -> Tally:
    """Write the records of every row to OUT: JSONL (.gz, .zst), Parquet or `-`, by its name, atomically."""
    with ExportJob(out, fmt, tool_role, tool_prefix, layout) as job:
        run_jobs(splits, [job], workers=workers, on_error=on_error, progress="export")
    return job.tally


def _schema(fmt: str, layout: str = "text"):
    import pyarrow as pa

    s = pa.string()
    if layout != "text":
        schema = arrow_schema(layout)
        if fmt == "messages":
            return schema
        msgs = schema.field("messages").type
        rest = [f for f in schema if f.name not in ("id", "source", "messages")]
        return pa.schema([("id", s), ("source", s), ("turn", pa.int32()), ("prompt", msgs), ("completion", msgs), *rest])
    msgs = pa.list_(pa.struct([("role", s), ("content", s)]))
    if fmt == "messages":
        return pa.schema([("id", s), ("source", s), ("messages", msgs)])
    return pa.schema([("id", s), ("source", s), ("turn", pa.int32()), ("prompt", msgs), ("completion", msgs)])
