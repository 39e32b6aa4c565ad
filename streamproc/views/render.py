"""Terminal rendering of one parsed Trace: marked blocks in conversation order.

Pure: `trace_lines` turns a Trace into styled `Line`s, `to_text` joins them with or without ANSI
colour. Long values are shortened with their full length noted; `limits=None` shows everything.
The replayer and the web viewer reuse the block renderers and `shorten` / `clip_values`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import orjson

from streamproc.analyze.outcomes import status
from streamproc.records import Trace
from streamproc.parse.turns import REASONING, TEXT, TOOL_CALL, ToolCall, ToolResponse, Turn
from streamproc.views.safe import visible

# Line styles, each with its ANSI colour.
HEADER, LABEL_USER, LABEL_THINK, LABEL_CALL, LABEL_OK, LABEL_ERROR, LABEL_ANSWER = (
    "header", "user", "think", "call", "ok", "error", "answer",
)
BODY, DIM_BODY, NOTE = "body", "dim", "note"
_ANSI = {
    HEADER: "1;97",
    LABEL_USER: "1;36",
    LABEL_THINK: "1;35",
    LABEL_CALL: "1;33",
    LABEL_OK: "1;32",
    LABEL_ERROR: "1;31",
    LABEL_ANSWER: "1;34",
    DIM_BODY: "2",
    NOTE: "2;3",
}
INDENT = "    "


@dataclass(slots=True, frozen=True)
class Line:
    style: str
    text: str


@dataclass(slots=True, frozen=True)
class Limits:
    """How many characters of each kind of value to show before shortening."""

    user: int = 1500
    thought: int = 1200
    answer: int = 2000
    value: int = 600  # one tool-call argument or one field of a tool response


DEFAULT = Limits()


def shorten(text: str, limit: int | None) -> str:
    """`text` cut to `limit` characters (and about one line per 40 of them, so a column of short
    lines is cut too), with a note of how much there was. None: unchanged."""
    if limit is None:
        return text
    max_lines = max(limit // 40, 3)
    if len(text) <= limit and text.count("\n") < max_lines:
        return text
    cut = min(len(text), limit)
    nl = -1
    for _ in range(max_lines):
        nl = text.find("\n", nl + 1, cut)
        if nl < 0:
            break
    else:
        cut = nl
    lines = text.count("\n") + 1
    size = f"{len(text):,} chars" + (f", {lines:,} lines" if lines > 1 else "")
    return f"{text[:cut]}… [shortened: {size} in full]"


def clip_values(value: Any, limit: int | None) -> Any:
    """A copy of a JSON value with every string shortened to `limit`; a value nested too deep to
    walk is returned as it is."""
    try:
        return _clip(value, limit)
    except RecursionError:
        return value


def _clip(value: Any, limit: int | None) -> Any:
    if isinstance(value, str):
        return shorten(value, limit)
    if isinstance(value, dict):
        return {k: _clip(v, limit) for k, v in value.items()}
    if isinstance(value, list):
        return [_clip(v, limit) for v in value]
    return value


# ----------------------------------------------------------------------------- blocks


def _body(text: str, style: str = BODY) -> list[Line]:
    return [Line(style, INDENT + line) for line in text.split("\n")]


def value_lines(value: Any, limit: int | None) -> list[Line]:
    """A tool-call's arguments or a tool response's content, one `key: value` per field; text
    with newlines (code, terminal output) as an indented block rather than an escaped string."""
    if isinstance(value, str):
        decoded = _json_in_string(value)
        if decoded is None:
            return _body(shorten(value, limit))
        value = decoded
    if not isinstance(value, dict):
        return _body(shorten(_pretty(clip_values(value, limit)), limit))
    out: list[Line] = []
    for key, v in value.items():
        text = shorten(v if isinstance(v, str) else _pretty(clip_values(v, limit)), limit)
        if isinstance(v, str) and "\n" in v:
            # Code and terminal output: a block under the key, not an escaped one-liner.
            out.append(Line(BODY, f"{INDENT}{key}:"))
            out.extend(Line(BODY, INDENT * 2 + line) for line in text.split("\n"))
        else:
            first, *rest = text.split("\n")
            out.append(Line(BODY, f"{INDENT}{key}: {first}"))
            out.extend(Line(BODY, INDENT * 2 + line) for line in rest)
    return out


def _json_in_string(s: str) -> Any:
    """A tool that returned JSON as text: decode it so it reads like the structured ones."""
    t = s.lstrip()
    if not t[:1] in ("{", "["):
        return None
    try:
        return orjson.loads(t)
    except orjson.JSONDecodeError:
        return None


def _pretty(value: Any) -> str:
    try:
        compact = orjson.dumps(value)
    except TypeError:  # nested deeper than orjson writes (254 levels): the json module goes deeper
        return _deep(value)
    if isinstance(value, (dict, list)) and len(compact) > 80:
        return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()
    return compact.decode()


def _deep(value: Any) -> str:
    import json

    try:
        return json.dumps(value, ensure_ascii=False)
    except RecursionError:
        return "(a value nested too deep to show)"


def user_lines(text: str, turn: int, limits: Limits | None) -> list[Line]:
    """A user turn, `turn` its 0-based index (shown from 1)."""
    return [Line(LABEL_USER, f"── USER (turn {turn + 1})"), *_body(shorten(text, limits and limits.user))]


def thought_lines(thoughts: Iterable[str], limits: Limits | None) -> list[Line]:
    out: list[Line] = []
    for t in thoughts:
        if t:
            out.append(Line(LABEL_THINK, "── THINK"))
            out.extend(_body(shorten(t, limits and limits.thought), DIM_BODY))
    return out


def call_lines(call: ToolCall, number: int | None, limits: Limits | None) -> list[Line]:
    """A call, `number` its 0-based place in the conversation (shown from 1, as turns are)."""
    tag = f"#{number + 1} " if number is not None else ""
    if not call.valid:
        head = Line(LABEL_ERROR, f"── CALL {tag}{call.name or '?'}  malformed: {call.error}")
        return [head, *_body(shorten(call.raw.strip(), limits and limits.value))]
    args = value_lines(call.arguments, limits and limits.value) if call.arguments else [Line(NOTE, INDENT + "(no arguments)")]
    return [Line(LABEL_CALL, f"── CALL {tag}{call.name}"), *args]


def response_lines(resp: ToolResponse, number: int | None, limits: Limits | None) -> list[Line]:
    """A response, `number` the 0-based place of its call (shown from 1). A null `error` field,
    which most good results carry, is left out: it says nothing."""
    tag = f"#{number + 1} " if number is not None else ""
    err = status(resp)
    name = resp.name or "?"
    if resp.call is None:
        name += "  (answers no call)"
    head = Line(LABEL_ERROR, f"── RESULT {tag}{name}  error: {err}") if err else Line(LABEL_OK, f"── RESULT {tag}{name}  ok")
    out = [head, *value_lines(_without_null_error(resp.content), limits and limits.value)]
    if resp.error:
        out.append(Line(NOTE, f"{INDENT}(not JSON: {resp.error})"))
    return out


def _without_null_error(content: Any) -> Any:
    value = _json_in_string(content) if isinstance(content, str) else content
    if isinstance(value, dict) and "error" in value and value["error"] in (None, ""):
        return {k: v for k, v in value.items() if k != "error"}
    return content


def text_lines(text: str, final: bool, limits: Limits | None) -> list[Line]:
    """Assistant text outside blocks: the answer when the turn calls no tool, else remarks."""
    label = "── ANSWER" if final else "── TEXT"
    return [Line(LABEL_ANSWER, label), *_body(shorten(text, limits and limits.answer))]


def assistant_blocks(trace: Trace, ti: int) -> Iterator[tuple[str, Any, int | None]]:
    """An assistant turn's blocks in the order written: (REASONING, text, None),
    (TOOL_CALL, call, its number in the conversation) and (TEXT, stripped text, None)."""
    turn = trace.turns[ti]
    thoughts = iter(turn.thoughts)
    calls = iter(enumerate(turn.tool_calls, trace.calls.index((ti, 0)) if turn.tool_calls else 0))
    for seg in turn.segments:
        if seg.kind == REASONING:
            yield REASONING, next(thoughts), None
        elif seg.kind == TOOL_CALL:
            number, call = next(calls)
            yield TOOL_CALL, call, number
        else:
            text = turn.text[seg.start : seg.end].strip()
            if text:
                yield TEXT, text, None


def assistant_lines(trace: Trace, ti: int, limits: Limits | None, with_responses: bool = False) -> list[Line]:
    """An assistant turn's blocks; with_responses puts each call's response right under it
    (the replayer's view)."""
    final = not trace.turns[ti].tool_calls
    out: list[Line] = []
    for kind, value, number in assistant_blocks(trace, ti):
        if kind == REASONING:
            out.extend(thought_lines([value], limits))
        elif kind == TEXT:
            out.extend(text_lines(value, final, limits))
        else:
            out.extend(call_lines(value, number, limits))
            if with_responses:
                out.extend(response_lines(trace.response(value.response), number, limits) if value.response is not None
                           else [Line(LABEL_ERROR, f"── RESULT #{number + 1}  no response")])
    return out


def header_lines(trace: Trace) -> list[Line]:
    where = " / ".join(x for x in (trace.category, trace.subcategory) if x) or "no category"
    return [
        Line(HEADER, f"━━ TASK [{where}]  source: {trace.source or '-'}  id: {trace.id}"),
        *_body(trace.task or "(no task)"),
        Line(NOTE, f"{INDENT}{len(trace.turns)} turns, {len(trace.calls)} tool calls (turns, calls and steps are numbered from 1)"),
    ]


# ----------------------------------------------------------------------------- whole trace


def trace_lines(trace: Trace, limits: Limits | None = DEFAULT) -> list[Line]:
    """Every turn in order. Calls and responses carry their number in the conversation, so a
    result can be matched to its call by eye. The system prompt is only shown with no limits."""
    out = header_lines(trace)
    for ti, turn in enumerate(trace.turns):
        out.append(Line(BODY, ""))
        out.extend(_turn_lines(trace, ti, turn, limits))
    return out


def _turn_lines(trace: Trace, ti: int, turn: Turn, limits: Limits | None) -> list[Line]:
    if turn.role == "system":
        if limits is None:
            return [Line(HEADER, f"── SYSTEM (turn {ti + 1})"), *_body(turn.text, DIM_BODY)]
        return [Line(NOTE, f"── system prompt: {len(turn.text):,} chars (--full shows it)")]
    if turn.role == "user":
        return user_lines(turn.text, ti, limits)
    if turn.role == "assistant":
        return [Line(NOTE, f"── assistant (turn {ti + 1})"), *assistant_lines(trace, ti, limits)]
    out = [Line(NOTE, f"── tool (turn {ti + 1})")]
    for resp in turn.tool_responses:
        out.extend(response_lines(resp, resp.call, limits))
    if not turn.tool_responses and turn.text:
        out.extend(_body(shorten(turn.text, limits and limits.value)))
    return out


def to_text(lines: Iterable[Line], color: bool = False) -> str:
    """The lines as text, control characters from the data shown as escapes (safe.visible);
    with `color`, each line wrapped in its ANSI style."""
    if not color:
        return visible("\n".join(line.text for line in lines)) + "\n"
    parts = []
    for line in lines:
        code = _ANSI.get(line.style)
        text = visible(line.text)
        parts.append(f"\x1b[{code}m{text}\x1b[0m" if code and text else text)
    return "\n".join(parts) + "\n"
