"""Single-pass trace parser.

Each turn is scanned once, left to right, by a small state machine: outside any block it looks
for whichever state-changing tag comes next (`<think>`, a stray `</think>`, `<tool_call>`; in
tool turns `<tool_response>`); inside a block it looks only for that block's closing tag. Tags
are found with `str.find`, each occurrence once, so the scan is linear and runs at C speed; a
closing tag is found through the next "<" (a one-character search, memchr), which in well-formed
turns is the tag itself.
Tool-call and tool-response bodies are decoded with orjson. When a body fails to decode and a
later closing tag exists, the later one is tried: this is how `</tool_call>` written inside a
JSON string argument is told apart from the real closing tag. The parser never raises on any
string; problems are reported on the records.

Segments tile the turn's text exactly, so `"".join(text[s.start:s.end] for s in segments) == text`.

This module and turns.py are compiled to C by mypyc where the install can (setup.py), so the code
is written for that: `text.find(...)` and `type(x) is T` are direct C calls there, where a bound
method held in a local (`find = text.find`, faster as plain Python) would be a generic call.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import orjson
from orjson import JSONDecodeError, loads

from streamproc.parse.schema import TraceRecord, TurnRecord
from streamproc.records import ROLES, Row, Trace
from streamproc.parse.turns import REASONING, TEXT, TOOL_CALL, TOOL_RESPONSE, Segment, ToolCall, ToolResponse, Turn

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
RESP_OPEN, RESP_CLOSE = "<tool_response>", "</tool_response>"

# How many later closing tags to try when a body does not decode. Bounded so adversarial text
# with thousands of closing tags stays linear.
MAX_CLOSE_CANDIDATES = 16

_NAME_RE = re.compile(r'"name"\s*:\s*"((?:[^"\\]|\\.)*)"')

# The deepest a block's body may nest and still be kept as a value. orjson writes at most 254
# levels and every record wraps a body in a few more (record, turns, turn, calls), and Python
# walks a value by recursion (1,000 frames): a deeper body is kept as text, with the reason.
MAX_NESTING = 200
FEW_CONTAINERS = 32  # a body with no more dicts and lists than this is checked without scanning its text
# A JSON string (skipped whole, so brackets inside it do not count) or a bracket.
_NESTING_RE = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')

_CHAT_ROLE = {**ROLES, **{v: v for v in ROLES.values()}}


def parse_turn(role: str, text: object) -> Turn:
    """Parse one turn. `role` is a ShareGPT `from` (gpt, human, ...) or a chat role. `text` that
    is not a str (None, a number) is read as its str()."""
    if type(text) is not str:
        text = "" if text is None else str(text)
    if role == "gpt" or role == "assistant":
        return _parse_assistant(text)
    if role == "tool":
        return _parse_tool(text)
    return Turn(_CHAT_ROLE.get(role, role), text, [Segment(TEXT, 0, len(text), 0, len(text))] if text else [])


def parse_trace(row: Row | Mapping[str, Any], source: str | None = None) -> Trace:
    """Parse a row in the dataset schema (a dict or a validated Row) into a Trace.

    Calls are paired with responses by tool_call_id (`functions.<name>:<n>`, n counting calls
    across the conversation), else by position among the latest assistant turn's unanswered calls.
    """
    if not isinstance(row, Row):
        from streamproc.io.layouts import row_from_record
        from streamproc.records import Location

        row = row_from_record(row, Location("<memory>", 0), "")
    src = row.source if source is None else source
    if row.chat is not None:  # the chat layout: turns built from its structure when it was read
        c = row.chat
        return Trace(row.id, src, row.category, row.subcategory, row.task, c.turns, row.tools, list(c.calls), list(c.responses), row.extra, c)
    turns = [parse_turn(frm, value) for frm, value in row.conversations]
    trace = Trace(
        id=row.id,
        source=src,
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
    n = len(text)
    # Tag lengths are written as literals: <think> 7, </think> 8, <tool_call> 11, </tool_call> 12.
    pos = 0  # start of the not-yet-segmented text
    # Where each state-changing tag next occurs at or after `pos` (n: nowhere; -1: not searched
    # yet). A position is searched again only once the scan has passed it, so every occurrence
    # is found once and the scan is linear. Think tags are searched for only when the text up to
    # the next <tool_call> holds a "<" at all, which in well-formed turns it does not.
    t_open = t_close = c_open = -1
    c_close = -1  # the next </tool_call>, remembered by _block
    if text.startswith("<think>"):  # how the harness starts every assistant turn
        t_close = text.find("<", 7)  # as in _block: the first "<" after a body is nearly always the tag
        if t_close >= 0 and not text.startswith("</think>", t_close):
            t_close = text.find("</think>", t_close + 1)
        if t_close >= 0:  # the first </think> after the opener closes it
            pos = t_close + 8
            segments.append(Segment(REASONING, 0, pos, 7, t_close))
            thoughts.append(text[7:t_close].strip())
        else:  # unclosed: it runs to the first <tool_call>, else to the end
            t_close = n
            pos = c_open = text.find("<tool_call>", 7)
            if pos < 0:
                pos = c_open = n
            segments.append(Segment(REASONING, 0, pos, 7, pos, False))
            thoughts.append(text[7:pos].strip())
    while pos < n:
        # lt: the first "<" at or after pos, or c_open if there is none before it. Found with
        # memchr; it is nearly always the next <tool_call> itself, and where it is not, the text
        # up to the <tool_call> is the only place a think tag can be.
        if c_open < pos:
            lt = text.find("<", pos)
            if lt < 0:
                c_open = lt = n
            elif text.startswith("<tool_call>", lt):
                c_open = lt
            else:
                c_open = text.find("<tool_call>", lt + 1)
                if c_open < 0:
                    c_open = n
        else:
            lt = text.find("<", pos, c_open)
            if lt < 0:
                lt = c_open
        if c_open > pos:
            # The text up to the next <tool_call>: plain text unless it holds a "<" (then look
            # for think tags in it).
            if lt < c_open:
                if t_open < pos:
                    t_open = text.find("<think>", pos)
                    if t_open < 0:
                        t_open = n
                if t_close < pos:
                    t_close = text.find("</think>", pos)
                    if t_close < 0:
                        t_close = n
                if t_close < t_open and t_close < c_open:
                    # A stray </think>: what came before it (since the last block) was reasoning
                    # whose opening tag is missing, as some models write. Qwen-style templates
                    # read it so too.
                    end = t_close + 8
                    segments.append(Segment(REASONING, pos, end, pos, t_close))
                    thoughts.append(text[pos:t_close].strip())
                    pos = end
                    continue
                if t_open < c_open:  # then t_open < t_close too
                    if t_open > pos:
                        segments.append(Segment(TEXT, pos, t_open, pos, t_open))
                        answer.append(text[pos:t_open])
                    body_start = t_open + 7
                    if t_close < n:  # the first </think> after the opener closes it
                        pos = t_close + 8
                        segments.append(Segment(REASONING, t_open, pos, body_start, t_close))
                        thoughts.append(text[body_start:t_close].strip())
                    else:
                        # Unclosed: it runs to the next <tool_call> (a model that forgot
                        # </think> still calls its tools) or to the end.
                        pos = c_open
                        segments.append(Segment(REASONING, t_open, pos, body_start, pos, False))
                        thoughts.append(text[body_start:pos].strip())
                    continue
            segments.append(Segment(TEXT, pos, c_open, pos, c_open))
            answer.append(text[pos:c_open])
            if c_open == n:
                break
        # A <tool_call> at c_open.
        body_start = c_open + 11
        raw, body_end, pos, value, err, c_close = _block(text, body_start, c_close, CALL_CLOSE, CALL_OPEN)
        if err is None and type(value) is dict:
            name = value.get("name")
            args = value.get("arguments")  # absent, a string or anything else: _tool_call says
            if type(args) is dict and type(name) is str and name:
                calls.append(ToolCall(name, args, raw, True, None, len(segments)))
            else:
                calls.append(_tool_call(raw, value, None, len(segments)))
        else:
            calls.append(_tool_call(raw, value, err, len(segments)))
        segments.append(Segment(TOOL_CALL, c_open, pos, body_start, body_end, pos > body_end))
    return Turn("assistant", text, segments, thoughts, calls, "".join(answer).strip(), [])


def _tool_call(raw: str, value: Any, err: str | None, seg: int) -> ToolCall:
    if err is not None:
        m = _NAME_RE.search(raw)
        return ToolCall(m.group(1) if m else "", None, raw, False, err, seg)
    if type(value) is not dict:
        return ToolCall("", value, raw, False, f"tool call is a JSON {type(value).__name__}, not an object", seg)
    name = value.get("name")
    args = value.get("arguments", {})
    if type(args) is str:
        # Some writers double-encode the arguments; accept a string that holds a JSON object.
        try:
            args = orjson.loads(args)
        except orjson.JSONDecodeError:
            pass
    if type(name) is not str or not name:
        return ToolCall("", args, raw, False, "tool call has no name", seg)
    if type(args) is not dict:
        return ToolCall(name, args, raw, False, f"arguments is a {type(args).__name__}, not an object", seg)
    return ToolCall(name, args, raw, True, None, seg)


# ----------------------------------------------------------------------------- tool turns


def _parse_tool(text: str) -> Turn:
    segments: list[Segment] = []
    responses: list[ToolResponse] = []
    n = len(text)
    pos = 0
    r_close = -1  # the next </tool_response>, remembered by _block
    # <tool_response> is 15 characters.
    while pos < n:
        i = text.find("<tool_response>", pos)
        if i < 0:
            segments.append(Segment(TEXT, pos, n, pos, n))
            break
        if i > pos:
            segments.append(Segment(TEXT, pos, i, pos, i))
        body_start = i + 15
        raw, body_end, pos, value, err, r_close = _block(text, body_start, r_close, RESP_CLOSE, RESP_OPEN)
        if err is None and type(value) is dict:
            call_id = value.get("tool_call_id")
            name = value.get("name")
            responses.append(
                ToolResponse(
                    call_id if type(call_id) is str else None,
                    name if type(name) is str else None,
                    value.get("content", value),
                    raw,
                    None,
                    len(segments),
                )
            )
        elif err is None:
            responses.append(ToolResponse(None, None, value, raw, None, len(segments)))
        else:  # not JSON: some harnesses write the tool's output as plain text
            responses.append(ToolResponse(None, None, raw.strip(), raw, err, len(segments)))
        segments.append(Segment(TOOL_RESPONSE, i, pos, body_start, body_end, pos > body_end))
    return Turn("tool", text, segments, [], [], "", responses)


# ----------------------------------------------------------------------------- shared


def _block(text: str, body_start: int, close_at: int, close: str, opener: str) -> tuple[str, int, int, Any, str | None, int]:
    """Read a JSON-bodied block. Returns (body, body_end, end, value, error, close_at).

    `close_at` is the caller's remembered position of the next closing tag (len(text): none
    left), searched again only once body_start has passed it, so many unclosed blocks do not
    each search the rest of the text. The first "<" after a body is its closing tag in nearly
    every turn, and a one-character search (memchr) runs several times faster than one for the
    whole tag; where that "<" is not the tag, the tag is searched for from there, which finds the
    same first match.
    """
    n = len(text)
    if close_at < body_start:
        close_at = text.find("<", body_start)
        if close_at >= 0 and not text.startswith(close, close_at):
            close_at = text.find(close, close_at + 1)
        if close_at < 0:
            close_at = n
    if close_at < n:  # the common case: the body decodes up to the first closing tag
        body = text[body_start:close_at]
        try:
            value = loads(body)
        except JSONDecodeError:
            return (*_block_fallback(text, body_start, close_at, close, opener), close_at)
        deep = None if _shallow(body, value) else _too_deep(body)
        if deep is not None:
            return body, close_at, close_at + len(close), None, deep, close_at
        return body, close_at, close_at + len(close), value, None, close_at
    return (*_block_fallback(text, body_start, -1, close, opener), close_at)


def _block_fallback(text: str, body_start: int, first: int, close: str, opener: str) -> tuple[str, int, int, Any, str | None]:
    """A block whose body does not decode up to its first closing tag (`first`, -1 if none).

    A later closing tag whose body decodes wins: this is how `</tool_call>` written inside a
    JSON string is told apart from the real one. If none does, the first closing tag is used and
    the body reported malformed. With no closing tag the block runs to the end (unclosed), or up
    to the next opening tag of the same kind, which is likelier what the writer meant.
    """
    if first < 0:
        k = text.find(opener, body_start)
        body_end = k if k >= 0 else len(text)
        body = text[body_start:body_end]
        value, err = _decode(body)
        return body, body_end, body_end, value, f"unclosed {opener} block" + ("" if err is None else f"; {err}")
    first_err = _decode(text[body_start:first])[1]
    j = first
    for _ in range(MAX_CLOSE_CANDIDATES - 1):
        j = text.find(close, j + len(close))
        if j < 0:
            break
        body = text[body_start:j]
        value, err = _decode(body)
        if err is None:
            return body, j, j + len(close), value, None
    # Nothing decoded. If another opener appears before the first closer, this block was
    # never closed: end it at that opener so the next block parses on its own.
    k = text.find(opener, body_start, first)
    if k >= 0:
        return text[body_start:k], k, k, None, f"unclosed {opener} block; {first_err}"
    return text[body_start:first], first, first + len(close), None, first_err


def _decode(body: str) -> tuple[Any, str | None]:
    if not body or body.isspace():
        return None, "empty body"
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        # orjson reads 1,024 levels: a deeper body fails here, and is named for its depth.
        deep = _too_deep(body)
        return None, f"malformed JSON: {e}" if deep is None else deep
    deep = None if _shallow(body, value) else _too_deep(body)
    return (value, None) if deep is None else (None, deep)


def _shallow(body: str, value: Any) -> bool:
    """Whether `body`, decoded to `value`, surely nests no deeper than MAX_NESTING: it is too short
    to (valid JSON that deep has that many brackets on each side), or `value` holds at most
    FEW_CONTAINERS dicts and lists. True of nearly every body, found without scanning its text."""
    if len(body) <= 2 * MAX_NESTING:
        return True
    stack: list[Any] = [value]
    seen = 0
    while stack:
        v = stack.pop()
        if type(v) is dict:
            d: dict[Any, Any] = v
            children: Any = d.values()
        elif type(v) is list:
            children = v
        else:
            continue
        seen += 1
        if seen > FEW_CONTAINERS:
            return False
        for x in children:
            if type(x) is dict or type(x) is list:
                stack.append(x)
    return True


def _too_deep(body: str) -> str | None:
    """Why `body` is kept as text when it nests deeper than MAX_NESTING, else None. Counting
    brackets first costs two C scans, so the text is walked only where there are that many."""
    if body.count("{") + body.count("[") <= MAX_NESTING:
        return None
    depth = 0
    for m in _NESTING_RE.finditer(body):
        c = m.group()
        if c == "{" or c == "[":
            depth += 1
            if depth > MAX_NESTING:
                return f"nested deeper than {MAX_NESTING} levels, more than a record can hold: kept as text"
        elif c == "}" or c == "]":
            depth -= 1
    return None


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


def trace_to_record(trace: Trace) -> TraceRecord:
    """The JSON-friendly record `streamproc parse` writes; its fields are declared in
    record_schema (typed, so the keys written here are checked against them)."""
    turns: list[TurnRecord] = []
    for t in trace.turns:
        d: TurnRecord = {"role": t.role}
        if t.role == "assistant":
            d["thoughts"] = t.thoughts
            # An invalid call keeps its body as written (`raw`): a malformed one decodes to nothing.
            d["tool_calls"] = [
                {"name": c.name, "arguments": c.arguments, "valid": c.valid, "error": c.error, "raw": None if c.valid else c.raw}
                for c in t.tool_calls
            ]
            d["answer"] = t.answer
        elif t.role == "tool":
            d["tool_responses"] = [
                {"tool_call_id": r.tool_call_id, "name": r.name, "content": r.content, "error": r.error}
                for r in t.tool_responses
            ]
            # The text outside <tool_response> blocks: all of it where a harness writes plain output.
            d["text"] = "".join([t.text[g.start : g.end] for g in t.segments if g.kind == TEXT])
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
