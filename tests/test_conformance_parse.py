"""Conformance over the real traces in ../shared/data/real (skipped with the reason when absent).

Counting rule for "calls == <tool_call> blocks": occurrences of `<tool_call>` in an assistant
turn, outside closed `<think>` blocks (reasoning may talk about the tag without calling).
"""

from __future__ import annotations

import re

from streamproc.parse.parser import parse_trace, parse_turn
from streamproc.parse.turns import REASONING

_CLOSED_THINK = re.compile(r"<think>.*?</think>", re.DOTALL)


def call_tags(text: str) -> int:
    return _CLOSED_THINK.sub("", text).count("<tool_call>")


def check_turn_tiles(turn) -> None:
    assert "".join(turn.text[s.start : s.end] for s in turn.segments) == turn.text


def test_every_real_row_parses_and_pairs(real_rows):
    assert real_rows, "no rows in the real files"
    calls = responses = 0
    for row in real_rows:
        trace = parse_trace(row)
        assert len(trace.turns) == len(row["conversations"])
        for turn, raw in zip(trace.turns, row["conversations"]):
            check_turn_tiles(turn)
            if raw["from"] == "gpt":
                assert len(turn.tool_calls) == call_tags(raw["value"]), (row["id"], raw["value"][:200])
                assert all(c.valid for c in turn.tool_calls), [c.error for c in turn.tool_calls if not c.valid]
            if raw["from"] == "tool":
                assert len(turn.tool_responses) == raw["value"].count("<tool_response>")
                assert all(r.error is None for r in turn.tool_responses)
        for i in range(len(trace.responses)):
            resp = trace.response(i)
            assert resp.call is not None, f"{row['id']}: response {i} has no call"
            call = trace.call(resp.call)
            assert call.response == i
            assert resp.name in (call.name, "unknown"), (row["id"], resp.name, call.name)
        calls += len(trace.calls)
        responses += len(trace.responses)
    assert calls > 200 and responses > 200  # the files hold real tool use, not only chat


def test_real_qwen_stray_closing_tags_are_reasoning(real_rows):
    # Rows of the qwen harness write "<think>\n</think>\nREASONING\n</think>\n\nANSWER".
    strays = 0
    for row in real_rows:
        for raw in row["conversations"]:
            value = raw["value"]
            if raw["from"] == "gpt" and value.count("</think>") > value.count("<think>"):
                turn = parse_turn("gpt", value)
                n = value.count("</think>")
                assert [s.kind for s in turn.segments[:n]] == [REASONING] * n
                assert "</think>" not in turn.answer
                strays += 1
    assert strays > 10


def test_kimi_message_fragments(kimi_fragments):
    assert len(kimi_fragments) == 19
    for frag in kimi_fragments:
        turn = parse_turn(frag["from"], frag["value"])
        check_turn_tiles(turn)
        if frag["from"] == "gpt":
            # kimi reasoning starts with one space after "<think>\n"; the thought is stripped.
            assert frag["value"].startswith("<think>\n ") and turn.thoughts and turn.thoughts[0][:1].strip()
            assert len(turn.tool_calls) == call_tags(frag["value"])
            assert all(c.valid and c.name for c in turn.tool_calls)
        elif frag["from"] == "tool":
            assert turn.tool_responses and all(r.error is None for r in turn.tool_responses)
            for r in turn.tool_responses:
                # call ids look like functions.<name>:<n>, and name the tool that answered
                prefix, _, n = r.tool_call_id.rpartition(":")
                assert prefix == f"functions.{r.name}" and n.isdigit()
