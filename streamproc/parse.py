"""Single-pass trace parser.

Each turn is scanned once, left to right, by a small state machine: outside any block it looks
for whichever state-changing tag comes next (`<think>`, a stray `</think>`, `<tool_call>`; in
tool turns `<tool_response>`); inside a block it looks only for that block's closing tag. Tags
are found with `str.find`, each occurrence once, so the scan is linear and runs at C speed.
Tool-call and tool-response bodies are decoded with orjson. When a body fails to decode and a
later closing tag exists, the later one is tried: this is how `</tool_call>` written inside a
JSON string argument is told apart from the real closing tag. The parser never raises on any
string; problems are reported on the records.

Segments tile the turn's text exactly, so `"".join(text[s.start:s.end] for s in segments) == text`.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import orjson
from orjson import JSONDecodeError, loads

from .records import (
    REASONING,
    ROLES,
    TEXT,
    TOOL_CALL,
    TOOL_RESPONSE,
    Row,
    Segment,
    ToolCall,
    ToolResponse,
    Trace,
    Turn,
)

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
RESP_OPEN, RESP_CLOSE = "<tool_response>", "</tool_response>"

# How many later closing tags to try when a body does not decode. Bounded so adversarial text
# with thousands of closing tags stays linear.
MAX_CLOSE_CANDIDATES = 16

_NAME_RE = re.compile(r'"name"\s*:\s*"((?:[^"\\]|\\.)*)"')

_CHAT_ROLE = {**ROLES, **{v: v for v in ROLES.values()}}


def parse_turn(role: str, text: str) -> Turn:
    """Parse one turn. `role` is a ShareGPT `from` (gpt, human, ...) or a chat role."""
    if text.__class__ is not str:
        text = "" if text is None else str(text)
    parse = _PARSERS.get(role)
    if parse is not None:
        return parse(text)
    chat_role = _CHAT_ROLE.get(role, role)
    return Turn(chat_role, text, [Segment(TEXT, 0, len(text), 0, len(text))] if text else [])


def parse_trace(row: Row | Mapping[str, Any], source: str | None = None) -> Trace:
    """Parse a row in the dataset schema (a dict or a validated Row) into a Trace.

    Calls are paired with responses by tool_call_id (`functions.<name>:<n>`, n counting calls
    across the conversation), else by position among the latest assistant turn's unanswered calls.
    """
    if not isinstance(row, Row):
        from .records import row_from_dict

        row = row_from_dict(row)
    turns = [parse_turn(frm, value) for frm, value in row.conversations]
    trace = Trace(
        id=row.id,
        source=row.source if source is None else source,
        category=row.category,
        subcategory=row.subcategory,
        task=row.task,
        turns=turns,
        tools=row.tools,
        extra=row.extra,
    )
    _pair(trace)
    return trace


# ----------------------------------------------------------------------------- assistant turns


def _parse_assistant(text: str) -> Turn:
    segments: list[Segment] = []
    thoughts: list[str] = []
    calls: list[ToolCall] = []
    answer: list[str] = []
    find = text.find
    n = len(text)
    pos = 0  # start of the not-yet-segmented text
    # Where each state-changing tag next occurs at or after `pos` (n: nowhere). A position is
    # searched again only once the scan has passed it, so every occurrence is found once.
    t_open = t_close = c_open = -1
    while pos < n:
        if t_open < pos:
            t_open = find(THINK_OPEN, pos)
            if t_open < 0:
                t_open = n
        if t_close < pos:
            t_close = find(THINK_CLOSE, pos)
            if t_close < 0:
                t_close = n
        if c_open < pos:
            c_open = find(CALL_OPEN, pos)
            if c_open < 0:
                c_open = n
        i = t_open if t_open < t_close else t_close
        if c_open < i:
            i = c_open
        if i == n:
            segments.append(Segment(TEXT, pos, n, pos, n))
            answer.append(text[pos:])
            break
        if i == t_close:
            # A stray </think>: what came before it (since the last block) was reasoning whose
            # opening tag is missing, as some models write. Qwen-style templates read it so too.
            end = i + len(THINK_CLOSE)
            segments.append(Segment(REASONING, pos, end, pos, i))
            thoughts.append(text[pos:i].strip())
            pos = end
            continue
        if i > pos:
            segments.append(Segment(TEXT, pos, i, pos, i))
            answer.append(text[pos:i])
        if i == t_open:
            body_start = i + len(THINK_OPEN)
            if t_close < n:  # the first </think> after the opener closes it
                end = t_close + len(THINK_CLOSE)
                segments.append(Segment(REASONING, i, end, body_start, t_close))
                thoughts.append(text[body_start:t_close].strip())
            else:
                # Unclosed: it runs to the next <tool_call> (a model that forgot </think>
                # still calls its tools) or to the end.
                end = c_open
                segments.append(Segment(REASONING, i, end, body_start, end, False))
                thoughts.append(text[body_start:end].strip())
            pos = end
        else:  # <tool_call>
            body_start = i + len(CALL_OPEN)
            raw, body_end, end, value, err = _block(text, body_start, CALL_CLOSE, CALL_OPEN)
            calls.append(_tool_call(raw, value, err, len(segments)))
            segments.append(Segment(TOOL_CALL, i, end, body_start, body_end, end > body_end))
            pos = end
    return Turn("assistant", text, segments, thoughts, calls, "".join(answer).strip())


def _tool_call(raw: str, value: Any, err: str | None, seg: int) -> ToolCall:
    if err is not None:
        m = _NAME_RE.search(raw)
        return ToolCall(m.group(1) if m else "", None, raw, False, err, seg)
    if value.__class__ is not dict:
        return ToolCall("", value, raw, False, f"tool call is a JSON {type(value).__name__}, not an object", seg)
    name = value.get("name")
    args = value.get("arguments", {})
    if args.__class__ is str:
        # Some writers double-encode the arguments; accept a string that holds a JSON object.
        try:
            args = orjson.loads(args)
        except orjson.JSONDecodeError:
            pass
    if name.__class__ is not str or not name:
        return ToolCall("", args, raw, False, "tool call has no name", seg)
    if args.__class__ is not dict:
        return ToolCall(name, args, raw, False, f"arguments is a {type(args).__name__}, not an object", seg)
    return ToolCall(name, args, raw, True, None, seg)


# ----------------------------------------------------------------------------- tool turns


def _parse_tool(text: str) -> Turn:
    segments: list[Segment] = []
    responses: list[ToolResponse] = []
    find = text.find
    n = len(text)
    pos = 0
    while pos < n:
        i = find(RESP_OPEN, pos)
        if i < 0:
            segments.append(Segment(TEXT, pos, n, pos, n))
            break
        if i > pos:
            segments.append(Segment(TEXT, pos, i, pos, i))
        body_start = i + len(RESP_OPEN)
        raw, body_end, end, value, err = _block(text, body_start, RESP_CLOSE, RESP_OPEN)
        responses.append(_tool_response(raw, value, err, len(segments)))
        segments.append(Segment(TOOL_RESPONSE, i, end, body_start, body_end, end > body_end))
        pos = end
    return Turn("tool", text, segments, [], [], "", responses)


def _tool_response(raw: str, value: Any, err: str | None, seg: int) -> ToolResponse:
    if err is not None:
        # Not JSON: some harnesses write the tool's output as plain text.
        return ToolResponse(None, None, raw.strip(), raw, err, seg)
    if value.__class__ is not dict:
        return ToolResponse(None, None, value, raw, None, seg)
    call_id = value.get("tool_call_id")
    name = value.get("name")
    return ToolResponse(
        call_id if call_id.__class__ is str else None,
        name if name.__class__ is str else None,
        value.get("content", value),
        raw,
        None,
        seg,
    )


# parse_turn's dispatch: the roles that hold tags (ShareGPT `from` or chat role).
_PARSERS = {"gpt": _parse_assistant, "assistant": _parse_assistant, "tool": _parse_tool}


# ----------------------------------------------------------------------------- shared


def _block(text: str, body_start: int, close: str, opener: str) -> tuple[str, int, int, Any, str | None]:
    """Find the end of a JSON-bodied block. Returns (body, body_end, end, value, error)."""
    j = text.find(close, body_start)
    if j >= 0:  # the common case: the body decodes up to the first closing tag
        body = text[body_start:j]
        try:
            return body, j, j + len(close), loads(body), None
        except JSONDecodeError:
            pass
    return _block_fallback(text, body_start, j, close, opener)


def _block_fallback(text: str, body_start: int, first: int, close: str, opener: str) -> tuple[str, int, int, Any, str | None]:
    """A block whose body does not decode up to its first closing tag (`first`, -1 if none).

    A later closing tag whose body decodes wins: this is how `</tool_call>` written inside a
    JSON string is told apart from the real one. If none does, the first closing tag is used and
    the body reported malformed. With no closing tag the block runs to the end (unclosed), or up
    to the next opening tag of the same kind, which is likelier what the writer meant.
    """
    find = text.find
    if first < 0:
        k = find(opener, body_start)
        body_end = k if k >= 0 else len(text)
        body = text[body_start:body_end]
        value, err = _decode(body)
        return body, body_end, body_end, value, f"unclosed {opener} block" + ("" if err is None else f"; {err}")
    first_err = _decode(text[body_start:first])[1]
    j = first
    for _ in range(MAX_CLOSE_CANDIDATES - 1):
        j = find(close, j + len(close))
        if j < 0:
            break
        body = text[body_start:j]
        value, err = _decode(body)
        if err is None:
            return body, j, j + len(close), value, None
    # Nothing decoded. If another opener appears before the first closer, this block was
    # never closed: end it at that opener so the next block parses on its own.
    k = find(opener, body_start, first)
    if k >= 0:
        return text[body_start:k], k, k, None, f"unclosed {opener} block; {first_err}"
    return text[body_start:first], first, first + len(close), None, first_err


def _decode(body: str) -> tuple[Any, str | None]:
    if not body or body.isspace():
        return None, "empty body"
    try:
        return orjson.loads(body), None
    except orjson.JSONDecodeError as e:
        return None, f"malformed JSON: {e}"


def _pair(trace: Trace) -> None:
    calls = trace.calls
    responses = trace.responses
    pending: list[int] = []  # the latest assistant turn's unanswered calls, in order
    for ti, turn in enumerate(trace.turns):
        if turn.role == "assistant" and turn.tool_calls:
            pending = []
            for k in range(len(turn.tool_calls)):
                pending.append(len(calls))
                calls.append((ti, k))
        elif turn.role == "tool":
            for k, resp in enumerate(turn.tool_responses):
                ri = len(responses)
                responses.append((ti, k))
                ci = _call_by_id(trace, resp)
                if ci is None or trace.call(ci).response is not None:
                    ci = pending[0] if pending else None
                if ci is None:
                    continue  # a response with no call: counted by metrics
                trace.call(ci).response = ri
                resp.call = ci
                if ci in pending:
                    pending.remove(ci)


def _call_by_id(trace: Trace, resp: ToolResponse) -> int | None:
    """The call a `functions.<name>:<n>` id names, if it exists and its name agrees."""
    cid = resp.tool_call_id
    if not cid:
        return None
    _, sep, num = cid.rpartition(":")
    if not sep or not num.isdigit():
        return None
    n = int(num)
    if n >= len(trace.calls):
        return None
    call = trace.call(n)
    prefix = cid[: -len(num) - 1]
    if call.name and prefix.endswith(call.name) or (resp.name and resp.name == call.name):
        return n
    return None


# ----------------------------------------------------------------------------- output schema


def trace_to_record(trace: Trace) -> dict[str, Any]:
    """The JSON-friendly record `streamproc parse` writes (schema documented in the README)."""
    turns = []
    for t in trace.turns:
        d: dict[str, Any] = {"role": t.role}
        if t.role == "assistant":
            d["thoughts"] = t.thoughts
            d["tool_calls"] = [
                {"name": c.name, "arguments": c.arguments, "valid": c.valid, "error": c.error} for c in t.tool_calls
            ]
            d["answer"] = t.answer
        elif t.role == "tool":
            d["tool_responses"] = [
                {"tool_call_id": r.tool_call_id, "name": r.name, "content": r.content, "error": r.error}
                for r in t.tool_responses
            ]
        else:
            d["text"] = t.text
        turns.append(d)
    return {
        "id": trace.id,
        "source": trace.source,
        "category": trace.category,
        "subcategory": trace.subcategory,
        "task": trace.task,
        "turns": turns,
    }
