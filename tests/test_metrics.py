"""outcomes (response classes, tool-schema checks) and metrics (the mergeable aggregate), on real
traces where they exist and on seeded synthetic rows for volume."""

from __future__ import annotations

import json
import pickle
from collections import Counter

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from streamproc.analyze import outcomes
from streamproc.io import synth
from streamproc.analyze.metrics import COUNT_EDGES, LENGTH_EDGES, Counts, Hist, Stats, add_trace, collect, token_counter
from streamproc.parse.parser import parse_trace, parse_turn
from streamproc.io.sources import plan


def _response(content, name="terminal"):
    body = json.dumps({"tool_call_id": f"functions.{name}:0", "name": name, "content": content}, ensure_ascii=False)
    (resp,) = parse_turn("tool", f"<tool_response>\n{body}\n</tool_response>").tool_responses
    return resp


@pytest.mark.parametrize(
    "content, name, expected",
    [
        ({"output": "ok\n", "exit_code": 0, "error": None}, "terminal", None),
        ({"output": "", "exit_code": 2, "error": None}, "terminal", outcomes.EXIT_CODE),
        ({"output": "x", "exit_code": 0, "error": "File not found: a.html"}, "terminal", outcomes.ERROR_FIELD),
        ({"error": "Traceback (most recent call last):\n  File \"x.py\"\nKeyError: 'a'"}, "execute_code", outcomes.TRACEBACK),
        ({"status": "success", "output": "Traceback (most recent call last):\n..."}, "execute_code", outcomes.TRACEBACK),
        ({"output": "ValueError: bad literal", "exit_code": 0, "error": None}, "terminal", outcomes.TRACEBACK),
        ({"success": False, "diff": ""}, "patch", outcomes.FAILED),
        ({"status": "failed", "passed": False}, "validate_pipeline", outcomes.FAILED),
        ({"status": "unknown", "error_type": "tool:execution_failed"}, "get_schema", outcomes.UNKNOWN),
        ({"output": "fine"}, "unknown", outcomes.UNKNOWN),
        ("Tool 'x' does not exist. Available tools: clarify", "x", outcomes.ERROR_TEXT),
        ('{"status": "ok", "html": "<p>error page template</p>"}', "read_template", None),
        ("All tests passed; the word error appears here", "terminal", None),
    ],
)
def test_classify(content, name, expected):
    assert outcomes.classify(_response(content, name)) == expected


def test_classifier_versus_the_guides_substring_on_terminal_results():
    ok = _response({"output": "done", "exit_code": 0, "error": None})
    assert outcomes.classify(ok) is None and outcomes.flagged_by_substring(ok)  # the trap FORMAT.md describes


def test_real_responses_classes(real_rows):
    classes = {}
    for row in real_rows:
        trace = parse_trace(row)
        for i in range(len(trace.responses)):
            resp = trace.response(i)
            content = resp.content if isinstance(resp.content, dict) else {}
            cls = outcomes.classify(resp)
            classes[cls] = classes.get(cls, 0) + 1
            if content.get("exit_code") == 0 and content.get("error") is None and "output" in content:
                assert cls is None  # every successful terminal result reads as ok
            if content.get("status") == "unknown":
                assert cls == outcomes.UNKNOWN
    assert classes[None] > classes.get(outcomes.UNKNOWN, 0) > 0


def _kimi_tools(kimi_fragments) -> str:
    system = next(f["value"] for f in kimi_fragments if f["from"] == "system")
    return system[system.index("<tools>\n") + 8 : system.index("\n</tools>")]


def test_parse_tools_openai_style(kimi_fragments):
    specs = outcomes.parse_tools(_kimi_tools(kimi_fragments))
    assert "clarify" in specs and len(specs) >= 10
    calls = [c for f in kimi_fragments if f["from"] == "gpt" for c in parse_turn("gpt", f["value"]).tool_calls]
    assert calls and all(outcomes.check_call(c, specs) == [] for c in calls)  # real calls fit their schema


def test_parse_tools_hermes_style_and_the_real_call_to_a_missing_tool(real_rows):
    flagged = []
    for row in real_rows:
        specs = outcomes.parse_tools(row["tools"])
        trace = parse_trace(row)
        for i in range(len(trace.calls)):
            if outcomes.check_call(trace.call(i), specs):
                flagged.append((trace.call(i), trace.call(i).response, trace))
    assert len(flagged) == 1  # the one call the harness itself answered "does not exist"
    call, r, trace = flagged[0]
    assert outcomes.check_call(call, outcomes.parse_tools(trace.tools)) == [outcomes.UNKNOWN_TOOL]
    assert "does not exist" in trace.response(r).content


def test_check_call_arguments():
    tools = json.dumps([
        {"name": "read_file", "parameters": {"type": "object", "properties": {"path": {}, "offset": {}}, "required": ["path"]}},
        {"type": "function", "function": {"name": "run", "parameters": {"type": "object", "properties": {"cmd": {}}, "additionalProperties": True}}},
    ])
    specs = outcomes.parse_tools(tools)

    def problems(call_json):
        (call,) = parse_turn("gpt", f"<tool_call>\n{call_json}\n</tool_call>").tool_calls
        return outcomes.check_call(call, specs)

    assert problems('{"name": "read_file", "arguments": {"path": "a"}}') == []
    assert problems('{"name": "read_file", "arguments": {"offset": 1}}') == [outcomes.MISSING_ARGUMENT]
    assert problems('{"name": "read_file", "arguments": {"path": "a", "mode": "r"}}') == [outcomes.UNKNOWN_ARGUMENT]
    assert problems('{"name": "run", "arguments": {"anything": 1}}') == []
    assert problems('{"name": "nope", "arguments": {}}') == [outcomes.UNKNOWN_TOOL]
    assert outcomes.parse_tools("[]") == {} and outcomes.parse_tools("[{") is None


# ----------------------------------------------------------------------------- histograms


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 1500), min_size=1, max_size=300), st.sampled_from([1, 25, 50, 90, 99, 100]))
def test_count_percentiles_are_exact_below_the_overflow_bin(values, q):
    h = Hist(COUNT_EDGES)
    for v in values:
        h.add(v)
    expected = np.percentile(values, q, method="inverted_cdf")
    assert h.n == len(values) and h.total == sum(values) and h.max == max(values)
    if expected < 1024:
        assert h.percentile(q) == expected


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 10**7), min_size=1, max_size=300), st.sampled_from([10, 50, 90, 99]))
@example(values=[22, 23], q=10)  # rounded log edges once skipped 23: a 2-wide bin below 40
def test_length_percentiles_within_one_bin(values, q):
    h = Hist(LENGTH_EDGES)
    for v in values:
        h.add(v)
    expected = float(np.percentile(values, q, method="inverted_cdf"))
    got = h.percentile(q)
    assert got == expected if expected < 40 else abs(got - expected) <= 0.062 * expected + 1


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 5000)), st.lists(st.integers(0, 5000)))
def test_hist_merge_equals_one_pass(a, b):
    one, left, right = Hist(LENGTH_EDGES), Hist(LENGTH_EDGES), Hist(LENGTH_EDGES)
    for v in a + b:
        one.add(v)
    for v in a:
        left.add(v)
    for v in b:
        right.add(v)
    left.merge(pickle.loads(pickle.dumps(right)))  # as it comes back from a worker
    assert left.to_json() == one.to_json()


# ----------------------------------------------------------------------------- the aggregate


def test_counts_match_the_raw_rows(real_rows):
    c = Counts()
    for row in real_rows:
        add_trace(c, parse_trace(row))
    gpt = [t["value"] for r in real_rows for t in r["conversations"] if t["from"] == "gpt"]
    assert c.traces == len(real_rows)
    assert c.turns == sum(len(r["conversations"]) for r in real_rows)
    assert c.assistant_turns == len(gpt)
    assert c.tool_calls == sum(v.count("<tool_call>") for v in gpt) == sum(c.tool_counts.values())
    assert c.tool_responses == sum(
        t["value"].count("<tool_response>") for r in real_rows for t in r["conversations"] if t["from"] == "tool"
    )
    widths = {}
    for v in gpt:
        if v.count("<tool_call>"):
            widths[v.count("<tool_call>")] = widths.get(v.count("<tool_call>"), 0) + 1
    assert dict(c.parallel_widths) == widths
    assert c.think_blocks >= c.empty_think_blocks > 0  # some real harness turns have empty <think>
    assert c.quality["calls_without_response"] == 0 and c.quality["responses_without_call"] == 0


def test_same_result_for_any_workers_and_shard_split(real_row_files):
    one = plan(real_row_files)
    many = plan(real_row_files, shard_bytes=256 << 10)  # byte-range shards of the JSONL
    assert len(many) > len(one)
    base, tally = collect(one, workers=1)
    for shards, workers in [(many, 1), (many, 2)]:
        stats, t = collect(shards, workers=workers)
        assert stats.to_json() == base.to_json()
        assert (t.read, t.parsed) == (tally.read, tally.parsed)


def test_partial_size_is_bounded():
    """A partial result holds counters and fixed bins: 4x the rows, about the same size."""

    def size(n):
        stats = Stats()
        for row in synth.rows(n, seed=3):
            add_trace(stats.source(row["source"]), parse_trace(row))
        return len(pickle.dumps(stats))

    assert size(400) < 1.25 * size(100)


def test_bad_rows_are_counted_and_set_aside(tmp_path, real_row_files):
    good = real_row_files[0].read_text(encoding="utf-8").splitlines()[:3]
    bad = ['{"id": "x", "conversations": [{"from": "robot", "value": "hi"}]}', "{not json"]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join([good[0], bad[0], good[1], bad[1], good[2]]) + "\n", encoding="utf-8")
    stats, tally = collect(plan([path]))
    assert (tally.read, tally.parsed, len(tally.rejected)) == (5, 3, 2)
    assert stats.total().traces == 3
    assert {b.loc.row for b in tally.rejected} == {1, 3}
    assert "conversations[0].from" in str(tally.rejected[0])


def test_reasoning_tokens_match_the_tokenizer(models_dir, real_row_files):
    from transformers import AutoTokenizer

    tok_dir = models_dir / "qwen2.5-instruct-tokenizer"
    stats, _ = collect(plan(real_row_files[:1]), tokenizer=str(tok_dir))
    tok = AutoTokenizer.from_pretrained(tok_dir)
    expected = 0
    for line in real_row_files[0].open(encoding="utf-8"):
        for turn in parse_trace(json.loads(line)).turns:
            if turn.role == "assistant":
                expected += len(tok.encode("\n".join(turn.thoughts), add_special_tokens=False))
    c = stats.total()
    assert expected > 0
    assert c.reasoning_tokens_per_turn.total == c.reasoning_tokens_per_trace.total == c.output_tokens["reasoning"] == expected
    assert token_counter(str(tok_dir))(["hello world"]) == [len(tok.encode("hello world", add_special_tokens=False))]


def test_classifier_recovers_the_synthetic_failure_rate():
    """synth fails each call with probability FAIL (in every response style it writes) and
    marks UNKNOWN of them unmatched: the classifier should find about that share, no more."""
    c = Counts()
    for row in synth.rows(200, seed=11):
        add_trace(c, parse_trace(row))
    rate = sum(c.error_classes.values()) / c.tool_responses
    assert c.tool_responses > 1500
    assert abs(rate - (synth.FAIL + synth.UNKNOWN)) < 0.025
    assert c.substring_flagged_responses > 3 * sum(c.error_classes.values())  # the substring flags successes too


# ----------------------------------------------------------------------------- one walk: stats, features and ls agree

_CALLS = st.sampled_from([
    '{"name": "terminal", "arguments": {"command": "ls"}}',
    '{"name": "read_file", "arguments": {"path": "a"}}',
    '{"arguments": {"x": 1}}',  # no name: malformed
    '{"name": "terminal", "arguments": ',  # broken JSON, name still read
])
_RESPONSES = st.sampled_from([
    '{"name": "terminal", "content": {"output": "ok", "exit_code": 0, "error": null}}',
    '{"name": "terminal", "content": {"output": "", "exit_code": 2, "error": null}}',
    '{"content": {"error": "boom"}}',  # no name of its own
    '{"name": "read_file", "content": "Error: no such file"}',
    'plain text, not JSON',
])
_TURNS = st.lists(st.one_of(
    st.lists(_CALLS, min_size=1, max_size=3).map(lambda cs: ("gpt", "".join(f"<tool_call>{c}</tool_call>" for c in cs))),
    st.lists(_RESPONSES, min_size=1, max_size=3).map(lambda rs: ("tool", "".join(f"<tool_response>{r}</tool_response>" for r in rs))),
), max_size=8)


@given(_TURNS)
@settings(max_examples=150, deadline=None)
def test_stats_features_and_the_trace_list_count_one_walk_alike(turns):
    from streamproc.analyze.facts import MALFORMED, UNPAIRED
    from streamproc.analyze.features import features
    from streamproc.views.listing import summarize

    trace = parse_trace({"id": "t", "conversations": [{"from": "human", "value": "go"}, *({"from": f, "value": v} for f, v in turns)]})
    c = Counts()
    add_trace(c, trace)
    f, s = features(trace), summarize(trace)
    owners = []
    for i in range(len(trace.responses)):
        r = trace.response(i)
        owners.append((trace.call(r.call).name or MALFORMED) if r.call is not None else (r.name or UNPAIRED))
    assert sum(c.responses_by_tool.values()) == c.tool_responses == f["tool_responses"] == len(owners)
    assert c.responses_by_tool == Counter(owners)
    assert set(c.tool_counts) == set(s.tools) and sum(c.tool_counts.values()) == s.calls == f["tool_calls"]
    assert set(c.errors_by_tool) <= set(s.failed_tools)
    assert sum(c.error_classes.values()) == f["failed_responses"]
    assert c.quality["malformed_calls"] == f["malformed_calls"] == sum(not trace.call(i).valid for i in range(len(trace.calls)))
    assert c.quality["calls_without_response"] == f["calls_without_response"]
    assert c.quality["responses_without_call"] == f["responses_without_call"]
    unparsed = sum(outcomes.status(trace.response(i)) == outcomes.UNPARSED for i in range(len(trace.responses)))
    assert s.errors == f["failed_responses"] + f["malformed_calls"] + unparsed
