"""One walk over a parsed trace: the facts that metrics, features and the trace list count.

Which tool a response belongs to, what a call without a name is called, which responses failed
and how, which calls went unanswered: decided here once, so `stats`, `features`, the report page
and `ls` cannot disagree about a trace.
"""

from __future__ import annotations

from dataclasses import dataclass

from streamproc.analyze.outcomes import MALFORMED_CALL, UNPARSED, ToolSpec, check_call, flagged_by_substring, parse_tools, status
from streamproc.parse.turns import ToolCall, ToolResponse
from streamproc.records import Trace

MALFORMED = "<malformed>"
"""The tool of a call with no readable name, and of the responses paired with it."""
UNPAIRED = "<unpaired>"
"""The tool of a response paired with no call that names no tool itself."""


@dataclass(slots=True)
class CallFacts:
    call: ToolCall
    tool: str  # the call's name, or MALFORMED when it has none
    turn: int  # the assistant turn's number, from 1
    valid: bool
    answered: bool  # a response was paired with it
    specs: dict[str, ToolSpec] | None  # the row's declared tools (outcomes.parse_tools)

    @property
    def problems(self) -> list[str]:
        """outcomes.check_call against the row's tools (worked out when asked: the trace list needs none)."""
        return check_call(self.call, self.specs)


@dataclass(slots=True)
class ResponseFacts:
    response: ToolResponse
    tool: str  # the paired call's tool, else the response's own name, else UNPAIRED
    paired: bool
    readable: bool  # the parser decoded its body
    status: str | None  # outcomes.status: a failure class, UNPARSED, or None when it succeeded

    @property
    def failure(self) -> str | None:
        """The tool's failure class (outcomes.classify), None when it succeeded or was unreadable."""
        return None if self.status == UNPARSED else self.status

    @property
    def flagged_by_substring(self) -> bool:
        """What a naive `"error" in text` check says (outcomes.flagged_by_substring), when asked."""
        return flagged_by_substring(self.response)


@dataclass(slots=True)
class AssistantFacts:
    calls: int
    think_blocks: int
    empty_think_blocks: int
    reasoning_chars: int
    call_chars: int  # of the call bodies as written
    answer_chars: int


@dataclass(slots=True)
class Facts:
    """A trace's calls and responses with the tool each belongs to and how each went, decided
    once; what only some readers need is worked out when asked."""

    trace: Trace
    declared_tools: int | None  # None: the row's `tools` is not readable JSON
    calls: list[CallFacts]  # in trace order
    responses: list[ResponseFacts]  # in trace order

    def assistant(self) -> list[AssistantFacts]:
        """The assistant turns' reasoning, call and answer lengths."""
        return [
            AssistantFacts(len(t.tool_calls), len(t.thoughts), t.thoughts.count(""), sum(map(len, t.thoughts)),
                           sum(len(k.raw) for k in t.tool_calls), len(t.answer))
            for t in self.trace.turns
            if t.role == "assistant"
        ]

    @property
    def messages(self) -> int:
        return len(self.trace.turns)

    @property
    def chars(self) -> int:
        """Of every `conversations` value."""
        return sum(len(t.text) for t in self.trace.turns)

    @property
    def longest_value_chars(self) -> int:
        return max((len(t.text) for t in self.trace.turns), default=0)

    def tools(self) -> list[str]:
        """Distinct tools called, in order of first use."""
        return list(dict.fromkeys(c.tool for c in self.calls))

    def failed_tools(self) -> list[str]:
        """Distinct tools with a malformed call or a failed (or unreadable) response, calls first."""
        return list(dict.fromkeys([c.tool for c in self.calls if not c.valid] + [r.tool for r in self.responses if r.status]))

    def failure_classes(self) -> list[str]:
        """MALFORMED_CALL when a call is malformed, then the distinct statuses of the responses that failed."""
        return list(dict.fromkeys([MALFORMED_CALL for c in self.calls if not c.valid] + [r.status for r in self.responses if r.status]))

    def errors(self) -> int:
        """Malformed calls plus failed (or unreadable) responses."""
        return sum(not c.valid for c in self.calls) + sum(r.status is not None for r in self.responses)


def trace_facts(trace: Trace) -> Facts:
    specs = parse_tools(trace.tools)
    calls: list[CallFacts] = []
    turn_number = 0
    for turn in trace.turns:
        if turn.role == "assistant":
            turn_number += 1
            calls.extend(CallFacts(c, c.name or MALFORMED, turn_number, c.valid, c.response is not None, specs) for c in turn.tool_calls)
    responses = []
    for i in range(len(trace.responses)):
        resp = trace.response(i)
        paired = resp.call is not None
        tool = calls[resp.call].tool if resp.call is not None else resp.name or UNPAIRED
        responses.append(ResponseFacts(resp, tool, paired, resp.error is None, status(resp)))
    return Facts(trace, None if specs is None else len(specs), calls, responses)
