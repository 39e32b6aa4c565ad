"""Per-trace quality features: one flat record per parsed trace, the columns curation's conditions read."""

from __future__ import annotations

from typing import Any, Sequence

import pyarrow as pa

from streamproc.analyze.facts import trace_facts
from streamproc.analyze.outcomes import ERROR_CLASSES, MISSING_ARGUMENT, UNKNOWN_ARGUMENT, UNKNOWN_TOOL
from streamproc.records import RowError, Trace


_I, _B, _S = pa.int64(), pa.bool_(), pa.string()

FEATURES: tuple[tuple[str, pa.DataType, str], ...] = (
    ("id", _S, "the row's id"),
    ("source", _S, "the row's source (the file name when the input has no `source` column)"),
    ("category", _S, "the row's category"),
    ("subcategory", _S, "the row's subcategory"),
    ("messages", _I, "entries in `conversations` (system, user, assistant and tool turns)"),
    ("assistant_turns", _I, "assistant (`gpt`) turns"),
    ("tool_calls", _I, "`<tool_call>` blocks in assistant turns, well-formed or not"),
    ("tool_responses", _I, "`<tool_response>` blocks in tool turns"),
    ("distinct_tools", _I, "different tool names among the calls (a call with no readable name counts for none)"),
    ("max_parallel_calls", _I, "the most calls in one assistant turn (0 when no call)"),
    ("failed_responses", _I, "tool responses the outcome classifier marks as failed (any class)"),
    *((f"failed_{c}", _I, f"failed responses of class `{c}` (see the README's failure classes)") for c in ERROR_CLASSES),
    (
        "unrecovered_failures", _I,
        "failed responses after which no later response in the trace from the same tool succeeds "
        "(the tool is the paired call's name, else the response's own name; `<malformed>` for a call "
        "with no name, `<unpaired>` for a response with neither)",
    ),
    ("malformed_calls", _I, "calls the parser marks invalid: body not JSON (or never closed), not an object, no `name`, or `arguments` not an object"),
    ("malformed_responses", _I, "tool responses the parser could not read: body not JSON, or never closed"),
    ("declared_tools", _I, "tools the row's `tools` column declares; NULL when that column is not readable JSON"),
    ("unknown_tool_calls", _I, "well-formed calls to a tool the row does not declare (0 when it declares none)"),
    ("missing_arguments", _I, "well-formed calls to a declared tool that lack one of its required arguments"),
    ("unknown_arguments", _I, "well-formed calls passing an argument the tool's schema does not list (closed schemas only)"),
    ("calls_without_response", _I, "calls no tool response was paired with"),
    ("responses_without_call", _I, "tool responses paired with no call"),
    ("think_blocks", _I, "reasoning blocks in assistant turns as the parser reads them: `<think>...</think>`, and text closed by a stray `</think>`"),
    ("empty_think_blocks", _I, "of those, blocks with only whitespace inside"),
    ("reasoning_chars", _I, "characters of reasoning (inside those blocks, surrounding whitespace stripped)"),
    ("answer_chars", _I, "characters of assistant text outside `<think>` and `<tool_call>` blocks"),
    ("ends_with_answer", _B, "there is an assistant turn and the last one calls no tool"),
    ("longest_value_chars", _I, "characters of the longest `conversations` value"),
    ("chars", _I, "characters of all `conversations` values"),
)
TOKEN_FEATURES: tuple[tuple[str, pa.DataType, str], ...] = (
    ("tokens", _I, "tokens of the conversation rendered by the chat template (what `pack` tokenizes); NULL when it cannot render"),
    ("trained_tokens", _I, "of those, tokens with a loss (assistant turns, as `pack` masks by default)"),
    ("system_prompt_tokens", _I, "tokens of the system message alone, rendered (0 when there is none)"),
)


def feature_schema(tokens: bool = False) -> pa.Schema:
    return pa.schema([(n, t) for n, t, _ in FEATURES + (TOKEN_FEATURES if tokens else ())])


def features_table(records: list[dict[str, Any]], tokens: bool = False) -> pa.Table:
    """Feature records as an Arrow table, built column by column (ten times faster than
    Table.from_pylist, which goes row by row)."""
    schema = feature_schema(tokens)
    return pa.Table.from_arrays([pa.array([r.get(f.name) for r in records], type=f.type) for f in schema], schema=schema)


def features(trace: Trace) -> dict[str, Any]:
    """The quality features of one parsed trace (definitions in FEATURES)."""
    facts = trace_facts(trace)
    names: set[str] = set()
    malformed = unanswered = unknown_tool = missing = unknown_arg = 0
    for call in facts.calls:
        for problem in call.problems:
            unknown_tool += problem == UNKNOWN_TOOL
            missing += problem == MISSING_ARGUMENT
            unknown_arg += problem == UNKNOWN_ARGUMENT
        if call.call.name:
            names.add(call.call.name)
        malformed += not call.valid
        unanswered += not call.answered
    failed = dict.fromkeys(ERROR_CLASSES, 0)
    unpaired = unreadable = unrecovered = 0
    succeeded_later: set[str] = set()
    # Backwards, so "a later success from the same tool" is a set lookup.
    for resp in reversed(facts.responses):
        unpaired += not resp.paired
        unreadable += not resp.readable
        failure = resp.failure
        if failure is None:
            succeeded_later.add(resp.tool)
        else:
            failed[failure] += 1
            unrecovered += resp.tool not in succeeded_later
    assistant = facts.assistant()
    return {
        "id": trace.id,
        "source": trace.source,
        "category": trace.category,
        "subcategory": trace.subcategory,
        "messages": facts.messages,
        "assistant_turns": len(assistant),
        "tool_calls": len(facts.calls),
        "tool_responses": len(facts.responses),
        "distinct_tools": len(names),
        "max_parallel_calls": max((t.calls for t in assistant), default=0),
        "failed_responses": sum(failed.values()),
        **{f"failed_{c}": n for c, n in failed.items()},
        "unrecovered_failures": unrecovered,
        "malformed_calls": malformed,
        "malformed_responses": unreadable,
        "declared_tools": facts.declared_tools,
        "unknown_tool_calls": unknown_tool,
        "missing_arguments": missing,
        "unknown_arguments": unknown_arg,
        "calls_without_response": unanswered,
        "responses_without_call": unpaired,
        "think_blocks": sum(t.think_blocks for t in assistant),
        "empty_think_blocks": sum(t.empty_think_blocks for t in assistant),
        "reasoning_chars": sum(t.reasoning_chars for t in assistant),
        "answer_chars": sum(t.answer_chars for t in assistant),
        "ends_with_answer": bool(assistant) and not assistant[-1].calls,
        "longest_value_chars": facts.longest_value_chars,
        "chars": facts.chars,
    }


class TokenFeatures:
    """tokens / trained_tokens / system_prompt_tokens through the masker `pack` uses. Picklable;
    the tokenizer loads in the process that first counts."""

    def __init__(self, tokenizer: str):
        self.tokenizer = tokenizer

    def masker(self):
        from streamproc.prepare.mask import cached_masker

        return cached_masker(self.tokenizer)

    def count(self, traces: Sequence[Trace]) -> list[dict[str, int | None]]:
        from streamproc.prepare.chat import TemplateError, render

        m = self.masker()
        out = []
        for trace, res in m.mask_many(traces):
            if isinstance(res, RowError):
                out.append(dict.fromkeys(("tokens", "trained_tokens", "system_prompt_tokens")))
                continue
            msgs = m.messages(trace)
            system = 0
            if msgs and msgs[0].role == "system":
                try:
                    system = len(m.encode(render(m.tokenizer, msgs[:1], m.info).text)[0])
                except TemplateError:
                    system = None
            seq = res.seqs[0] if res.seqs else None
            out.append({
                "tokens": 0 if seq is None else len(seq.input_ids),
                "trained_tokens": 0 if seq is None else int((seq.labels != -100).sum()),
                "system_prompt_tokens": system,
            })
        return out
