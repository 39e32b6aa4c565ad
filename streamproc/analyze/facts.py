"""One walk over a parsed trace: the facts that metrics, features and the trace list count.

Which tool a response belongs to, what a call without a name is called, which responses failed
and how, which calls went unanswered: decided here once, so `stats`, `features`, the report page
and `ls` cannot disagree about a trace.
"""

from __future__ import annotations

from dataclasses import dataclass

from streamproc.analyze.outcomes import MALFORMED_CALL, UNPARSED, check_call, flagged_by_substring, parse_tools, status
from streamproc.records import Trace

MALFORMED = "<malformed>"
"""The tool of a call with no readable name, and of the responses paired with it."""
UNPAIRED = "<unpaired>"
"""The tool of a response paired with no call that names no tool itself."""


@dataclass(slots=True)
class CallFacts:
    name: str  # as the parser read it; "" when the call has none
    turn: int  # the assistant turn's number, from 1
    valid: bool
    answered: bool  # a response was paired with it
    problems: list[str]  # outcomes.check_call against the row's tools
    chars: int  # of the body as written

    @property
    def tool(self) -> str:
        return self.name or MALFORMED


@dataclass(slots=True)
class ResponseFacts:
    tool: str  # the paired call's tool, else the response's own name, else UNPAIRED
    paired: bool
    readable: bool  # the parser decoded its body
    status: str | None  # outcomes.status: a failure class, UNPARSED, or None when it succeeded
    flagged_by_substring: bool  # what a naive `"error" in text` check says (outcomes.flagged_by_substring)

    @property
    def failure(self) -> str | None:
        """The tool's failure class (outcomes.classify), None when it succeeded or was unreadable."""
        return None if self.status == UNPARSED else self.status


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
    messages: int
    chars: int  # of every `conversations` value
    longest_value_chars: int
    declared_tools: int | None  # None: the row's `tools` is not readable JSON
    assistant: list[AssistantFacts]
    calls: list[CallFacts]  # in trace order
    responses: list[ResponseFacts]  # in trace order

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
    assistant: list[AssistantFacts] = []
    calls: list[CallFacts] = []
    for turn in trace.turns:
        if turn.role != "assistant":
            continue
        number = len(assistant) + 1
        for call in turn.tool_calls:
            calls.append(CallFacts(call.name, number, call.valid, call.response is not None, check_call(call, specs), len(call.raw)))
        thoughts = turn.thoughts
        assistant.append(AssistantFacts(len(turn.tool_calls), len(thoughts), thoughts.count(""), sum(map(len, thoughts)),
                                        sum(len(k.raw) for k in turn.tool_calls), len(turn.answer)))
    responses = []
    for i in range(len(trace.responses)):
        resp = trace.response(i)
        if resp.call is not None:
            tool = calls[resp.call].tool
        else:
            tool = resp.name or UNPAIRED
        responses.append(ResponseFacts(tool, resp.call is not None, resp.error is None, status(resp), flagged_by_substring(resp)))
    lengths = [len(t.text) for t in trace.turns]
    return Facts(len(trace.turns), sum(lengths), max(lengths, default=0), None if specs is None else len(specs),
                 assistant, calls, responses)
