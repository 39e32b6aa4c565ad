"""Property tests: any text parses without an exception into segments that tile it, and
well-formed turns come back out exactly as they were generated."""

from __future__ import annotations

import json

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamproc.parse.parser import MAX_NESTING, parse_trace, parse_turn, trace_to_record
from streamproc.parse.turns import REASONING, TOOL_CALL, TOOL_RESPONSE

TAGS = ["<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"]
PROFILE = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
json_bodies = json_values.map(lambda v: json.dumps(v, ensure_ascii=False))
call_bodies = st.builds(
    lambda name, args: json.dumps({"name": name, "arguments": args}, ensure_ascii=False),
    st.text(max_size=12),
    st.dictionaries(st.text(max_size=8), json_values, max_size=3),
)
fragments = st.one_of(
    st.sampled_from(TAGS + ["<", ">", "/", "\n", " ", '"', "\\", "{", "}", "🚀", "错误", "\u200b", '"name": "x"']),
    st.text(max_size=12),
    json_bodies,
    call_bodies,
    # a closing tag inside a JSON string
    st.sampled_from(TAGS).map(lambda t: json.dumps({"name": "w", "arguments": {"s": t}})),
)
texts = st.one_of(st.text(), st.lists(fragments, max_size=30).map("".join))


def check_invariants(role: str, text: str) -> None:
    turn = parse_turn(role, text)
    pos = 0
    for seg in turn.segments:
        assert seg.start == pos < seg.end, "segments are contiguous and non-empty"
        assert seg.start <= seg.body_start <= seg.body_end <= seg.end
        pos = seg.end
    assert pos == len(text)
    assert "".join(text[s.start : s.end] for s in turn.segments) == text
    by_kind = [s.kind for s in turn.segments]
    assert len(turn.tool_calls) == by_kind.count(TOOL_CALL)
    assert len(turn.tool_responses) == by_kind.count(TOOL_RESPONSE)
    assert len(turn.thoughts) == by_kind.count(REASONING)
    for c in turn.tool_calls:
        seg = turn.segments[c.segment]
        assert seg.kind == TOOL_CALL and c.raw == text[seg.body_start : seg.body_end]
        assert c.valid == (c.error is None)
        assert not c.valid or isinstance(c.arguments, dict) and c.name
    for r in turn.tool_responses:
        seg = turn.segments[r.segment]
        assert seg.kind == TOOL_RESPONSE and r.raw == text[seg.body_start : seg.body_end]


@PROFILE
@given(texts)
def test_any_assistant_text_tiles(text):
    check_invariants("gpt", text)


@PROFILE
@given(texts)
def test_any_tool_text_tiles(text):
    check_invariants("tool", text)


def test_lone_surrogates_do_not_raise():
    for role in ("gpt", "tool"):
        check_invariants(role, '<tool_call>{"name": "\ud800"}</tool_call><tool_response>\udfff</tool_response>')


# ----------------------------------------------------------------------------- round trip

# Text around blocks: no tag inside (a text ending in "<" before a tag is fine).
plain = st.text(max_size=40).filter(lambda s: not any(t in s for t in TAGS))
thought = st.text(max_size=40).filter(lambda s: "</think>" not in s)
arguments = st.dictionaries(
    st.text(max_size=8),
    json_values | st.sampled_from(TAGS).map(lambda t: f"code {t} in a string"),
    max_size=4,
)
parts = st.lists(
    st.one_of(
        st.tuples(st.just("think"), thought),
        st.tuples(st.just("text"), plain),
        st.tuples(st.just("call"), st.tuples(st.text(min_size=1, max_size=12), arguments)),
    ),
    max_size=8,
)


@PROFILE
@given(parts)
def test_well_formed_turns_round_trip(parts):
    text, thoughts, calls, answer = "", [], [], ""
    for kind, value in parts:
        if kind == "think":
            text += f"<think>\n{value}\n</think>\n"
            thoughts.append(value.strip())
            answer += "\n"
        elif kind == "text":
            text += value
            answer += value
        else:
            name, args = value
            text += "<tool_call>\n" + json.dumps({"name": name, "arguments": args}, ensure_ascii=False) + "\n</tool_call>"
            calls.append((name, args))
    turn = parse_turn("gpt", text)
    assert turn.thoughts == thoughts
    assert [(c.name, c.arguments) for c in turn.tool_calls] == calls
    assert all(c.valid for c in turn.tool_calls)
    assert turn.answer == answer.strip()


# ----------------------------------------------------------------------------- the record holds the text


def check_record_holds_the_text(role: str, text: str) -> None:
    """Whatever the turn's text, what `streamproc parse` writes for it holds every piece: text
    outside blocks (stripped in an assistant's answer), reasoning (stripped), a call's name and
    arguments or, when invalid, its body as written, a response's content or its stripped text."""
    import orjson

    from streamproc.parse.parser import parse_trace, trace_to_record
    from streamproc.parse.turns import TEXT

    turn = parse_turn(role, text)
    assert "".join(text[s.start : s.end] for s in turn.segments) == text
    (rec,) = trace_to_record(parse_trace({"id": "x", "conversations": [{"from": role, "value": text}]}))["turns"]
    orjson.dumps(rec)  # the record is writable as it is
    calls = iter(rec.get("tool_calls", ()))
    responses = iter(rec.get("tool_responses", ()))
    outside = ""
    for s in turn.segments:
        piece, body = text[s.start : s.end], text[s.body_start : s.body_end]
        if s.kind == TEXT:
            outside += piece
            assert (piece.strip() in rec["answer"]) if role == "gpt" else (piece in rec["text"])
        elif s.kind == REASONING:
            assert body.strip() in rec["thoughts"]
        elif s.kind == TOOL_CALL:
            c = next(calls)
            if c["valid"]:
                value = json.loads(body)
                assert (value["name"], value["arguments"]) == (c["name"], c["arguments"]) and c["raw"] is None
            else:
                assert c["raw"] == body and c["error"]
        else:
            r = next(responses)
            if r["error"]:
                assert r["content"] == body.strip()
            else:
                value = json.loads(body)
                want = value.get("content", value) if isinstance(value, dict) else value
                assert orjson.dumps(r["content"]) == orjson.dumps(want)
    if role == "tool":
        assert rec["text"] == outside


@PROFILE
@given(texts)
def test_any_assistant_text_is_in_the_record(text):
    check_record_holds_the_text("gpt", text)


@PROFILE
@given(texts)
def test_any_tool_text_is_in_the_record(text):
    check_record_holds_the_text("tool", text)


def test_plain_tool_output_is_in_the_record():
    """Some harnesses write a tool's output with no <tool_response> tags at all."""
    for text in ("total 0\ndrwxr-xr-x 2 root root 40 .\n", "Error: file not found", "<b>html</b> and <tool_response"):
        check_record_holds_the_text("tool", text)


@given(st.lists(st.sampled_from(["{}", "[]"]), min_size=1, max_size=3000), st.booleans())
@PROFILE
def test_a_call_nested_to_any_depth_parses_and_its_record_is_written(shells, closed):
    """Whatever the depth, the turn parses and its record encodes: a body deeper than
    MAX_NESTING is kept as text with the reason, a shallower one as its value."""
    body = "".join('{"k": ' if s == "{}" else "[" for s in shells) + "0" + "".join("}" if s == "{}" else "]" for s in reversed(shells))
    text = '<tool_call>{"name": "f", "arguments": {"v": ' + body + "}}" + ("</tool_call>" if closed else "")
    check_invariants("gpt", text)
    trace = parse_trace({"id": "d", "conversations": [{"from": "gpt", "value": text}]})
    (call,) = trace.turns[0].tool_calls
    orjson.dumps(trace_to_record(trace))  # raises where a record cannot be written
    depth = len(shells) + 2
    assert call.name == "f"
    if depth <= MAX_NESTING:
        assert call.valid == closed and (not closed or call.arguments == {"v": json.loads(body)})
    else:
        assert not call.valid and call.arguments is None and f"nested deeper than {MAX_NESTING} levels" in call.error
