"""`streamproc show` and the renderer, on real traces from ../shared/data/real."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, strategies as st

from streamproc.cli import main
from streamproc.parse.parser import parse_trace
from streamproc.views.render import DEFAULT, shorten, status, to_text, trace_lines

ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture(scope="module")
def traces(real_rows):
    return [parse_trace(r) for r in real_rows]


def _with_failure(traces):
    return next(t for t in traces if any(status(t.response(i)) for i in range(len(t.responses))) and len(t.calls) > 3)


def test_every_block_is_shown_marked_and_in_order(traces):
    for trace in traces:
        text = to_text(trace_lines(trace))
        assert trace.task.split("\n")[0][:60] in text
        pos = 0
        for ti, turn in enumerate(trace.turns):
            if turn.role == "user":
                pos = text.index(f"── USER (turn {ti + 1})", pos)
            for k, call in enumerate(turn.tool_calls):
                pos = text.index(f"── CALL #{trace.calls.index((ti, k)) + 1} {call.name}", pos)
            for resp in turn.tool_responses:
                err = status(resp)
                mark = f"error: {err}" if err else "ok"
                pos = text.index(f"── RESULT #{resp.call + 1} {resp.name}  {mark}", pos)
            if turn.role == "assistant" and turn.answer and not turn.tool_calls:
                pos = text.index("── ANSWER", pos)


def test_failed_response_shows_its_error_class_and_content(traces):
    trace = _with_failure(traces)
    text = to_text(trace_lines(trace))
    failed = [trace.response(i) for i in range(len(trace.responses)) if status(trace.response(i))]
    for resp in failed:
        assert f"error: {status(resp)}" in text
    assert "error_type: tool:execution_failed" in text  # content shown as key: value, not raw JSON


def test_long_values_are_shortened_with_their_length_and_full_shows_them(traces):
    trace, longest = max(
        ((t, turn.answer) for t in traces for turn in t.turns if turn.role == "assistant" and not turn.tool_calls),
        key=lambda x: len(x[1]),
    )
    assert len(longest) > DEFAULT.answer
    short = to_text(trace_lines(trace))
    assert f"[shortened: {len(longest):,} chars, {longest.count(chr(10)) + 1:,} lines in full]" in short
    assert longest not in short
    full = to_text(trace_lines(trace, None))
    assert "shortened:" not in full
    assert "\n".join("    " + line for line in longest.split("\n")) in full
    system = trace.turns[0].text
    assert f"system prompt: {len(system):,} chars" in short
    assert "    " + system.split("\n")[-1] in full and "── SYSTEM (turn 1)" in full


def test_colour_is_only_decoration(traces):
    trace = _with_failure(traces)
    lines = trace_lines(trace)
    coloured = to_text(lines, color=True)
    assert "\x1b[1;31m── RESULT" in coloured  # failures in red
    assert ANSI.sub("", coloured) == to_text(lines)
    assert "\x1b" not in to_text(lines)


@given(st.text(max_size=300), st.integers(min_value=1, max_value=200))
def test_shorten_keeps_a_prefix_and_notes_the_length(text, limit):
    out = shorten(text, limit)
    if out == text:
        return
    kept, note = out.split("… [shortened: ", 1)
    assert text.startswith(kept) and len(kept) <= limit
    assert note.startswith(f"{len(text):,} chars")


def test_show_cli_piped_has_no_colour_and_finds_by_id_and_index(real_row_files, capsys):
    path = real_row_files[-1]
    rows = [json.loads(line) for line in path.open(encoding="utf-8")]
    assert main(["show", str(path), "--index", "9"]) == 0
    by_index = capsys.readouterr().out
    assert main(["show", str(path), "--id", rows[9]["id"], "--workers", "1"]) == 0
    by_id = capsys.readouterr().out
    assert by_index == by_id == to_text(trace_lines(parse_trace(rows[9], source=path.name.removesuffix(".jsonl"))))
    assert "\x1b" not in by_id
    assert main(["show", str(path), "--index", "9", "--color", "always"]) == 0
    assert "\x1b[" in capsys.readouterr().out


def test_show_cli_explains_missing_and_bad_rows(real_rows, tmp_path, capsys):
    path = tmp_path / "mixed.jsonl"
    row = dict(real_rows[20])
    bad = {**row, "id": "bad", "conversations": [{"from": "robot", "value": "x"}]}
    path.write_text(json.dumps(row) + "\n" + json.dumps(bad) + "\n", encoding="utf-8")
    assert main(["show", str(path), "--id", "no-such-id"]) == 2
    assert "no trace with id 'no-such-id'" in capsys.readouterr().err
    assert main(["show", str(path), "--index", "1"]) == 2
    err = capsys.readouterr().err
    assert f"{path}:row 1" in err and "conversations[0].from" in err
    assert main(["show", str(path), "--index", "5"]) == 2
    assert "no row 5: the input has 2 rows" in capsys.readouterr().err


def test_malformed_tool_call_is_marked_not_hidden(real_rows):
    def calls(t):
        return t["from"] == "gpt" and "<tool_call>" in t["value"]

    row = next(r for r in real_rows if any(calls(t) for t in r["conversations"]))
    convs = [dict(t) for t in row["conversations"]]
    k = next(i for i, t in enumerate(convs) if calls(t))
    convs[k]["value"] = convs[k]["value"].replace('"arguments": {', '"arguments": {{', 1)
    text = to_text(trace_lines(parse_trace({**row, "conversations": convs})))
    assert re.search(r"── CALL #1 \S+  malformed: ", text)
    assert '"arguments": {{' in text


@pytest.mark.parametrize("depth", [300, 1000])
def test_arguments_nested_deeper_than_orjson_writes_still_render(depth):
    """orjson reads 1,024 levels but writes only 254: the parser keeps such a call as text, and
    it is shown as written, with the reason, not a traceback."""
    call = '{"name": "terminal", "arguments": ' + '{"a": ' * depth + "{}" + "}" * depth + "}"
    trace = parse_trace({"id": "deep", "conversations": [
        {"from": "human", "value": "go"},
        {"from": "gpt", "value": f"<tool_call>\n{call}\n</tool_call>"},
    ]})
    assert not trace.turns[1].tool_calls[0].valid
    text = to_text(trace_lines(trace, None))
    assert "── CALL #1 terminal  malformed: nested deeper than 200 levels" in text and '{"a": {"a":' in text


@pytest.mark.parametrize("depth", [300, 1000])
def test_a_response_holding_json_text_nested_deeper_than_orjson_writes_still_renders(depth):
    content = json.dumps('{"a": ' * depth + "{}" + "}" * depth)  # JSON as a string: the renderer decodes it
    trace = parse_trace({"id": "deep", "conversations": [
        {"from": "gpt", "value": '<tool_call>{"name": "t", "arguments": {}}</tool_call>'},
        {"from": "tool", "value": '<tool_response>{"name": "t", "content": ' + content + "}</tool_response>"},
    ]})
    text = to_text(trace_lines(trace, None))
    assert '{"a": {"a":' in text or "nested too deep to show" in text
