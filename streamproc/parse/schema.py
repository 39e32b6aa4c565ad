"""The record `streamproc parse` writes, declared once: these TypedDicts are the type of what
parse.trace_to_record returns (mypy, and so the mypyc build, checks its keys against them), and
the Parquet schema is derived from them. Adding a field is one line here plus its value in
trace_to_record; the JSONL key order is the order trace_to_record writes them.

Parquet needs one type per column: the values of `Json` fields (tool arguments, response
content) vary by tool, so Parquet stores them as JSON text under `<name>_json`.
"""

from __future__ import annotations

import types
from typing import Annotated, Any, Required, TypedDict, Union, get_args, get_origin, get_type_hints, is_typeddict

import orjson

JSON_TEXT = "stored in Parquet as JSON text, under <name>_json"
Json = Annotated[Any, JSON_TEXT]
"""Any JSON value."""


class CallRecord(TypedDict):
    name: str
    arguments: Json
    valid: bool
    error: str | None
    raw: str | None  # the body as written, for an invalid call only


class ResponseRecord(TypedDict):
    tool_call_id: str | None
    name: str | None
    content: Json
    error: str | None


class TurnRecord(TypedDict, total=False):
    """The fields a turn's role has: assistant turns thoughts, tool_calls and answer; tool turns
    tool_responses and text; the others text."""

    role: Required[str]
    text: str
    thoughts: list[str]
    tool_calls: list[CallRecord]
    answer: str
    tool_responses: list[ResponseRecord]


class TraceRecord(TypedDict):
    id: str
    source: str
    category: str
    subcategory: str
    task: str
    turns: list[TurnRecord]


def _is_json(tp: Any) -> bool:
    return get_origin(tp) is Annotated and JSON_TEXT in tp.__metadata__


def _fields(record: type) -> dict[str, Any]:
    """A TypedDict's fields in declaration order, Required[...] unwrapped, Json kept."""
    hints = get_type_hints(record, include_extras=True)
    return {k: get_args(t)[0] if get_origin(t) is Required else t for k, t in hints.items()}


def _arrow_type(tp: Any):
    import pyarrow as pa

    origin = get_origin(tp)
    if _is_json(tp) or tp is str:
        return pa.string()
    if tp is bool:
        return pa.bool_()
    if origin is list:
        return pa.list_(_arrow_type(get_args(tp)[0]))
    if origin is Union or origin is types.UnionType:  # X | None: every Arrow field is nullable
        (inner,) = [a for a in get_args(tp) if a is not type(None)]
        return _arrow_type(inner)
    if is_typeddict(tp):
        return pa.struct(_arrow_fields(tp))
    raise TypeError(f"no Arrow type for {tp!r}")


def _arrow_fields(record: type) -> list:
    return [(f"{k}_json" if _is_json(t) else k, _arrow_type(t)) for k, t in _fields(record).items()]


def parquet_schema():
    """The Arrow schema of the Parquet file `streamproc parse` writes."""
    import pyarrow as pa

    return pa.schema(_arrow_fields(TraceRecord))


def _json_paths(record: type) -> list[tuple[str, ...]]:
    """Key paths (through lists of records) to every Json field: ("turns", "tool_calls", "arguments")."""
    paths: list[tuple[str, ...]] = []
    for k, t in _fields(record).items():
        if _is_json(t):
            paths.append((k,))
        elif get_origin(t) is list and is_typeddict(get_args(t)[0]):
            paths += [(k, *p) for p in _json_paths(get_args(t)[0])]
    return paths


_JSON_PATHS = _json_paths(TraceRecord)


def to_parquet_row(rec: dict) -> dict:
    """A decoded TraceRecord as the Parquet schema has it: every Json value replaced, in place, by
    its JSON text under `<name>_json`."""
    for path in _JSON_PATHS:
        _encode(rec, path)
    return rec


def _encode(rec: dict, path: tuple[str, ...]) -> None:
    head = path[0]
    if len(path) == 1:
        if head in rec:
            rec[f"{head}_json"] = orjson.dumps(rec.pop(head)).decode()
        return
    for item in rec.get(head, ()):
        _encode(item, path[1:])
