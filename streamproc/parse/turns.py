"""What the parser makes of one turn: its segments, tool calls and tool responses.

These are the records built most often (a few per turn, millions per dataset), so they are
compiled with parse.py by mypyc where the install could (see setup.py and _compiled.py).
Each has an explicit `__init__` because mypyc compiles a written constructor into C, while the
one `dataclass` generates is Python made at run time; `dataclass(init=False)` still gives them
repr, ==, `fields()` and `asdict()`. No `slots=True`: it would make dataclass swap the compiled
class for a Python copy, and a compiled class has no per-instance `__dict__` anyway.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Segment kinds. Segments of a turn tile its text: every character belongs to exactly one.
REASONING = "reasoning"
TEXT = "text"
TOOL_CALL = "tool_call"
TOOL_RESPONSE = "tool_response"


@dataclass(init=False)
class Segment:
    """A span [start, end) of a turn's text; body_start/body_end exclude the tags."""

    kind: str
    start: int
    end: int
    body_start: int
    body_end: int
    closed: bool  # False when the text ended before the closing tag

    def __init__(self, kind: str, start: int, end: int, body_start: int, body_end: int, closed: bool = True) -> None:
        self.kind = kind
        self.start = start
        self.end = end
        self.body_start = body_start
        self.body_end = body_end
        self.closed = closed


@dataclass(init=False)
class ToolCall:
    name: str
    arguments: Any  # dict when valid; whatever was there otherwise
    raw: str  # the body between the tags, as written
    valid: bool
    error: str | None
    segment: int  # index into Turn.segments
    response: int | None  # index into Trace.responses, once paired

    def __init__(
        self, name: str, arguments: Any, raw: str, valid: bool, error: str | None, segment: int, response: int | None = None
    ) -> None:
        self.name = name
        self.arguments = arguments
        self.raw = raw
        self.valid = valid
        self.error = error
        self.segment = segment
        self.response = response


@dataclass(init=False)
class ToolResponse:
    tool_call_id: str | None
    name: str | None
    content: Any  # decoded JSON, or the raw string
    raw: str
    error: str | None  # parse problem, not the tool's own failure
    segment: int
    call: int | None  # index into Trace.calls, once paired

    def __init__(
        self,
        tool_call_id: str | None,
        name: str | None,
        content: Any,
        raw: str,
        error: str | None,
        segment: int,
        call: int | None = None,
    ) -> None:
        self.tool_call_id = tool_call_id
        self.name = name
        self.content = content
        self.raw = raw
        self.error = error
        self.segment = segment
        self.call = call


@dataclass(init=False)
class Turn:
    role: str  # system / user / assistant / tool
    text: str
    segments: list[Segment]
    thoughts: list[str]
    tool_calls: list[ToolCall]
    answer: str
    tool_responses: list[ToolResponse]

    def __init__(
        self,
        role: str,
        text: str,
        segments: list[Segment],
        thoughts: list[str] | None = None,
        tool_calls: list[ToolCall] | None = None,
        answer: str = "",
        tool_responses: list[ToolResponse] | None = None,
    ) -> None:
        self.role = role
        self.text = text
        self.segments = segments
        self.thoughts = [] if thoughts is None else thoughts
        self.tool_calls = [] if tool_calls is None else tool_calls
        self.answer = answer
        self.tool_responses = [] if tool_responses is None else tool_responses
