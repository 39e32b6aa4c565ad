"""Typed records passed between stages: source -> parse -> (metrics | mask -> pack -> shards).

Small slotted dataclasses instead of dicts, so every stage knows exactly what it receives. The
records of one parsed turn (segments, tool calls, tool responses) are in turns.py.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import orjson

from streamproc.parse.turns import ToolCall, ToolResponse, Turn

ROLES = {"system": "system", "human": "user", "gpt": "assistant", "tool": "tool"}
"""ShareGPT `from` values and the chat role each one maps to."""

PARTITIONS = ("train", "eval")
"""The partitions of packed data, the training set and the eval set (prepare/stage.is_eval
decides a trace's). "Split" is the input's unit of work (io/sources.Split)."""


@dataclass(slots=True, frozen=True)
class Location:
    """Where a row came from, for error messages and reject files."""

    file: str
    row: int  # -1: a whole-file problem, or a line whose number is not counted (see byte)
    byte: int = -1  # offset of the line, where rows are read by byte range

    def __str__(self) -> str:
        if self.row >= 0:
            return f"{self.file}:row {self.row}"
        return f"{self.file}:byte {self.byte}" if self.byte >= 0 else self.file


@dataclass(slots=True)
class ChatLayout:
    """What a row read from the chat `messages` layout keeps of its structure (io/layouts.py).

    `source` are its messages as read (validated); `layouts.chat_messages` gives them normalized,
    as a chat template reads them. `turn_of[i]` is the turn of `Row.conversations` message i
    became (consecutive tool results are one turn, as ShareGPT writes them). `turns`, `calls`
    and `responses` are the parsed trace, built from the structure (calls paired with results by
    `tool_call_id`), so parsing such a row scans no text. The tools column stays `Row.tools`."""

    source: list[dict[str, Any]]
    turn_of: list[int]
    turns: list[Turn]
    calls: list[tuple[int, int]]
    responses: list[tuple[int, int]]


@dataclass(slots=True)
class Row:
    """One validated row in the dataset schema. A row read from the chat `messages` layout has
    its turns written as ShareGPT text (`conversations`) and its structure in `chat`."""

    id: str
    conversations: list[tuple[str, str]]  # (from, value) with from in ROLES
    tools: str = ""
    category: str = ""
    subcategory: str = ""
    task: str = ""
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    loc: Location | None = None
    source_in_data: bool = True  # False: the input gave no `source`, and `source` is its file's label
    chat: ChatLayout | None = None


@dataclass(slots=True)
class Trace:
    id: str
    source: str
    category: str
    subcategory: str
    task: str
    turns: list[Turn]
    tools: str = ""
    calls: list[tuple[int, int]] = field(default_factory=list)  # (turn, index in turn.tool_calls)
    responses: list[tuple[int, int]] = field(default_factory=list)  # (turn, index in turn.tool_responses)
    extra: dict[str, Any] = field(default_factory=dict)
    chat: ChatLayout | None = None  # the row's chat-layout structure, where it had one

    def call(self, i: int) -> ToolCall:
        t, k = self.calls[i]
        return self.turns[t].tool_calls[k]

    def response(self, i: int) -> ToolResponse:
        t, k = self.responses[i]
        return self.turns[t].tool_responses[k]


@dataclass(slots=True)
class BadRow:
    """A row set aside: where it was, which field, what was wrong, and the raw row if it could be read."""

    loc: Location
    field: str
    message: str
    raw: Any = None

    def __str__(self) -> str:
        return f"{self.loc}: field {self.field!r}: {self.message}"


class RowError(ValueError):
    """A row that does not fit the dataset schema. Carries the BadRow to set aside."""

    def __init__(self, bad: BadRow):
        super().__init__(str(bad))
        self.bad = bad


_STR_FIELDS = ("tools", "category", "subcategory", "task")


def content_id(conversations: list[tuple[str, str]]) -> str:
    """The id of a row that has none: a hash of its conversation, so it depends on the data
    alone (not on the file's name or the row's place), the same in every format and run."""
    return "sha-" + hashlib.sha256(orjson.dumps(conversations)).hexdigest()[:16]


def row_from_dict(d: Any, loc: Location | None = None, source: str = "") -> Row:
    """Validate one row in the dataset schema. Raises RowError naming the row and field."""
    loc = loc or Location("<memory>", 0)

    def bad(field_: str, message: str) -> RowError:
        return RowError(BadRow(loc, field_, message, d))

    if not isinstance(d, dict):
        raise bad("<row>", f"row is a {type(d).__name__}, not an object")
    convs = d.get("conversations")
    if convs is None:
        raise bad("conversations", "missing")
    if not isinstance(convs, list):
        raise bad("conversations", f"is a {type(convs).__name__}, not a list")
    turns: list[tuple[str, str]] = []
    for i, t in enumerate(convs):
        if not isinstance(t, dict):
            raise bad(f"conversations[{i}]", f"is a {type(t).__name__}, not an object")
        frm, value = t.get("from"), t.get("value")
        if frm not in ROLES:
            raise bad(f"conversations[{i}].from", f"{frm!r} is not one of {', '.join(ROLES)}")
        if not isinstance(value, str):
            raise bad(f"conversations[{i}].value", f"is a {type(value).__name__}, not a string")
        turns.append((frm, value))
    rid = d.get("id")
    if rid is None or rid == "":
        rid = content_id(turns)
    elif not isinstance(rid, str):
        rid = str(rid)
    strs = {}
    for f in _STR_FIELDS:
        v = d.get(f)
        if v is None:
            v = ""
        elif not isinstance(v, str):
            if f == "tools" and isinstance(v, list):
                v = orjson.dumps(v).decode()
            else:
                raise bad(f, f"is a {type(v).__name__}, not a string")
        strs[f] = v
    src = d.get("source")
    extra = {k: v for k, v in d.items() if k not in _KNOWN}
    return Row(
        id=rid,
        conversations=turns,
        source=src if isinstance(src, str) and src else source,
        loc=loc,
        extra=extra,
        source_in_data=isinstance(src, str) and bool(src),
        **strs,
    )


_KNOWN = {"id", "conversations", "source", *_STR_FIELDS}


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
