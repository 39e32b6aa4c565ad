"""Unit tests of the turn parser: the canonical layout and every odd input the issue lists."""

from __future__ import annotations

import json

import orjson
import pyarrow.parquet as pq
import pytest

from streamproc.analyze.metrics import collect
from streamproc.io.sources import plan
from streamproc.parse.job import parse_to_file
from streamproc.parse.parser import MAX_NESTING, parse_trace, parse_turn, trace_to_record
from streamproc.parse.turns import REASONING, TEXT, TOOL_CALL, TOOL_RESPONSE, Turn


def kinds(turn: Turn) -> list[str]:
    return [s.kind for s in turn.segments]


def assert_tiles(turn: Turn) -> None:
    pos = 0
    for s in turn.segments:
        assert s.start == pos and s.start <= s.body_start <= s.body_end <= s.end
        pos = s.end
    assert pos == len(turn.text)


def call_block(name: str, arguments, **kw) -> str:
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments, **kw}, ensure_ascii=False) + "\n</tool_call>"


def response_block(call_id, name, content) -> str:
    body = {"tool_call_id": call_id, "name": name, "content": content}
    return "<tool_response>\n" + json.dumps(body, ensure_ascii=False) + "\n</tool_response>"


def test_kimi_layout_with_parallel_calls():
    text = (
        "<think>\n The user wants two files.\n</think>\n  Reading both."
        "\n" + call_block("read_file", {"path": "a.py"}) + "\n" + call_block("read_file", {"path": "b.py"})
    )
    turn = parse_turn("gpt", text)
    assert turn.role == "assistant"
    assert kinds(turn) == [REASONING, TEXT, TOOL_CALL, TEXT, TOOL_CALL]
    assert turn.thoughts == ["The user wants two files."]
    assert turn.answer == "Reading both."
    assert [(c.name, c.arguments, c.valid, c.error) for c in turn.tool_calls] == [
        ("read_file", {"path": "a.py"}, True, None),
        ("read_file", {"path": "b.py"}, True, None),
    ]
    reasoning, _, call, _, _ = turn.segments
    assert text[reasoning.body_start : reasoning.body_end] == "\n The user wants two files.\n"
    assert text[call.start : call.end].startswith("<tool_call>") and text[call.start : call.end].endswith("</tool_call>")
    assert turn.tool_calls[0].segment == 2 and turn.tool_calls[1].segment == 4
    assert_tiles(turn)


def test_empty_think_and_final_answer():
    turn = parse_turn("assistant", "<think>\n</think>\nDone: 3 files.")
    assert kinds(turn) == [REASONING, TEXT]
    assert turn.thoughts == [""] and turn.answer == "Done: 3 files." and turn.tool_calls == []


def test_two_think_blocks():
    turn = parse_turn("gpt", "<think>a</think>mid<think>b</think>end")
    assert kinds(turn) == [REASONING, TEXT, REASONING, TEXT]
    assert turn.thoughts == ["a", "b"] and turn.answer == "midend"


def test_stray_closing_think_makes_preceding_text_reasoning():
    # The layout of the real qwen traces: an empty think, then reasoning closed by a second </think>.
    text = '<think>\n</think>\nThe user said "hi".\n</think>\n\nHello!'
    turn = parse_turn("gpt", text)
    assert kinds(turn) == [REASONING, REASONING, TEXT]
    assert turn.thoughts == ["", 'The user said "hi".']
    assert turn.answer == "Hello!"
    stray = turn.segments[1]
    assert text[stray.body_start : stray.body_end] == '\nThe user said "hi".\n'
    assert text[stray.start : stray.end].endswith("</think>")
    assert_tiles(turn)


def test_unclosed_think_runs_to_the_end():
    turn = parse_turn("gpt", "<think>still thinking")
    assert kinds(turn) == [REASONING]
    assert turn.segments[0].closed is False and turn.thoughts == ["still thinking"]


def test_unclosed_think_stops_at_the_next_tool_call():
    text = "<think>plan" + call_block("terminal", {"command": "ls"})
    turn = parse_turn("gpt", text)
    assert kinds(turn) == [REASONING, TOOL_CALL]
    assert turn.segments[0].closed is False and turn.thoughts == ["plan"]
    assert turn.tool_calls[0].valid and turn.tool_calls[0].arguments == {"command": "ls"}


def test_tags_inside_a_closed_think_are_reasoning():
    turn = parse_turn("gpt", "<think>I will write <tool_call> next</think>\n" + call_block("x", {}))
    assert kinds(turn) == [REASONING, TEXT, TOOL_CALL]
    assert len(turn.tool_calls) == 1 and turn.thoughts == ["I will write <tool_call> next"]


def test_closing_tool_call_inside_a_json_string_argument():
    code = 'print("<tool_call>{}</tool_call>")\n# </tool_call> again'
    text = "<think>\nx\n</think>\n" + call_block("write_file", {"path": "t.py", "content": code}) + "\nafter"
    turn = parse_turn("gpt", text)
    assert kinds(turn) == [REASONING, TEXT, TOOL_CALL, TEXT]
    (call,) = turn.tool_calls
    assert call.valid and call.arguments["content"] == code
    assert turn.answer == "after"
    assert_tiles(turn)


def test_unclosed_tool_call_runs_to_the_end():
    turn = parse_turn("gpt", '<tool_call>\n{"name": "terminal", "arguments": {"command": "ls"}}')
    (call,) = turn.tool_calls
    assert turn.segments[-1].closed is False
    assert call.name == "terminal" and call.valid is False and "unclosed" in call.error


def test_unclosed_tool_call_stops_at_the_next_opener():
    text = '<tool_call>\n{"name": "a", "arguments": {\n' + call_block("b", {"k": 1})
    turn = parse_turn("gpt", text)
    assert kinds(turn) == [TOOL_CALL, TOOL_CALL]
    first, second = turn.tool_calls
    assert not first.valid and first.name == "a" and "unclosed" in first.error
    assert second.valid and second.name == "b" and second.arguments == {"k": 1}


def test_stray_closing_tool_call_is_text():
    turn = parse_turn("gpt", "done </tool_call> really")
    assert kinds(turn) == [TEXT] and turn.answer == "done </tool_call> really" and turn.tool_calls == []


def test_malformed_json_keeps_the_name_and_says_why():
    turn = parse_turn("gpt", '<tool_call>\n{"name": "terminal", "arguments": {"command": "ls"\n</tool_call>\nok')
    (call,) = turn.tool_calls
    assert call.valid is False and call.name == "terminal" and call.arguments is None
    assert call.error.startswith("malformed JSON")
    assert call.raw == '\n{"name": "terminal", "arguments": {"command": "ls"\n'
    assert kinds(turn) == [TOOL_CALL, TEXT] and turn.answer == "ok"


def test_call_that_is_not_an_object_or_has_no_name():
    not_object, no_name, empty = parse_turn(
        "gpt", "<tool_call>[1, 2]</tool_call><tool_call>{\"arguments\": {}}</tool_call><tool_call> </tool_call>"
    ).tool_calls
    assert not not_object.valid and "not an object" in not_object.error and not_object.arguments == [1, 2]
    assert not no_name.valid and no_name.error == "tool call has no name"
    assert not empty.valid and empty.error == "empty body"


def test_arguments_given_as_a_json_string():
    (call,) = parse_turn("gpt", call_block("terminal", json.dumps({"command": "pwd"}))).tool_calls
    assert call.valid and call.arguments == {"command": "pwd"}
    (bad,) = parse_turn("gpt", call_block("terminal", "not json")).tool_calls
    assert not bad.valid and bad.arguments == "not json" and "str" in bad.error


def test_non_ascii_and_emoji_offsets_are_characters():
    text = "<think>\n 用户想要 🚀 部署\n</think>\n  好的 👍" + call_block("terminal", {"command": "echo 错误 🔥"})
    turn = parse_turn("gpt", text)
    assert turn.thoughts == ["用户想要 🚀 部署"] and turn.answer == "好的 👍"
    assert turn.tool_calls[0].arguments == {"command": "echo 错误 🔥"}
    call = turn.segments[-1]
    assert text[call.start : call.end] == call_block("terminal", {"command": "echo 错误 🔥"})
    assert_tiles(turn)


def test_tool_turn_with_json_and_string_content_and_tags_inside():
    terminal = {"output": "x </tool_response> <tool_call> y", "exit_code": 0, "error": None}
    text = response_block("functions.terminal:0", "terminal", terminal) + "\n" + response_block(
        "functions.read_file:1", "read_file", "plain <think> text"
    )
    turn = parse_turn("tool", text)
    assert kinds(turn) == [TOOL_RESPONSE, TEXT, TOOL_RESPONSE]
    first, second = turn.tool_responses
    assert (first.tool_call_id, first.name, first.content, first.error) == ("functions.terminal:0", "terminal", terminal, None)
    assert (second.name, second.content) == ("read_file", "plain <think> text")
    assert_tiles(turn)


def test_tool_response_that_is_not_json_is_kept_as_text():
    turn = parse_turn("tool", "<tool_response>\nplain output\n</tool_response>")
    (resp,) = turn.tool_responses
    assert resp.content == "plain output" and resp.tool_call_id is None and resp.error.startswith("malformed JSON")


def test_other_roles_are_one_text_segment():
    for role, chat in (("system", "system"), ("human", "user"), ("user", "user")):
        turn = parse_turn(role, "<tool_call>{}</tool_call> is just text here")
        assert turn.role == chat and kinds(turn) == [TEXT] and turn.tool_calls == []
    assert parse_turn("human", "").segments == []


def test_several_megabyte_values_parse_in_linear_time():
    # Quadratic work on 5 MB (a rescan per character, or per closing tag) would take minutes.
    big_arg = ("x" * 999 + "\n") * 5000 + "</tool_call>" * 10  # closing tags inside the string
    big_out = ("log line 🚀 " * 100 + "\n") * 4500
    call_text = "<think>\n" + "r" * 5_000_000 + "\n</think>\n" + call_block("write_file", {"content": big_arg})
    call_turn = parse_turn("gpt", call_text)
    assert call_turn.tool_calls[0].valid and call_turn.tool_calls[0].arguments == {"content": big_arg}
    assert len(call_turn.thoughts[0]) == 5_000_000
    tool_turn = parse_turn("tool", response_block("functions.write_file:0", "write_file", {"output": big_out}))
    assert tool_turn.tool_responses[0].content == {"output": big_out}


def test_many_unclosed_blocks_parse_in_linear_time():
    # Each unclosed block used to search the rest of the text for its closing tag again: 60,000
    # of them in 3 MB took about half a minute per turn. The search result is remembered now.
    calls = ("<tool_call>{" + "q" * 40) * 60_000
    turn = parse_turn("gpt", calls)
    assert len(turn.tool_calls) == 60_000 and not any(c.valid for c in turn.tool_calls)
    assert turn.tool_calls[0].error.startswith("unclosed <tool_call> block")
    # The first think runs to the first call; each call body runs to the next <tool_call>.
    turn = parse_turn("gpt", ("<think>" + "a" * 30 + "<tool_call>{}") * 30_000)
    assert len(turn.thoughts) == 1 and turn.segments[0].closed is False and len(turn.tool_calls) == 30_000
    turn = parse_turn("tool", ("<tool_response>{" + "q" * 40) * 60_000)
    assert len(turn.tool_responses) == 60_000 and turn.tool_responses[0].error.startswith("unclosed <tool_response> block")


def test_calls_pair_with_responses_by_id_else_by_position():
    row = {
        "id": "r1",
        "conversations": [
            {"from": "human", "value": "go"},
            {"from": "gpt", "value": call_block("a", {}) + "\n" + call_block("b", {})},
            # answered in reverse order, by id
            {"from": "tool", "value": response_block("functions.b:1", "b", 1) + "\n" + response_block("functions.a:0", "a", 2)},
            {"from": "gpt", "value": call_block("c", {}) + "\n" + call_block("d", {})},
            # ids in another scheme: by position
            {"from": "tool", "value": response_block("x_0", "c", 3) + "\n" + response_block("x_0", "d", 4)},
            {"from": "tool", "value": response_block("x_9", "e", 5)},  # no call left to answer
        ],
    }
    trace = parse_trace(row)
    pairs = [(trace.call(i).name, trace.call(i).response) for i in range(len(trace.calls))]
    assert pairs == [("a", 1), ("b", 0), ("c", 2), ("d", 3)]
    assert [trace.response(i).call for i in range(len(trace.responses))] == [1, 0, 2, 3, None]


def test_trace_record_schema():
    row = {
        "id": "r2", "category": "Agent Tools", "subcategory": "Memory", "task": "t",
        "conversations": [
            {"from": "system", "value": "sys"},
            {"from": "human", "value": "hi"},
            {"from": "gpt", "value": "<think>\n p\n</think>\n" + call_block("a", {"k": "v"})},
            {"from": "tool", "value": response_block("functions.a:0", "a", {"ok": True})},
            {"from": "gpt", "value": "<think>\n</think>\nbye"},
        ],
    }
    rec = trace_to_record(parse_trace(row, source="kimi"))
    assert {k: rec[k] for k in ("id", "source", "category", "subcategory", "task")} == {
        "id": "r2", "source": "kimi", "category": "Agent Tools", "subcategory": "Memory", "task": "t",
    }
    assert rec["turns"] == [
        {"role": "system", "text": "sys"},
        {"role": "user", "text": "hi"},
        {"role": "assistant", "thoughts": ["p"], "tool_calls": [{"name": "a", "arguments": {"k": "v"}, "valid": True, "error": None, "raw": None}], "answer": ""},
        {"role": "tool", "tool_responses": [{"tool_call_id": "functions.a:0", "name": "a", "content": {"ok": True}, "error": None}], "text": ""},
        {"role": "assistant", "thoughts": [""], "tool_calls": [], "answer": "bye"},
    ]


def test_parquet_rows_are_the_jsonl_records(tmp_path):
    """Both outputs of `parse` come from one definition (record_schema): every Parquet row, its
    JSON-text columns decoded, is the JSONL record, with the fields its turn's role lacks null."""
    import pyarrow.parquet as pq

    from streamproc.parse.job import parse_to_file
    from streamproc.parse.schema import TurnRecord
    from streamproc.io.sources import plan

    parse_to_file(plan(), tmp_path / "p.jsonl")
    parse_to_file(plan(), tmp_path / "p.parquet")
    records = [json.loads(line) for line in (tmp_path / "p.jsonl").open(encoding="utf-8")]
    rows = pq.read_table(tmp_path / "p.parquet").to_pylist()
    for row in rows:
        for t in row["turns"]:
            for c in t["tool_calls"] or ():
                c["arguments"] = json.loads(c.pop("arguments_json"))
            for r in t["tool_responses"] or ():
                r["content"] = json.loads(r.pop("content_json"))
    for rec in records:
        rec["turns"] = [{k: t.get(k) for k in TurnRecord.__annotations__} for t in rec["turns"]]
    assert len(rows) == 300 and rows == records


# ----------------------------------------------------------------------------- bodies nested deeper than a record holds


def nested(depth: int) -> str:
    return '{"a": ' * depth + "[1]" + "}" * depth


def deep_row(depth: int) -> dict:
    call = '{"name": "deep", "arguments": ' + nested(depth) + "}"
    response = '{"name": "deep", "content": ' + nested(depth) + "}"
    return {"id": f"deep{depth}", "conversations": [
        {"from": "human", "value": "go"},
        {"from": "gpt", "value": f"<think>x</think><tool_call>\n{call}\n</tool_call>"},
        {"from": "tool", "value": f"<tool_response>\n{response}\n</tool_response>"},
        {"from": "gpt", "value": "done"},
    ]}


DEPTHS = [100, 300, 1000, 5000]


@pytest.mark.parametrize("depth", DEPTHS)
def test_a_call_at_any_depth_parses_and_its_record_is_written(depth):
    """orjson reads 1,024 levels and writes 254: a body deeper than MAX_NESTING is kept as text,
    with the reason, instead of a record that cannot be written (or a decode error that calls
    valid JSON malformed)."""
    trace = parse_trace(deep_row(depth))
    (call,), (response,) = trace.turns[1].tool_calls, trace.turns[2].tool_responses
    assert call.name == "deep" and response.call == 0 and call.response == 0
    record = orjson.loads(orjson.dumps(trace_to_record(trace)))
    (written,) = record["turns"][1]["tool_calls"]
    (written_response,) = record["turns"][2]["tool_responses"]
    if depth + 1 <= MAX_NESTING:
        assert call.valid and written["arguments"] == json.loads(nested(depth)) and written["raw"] is None
        assert written_response["content"] == json.loads(nested(depth)) and written_response["error"] is None
    else:
        assert not call.valid and written["arguments"] is None
        assert written["error"] == f"nested deeper than {MAX_NESTING} levels, more than a record can hold: kept as text"
        assert written["raw"] == '\n{"name": "deep", "arguments": ' + nested(depth) + "}\n"
        assert written_response["content"] == '{"name": "deep", "content": ' + nested(depth) + "}"
        assert written_response["error"] == written["error"]


def test_the_depth_limit_is_exact_and_brackets_in_strings_do_not_count():
    def call(body: str):
        return parse_turn("gpt", f"<tool_call>{body}</tool_call>").tool_calls[0]

    at_limit = '{"name": "f", "arguments": ' + nested(MAX_NESTING - 2) + "}"  # MAX_NESTING levels with the [1]
    assert call(at_limit).valid
    assert not call('{"name": "f", "arguments": ' + nested(MAX_NESTING - 1) + "}").valid
    braces = json.dumps({"name": "f", "arguments": {"code": "{[" * 5000}})
    assert call(braces).valid and call(braces).arguments == {"code": "{[" * 5000}


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_deep_calls_are_written_to_files_and_counted_by_stats(tmp_path, suffix):
    src = tmp_path / "deep.jsonl"
    src.write_bytes(b"".join(orjson.dumps(deep_row(d)) + b"\n" for d in DEPTHS))
    out = tmp_path / f"records{suffix}"
    tally = parse_to_file(plan([str(src)]), out, on_error="fail")
    assert (tally.read, tally.parsed, tally.rejected) == (4, 4, [])
    if suffix == ".parquet":
        rows = pq.read_table(out).to_pylist()
        calls = [r["turns"][1]["tool_calls"][0] for r in rows]
        assert [c["arguments_json"] is not None and c["arguments_json"] != "null" for c in calls] == [True, False, False, False]
    else:
        rows = [orjson.loads(line) for line in out.read_bytes().splitlines()]
        calls = [r["turns"][1]["tool_calls"][0] for r in rows]
        assert [c["arguments"] is not None for c in calls] == [True, False, False, False]
    assert [r["id"] for r in rows] == [f"deep{d}" for d in DEPTHS]
    assert [c["valid"] for c in calls] == [True, False, False, False]
    assert all(c["raw"] is None or "deep" in c["raw"] for c in calls)
    stats, stats_tally = collect(plan([str(src)]), on_error="fail")
    total = stats.total()
    assert (stats_tally.parsed, total.tool_calls, total.tool_responses) == (4, 4, 4)
    assert total.quality["malformed_calls"] == 3 and total.quality["malformed_responses"] == 3
    assert total.tool_counts == {"deep": 4} and total.responses_by_tool == {"deep": 4}
