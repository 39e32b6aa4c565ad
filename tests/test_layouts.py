"""The chat `messages` layout read into the same Row and Trace as ShareGPT, and written back.

Real rows of every variant in ../shared/data/real/chat-layout read with their calls and results
paired; the turns built from the structure are what the parser finds in the ShareGPT text they
are written as; the real hermes traces and generated ones go ShareGPT -> OpenAI -> ShareGPT with
the same text, stats and features; bad input gets a reason naming the field.
"""

from __future__ import annotations

import json
import subprocess
import sys

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamproc.analyze.features import features
from streamproc.analyze.metrics import Counts, add_trace, counts_to_json
from streamproc.io.layouts import arrow_schema, chat_messages, openai_record, tool_definitions, row_from_record, sharegpt_record
from streamproc.io.sources import iter_rows
from streamproc.parse.parser import parse_trace, parse_turn
from streamproc.records import BadRow, Location, RowError

from conftest import REAL, need

CHAT = REAL / "chat-layout"
PROFILE = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LOC = Location("mem.jsonl", 0)

# file: (rows, calls, results, what must be true of every row)
FILES = {
    "toucan_kimi_k2_sample.jsonl": (5, 22, 22),
    "swe_gym_openhands_sampled_trajectories.jsonl": (6, 54, 48),
    "sweagent_traj_function_calling.jsonl": (5, 44, 44),
    "llamafactory_glaive_toolcall_en_demo_subset.jsonl": (25, 51, 51),
    "nemotron_agentic_v1_tool_calling_readme_row.jsonl": (1, 0, 0),
}


def read(d: dict):
    return row_from_record(orjson.loads(orjson.dumps(d)), LOC, "mem")


def turn_facts(turn):
    return (
        turn.role, turn.text, [(s.kind, s.start, s.end, s.body_start, s.body_end, s.closed) for s in turn.segments],
        turn.thoughts, turn.answer, [(c.name, c.arguments, c.raw, c.valid, c.error, c.segment) for c in turn.tool_calls],
        [(r.tool_call_id, r.name, r.content, r.raw, r.error, r.segment) for r in turn.tool_responses],
    )


def trace_facts(trace):
    """Everything the stages read of a trace: turns, pairing, stats and features."""
    c = Counts()
    add_trace(c, trace)
    return (
        [turn_facts(t) for t in trace.turns], trace.calls, trace.responses,
        [trace.call(i).response for i in range(len(trace.calls))], [trace.response(i).call for i in range(len(trace.responses))],
        counts_to_json(c), features(trace),
    )


# ----------------------------------------------------------------------------- real rows of every variant


@pytest.mark.parametrize("name", sorted(FILES))
def test_every_chat_layout_file_reads_with_its_calls_paired(name):
    rows_, n_calls, n_results = FILES[name]
    items = list(iter_rows([need(CHAT / name)]))
    bad = [str(b) for b in items if isinstance(b, BadRow)]
    assert not bad
    traces = [parse_trace(r) for r in items]
    assert len(traces) == rows_
    assert sum(len(t.calls) for t in traces) == n_calls
    assert sum(len(t.responses) for t in traces) == n_results
    for row, t in zip(items, traces):
        assert row.chat is not None and t.chat is row.chat
        assert all(t.call(i).valid and t.call(i).name for i in range(len(t.calls)))
        assert all(t.response(i).call is not None for i in range(len(t.responses)))
        # A result answers a call of its own name.
        assert all(t.call(t.response(i).call).name == t.response(i).name for i in range(len(t.responses)))
        # Only the last call of a trace may go unanswered (SWE-Gym's `finish`, a run cut off).
        unanswered = [i for i in range(len(t.calls)) if t.call(i).response is None]
        assert unanswered in ([], [len(t.calls) - 1])
        assert [f for f, _ in row.conversations][0] in ("system", "human")


def test_each_variant_maps_its_own_fields():
    toucan = next(iter_rows([need(CHAT / "toucan_kimi_k2_sample.jsonl")]))
    assert toucan.id == "4d80c0a2-283a-50cb-a2c9-fc40ea5b1d8a"  # uuid
    assert tool_definitions(toucan.tools)[0]["type"] == "function"  # available_tools, a JSON string
    assert "available_tools" not in toucan.extra and "question" in toucan.extra
    assert features(parse_trace(toucan))["unknown_tool_calls"] == 0  # calls name the declared tools

    swe = next(iter_rows([need(CHAT / "swe_gym_openhands_sampled_trajectories.jsonl")]))
    t = parse_trace(swe)
    ids = [r.tool_call_id for r in (t.response(i) for i in range(len(t.responses)))]
    assert all(i.startswith("call_") for i in ids)
    assert swe.extra["resolved"] is True and len(tool_definitions(swe.tools)) == 3  # a nested list, kept as JSON text

    agent = list(iter_rows([need(CHAT / "sweagent_traj_function_calling.jsonl")]))[1]
    t = parse_trace(agent)
    assert t.response(0).tool_call_id == chat_messages(agent.chat)[2]["tool_calls"][0]["id"]  # from tool_call_ids
    assert not any(th for turn in t.turns for th in turn.thoughts)  # `thought` repeats `content`: read once
    assert "trajectory" in agent.extra

    glaive = list(iter_rows([need(CHAT / "llamafactory_glaive_toolcall_en_demo_subset.jsonl")]))[-1]
    t = parse_trace(glaive)
    assert t.call(0).name == "convert_temperature" and t.call(0).arguments == {"temperature": 25, "unit": "C"}
    assert t.response(0).content == {"converted_temperature": 77, "unit": "F"}
    assert tool_definitions(glaive.tools)[0]["function"]["name"]  # bare schemas wrapped as templates read them

    nemo = next(iter_rows([need(CHAT / "nemotron_agentic_v1_tool_calling_readme_row.jsonl")]))
    t = parse_trace(nemo)
    (assistant,) = [turn for turn in t.turns if turn.role == "assistant"]
    assert assistant.thoughts[0].startswith("Okay, let's see.") and not assistant.tool_calls  # tool_calls: null
    assert assistant.answer.startswith("The prediction of forest area change")


def test_turns_built_from_the_structure_are_what_the_parser_finds_in_their_text():
    for name in FILES:
        for row in iter_rows([need(CHAT / name)]):
            t = parse_trace(row)
            for (frm, text), turn in zip(row.conversations, t.turns, strict=True):
                assert turn_facts(turn) == turn_facts(parse_turn(frm, text)), (name, row.id)


def test_function_call_turns_may_hold_parallel_calls():
    calls = [{"name": "a", "arguments": {"x": 1}}, {"name": "b", "arguments": {}}]
    row = read({"conversations": [{"from": "human", "value": "go"}, {"from": "function_call", "value": json.dumps(calls)},
                                  {"from": "observation", "value": "1"}, {"from": "observation", "value": "2"}, {"from": "gpt", "value": "done"}]})
    t = parse_trace(row)
    assert [(t.call(i).name, t.call(i).arguments, t.response(t.call(i).response).content) for i in range(2)] == [("a", {"x": 1}, "1"), ("b", {}, "2")]


def test_a_json_file_of_message_rows_and_json_string_columns_in_parquet(tmp_path):
    rows = [json.loads(line) for line in need(CHAT / "swe_gym_openhands_sampled_trajectories.jsonl").open()]
    (tmp_path / "sample_raw.json").write_text(json.dumps(rows))  # as the ADP repository keeps them
    got = list(iter_rows([tmp_path / "sample_raw.json"]))
    assert len(got) == 6 and not any(isinstance(r, BadRow) for r in got)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "swe.parquet")  # nested: messages a list of structs, nulls filled in
    nested = [parse_trace(r) for r in iter_rows([tmp_path / "swe.parquet"])]
    assert [meaning(t) for t in nested] == [meaning(parse_trace(r)) for r in got]
    toucan = [json.loads(line) for line in need(CHAT / "toucan_kimi_k2_sample.jsonl").open()]
    pq.write_table(pa.Table.from_pylist(toucan), tmp_path / "toucan.parquet")  # every column a string
    got = list(iter_rows([tmp_path / "toucan.parquet"]))
    assert [r.id for r in got] == [r["uuid"] for r in toucan]
    assert sum(len(parse_trace(r).calls) for r in got) == 22


# ----------------------------------------------------------------------------- round trips


def test_real_traces_convert_to_openai_and_back_with_the_same_text_stats_and_features(real_rows):
    for d in real_rows:
        row = read(d)
        first = parse_trace(row)
        chat = read(openai_record(first))
        assert chat.chat is not None
        assert chat.conversations == row.conversations, row.id
        again = read(sharegpt_record(chat))
        assert again.chat is None
        for t in (parse_trace(chat), parse_trace(again)):
            assert trace_facts(t) == trace_facts(first)


def test_the_cli_writes_openai_parquet_that_stats_read_alike(real_row_files, tmp_path):
    chat = tmp_path / "chat.parquet"
    env_run = [sys.executable, "-m", "streamproc"]
    subprocess.run([*env_run, "export", *map(str, real_row_files), "--layout", "openai", "-o", str(chat), "-q"], check=True)
    table = pq.read_table(chat)
    assert table.schema == arrow_schema("openai") and table.num_rows == 55
    calls = [c for row in table.column("messages").to_pylist() for m in row for c in m.get("tool_calls") or []]
    assert len(calls) == 249 and all(c["id"] and json.loads(c["function"]["arguments"]) is not None for c in calls)
    back = tmp_path / "back.jsonl"
    subprocess.run([*env_run, "export", str(chat), "--layout", "sharegpt", "-o", str(back), "-q"], check=True)
    stats = []
    for inp in (real_row_files, [chat], [back]):
        out = tmp_path / f"s{len(stats)}.json"
        subprocess.run([*env_run, "stats", *map(str, inp), "--json", str(out), "-q"], check=True)
        stats.append(json.loads(out.read_text()))
    assert stats[0] == stats[1] == stats[2]


TOOLS = ["terminal", "read_file", "web_search", "todo"]
PLAIN = st.text(st.characters(blacklist_characters="<", blacklist_categories=("Cs",)), max_size=30)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.floats(allow_nan=False, allow_infinity=False) | PLAIN,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(PLAIN, inner, max_size=3),
    max_leaves=8,
)
results = st.one_of(st.dictionaries(PLAIN, json_values, max_size=3), PLAIN.filter(lambda s: not (s[:1] == "{" and s[-1:] == "}")))


@st.composite
def hermes_rows(draw):
    """A ShareGPT row as the hermes harness writes one (FORMAT.md), any number of rounds."""
    n = 0
    convs = [{"from": "system", "value": draw(PLAIN)}, {"from": "human", "value": draw(PLAIN)}]

    def think():
        r = draw(st.one_of(st.none(), st.just(""), PLAIN))
        return "" if r is None else "<think>\n</think>\n" if r == "" else f"<think>\n{r}\n</think>\n"

    for _ in range(draw(st.integers(0, 3))):
        calls = draw(st.lists(st.tuples(st.sampled_from(TOOLS), st.dictionaries(PLAIN, json_values, max_size=3)), min_size=1, max_size=3))
        text = draw(PLAIN).rstrip()
        body = "\n".join(f"<tool_call>\n{json.dumps({'name': c, 'arguments': a}, ensure_ascii=False)}\n</tool_call>" for c, a in calls)
        convs.append({"from": "gpt", "value": (think() + (text + "\n" if text else "") + body).rstrip()})
        out = []
        for name, _ in calls:
            out.append(f"<tool_response>\n{json.dumps({'tool_call_id': f'functions.{name}:{n}', 'name': name, 'content': draw(results)}, ensure_ascii=False)}\n</tool_response>")
            n += 1
        convs.append({"from": "tool", "value": "\n".join(out)})
        if draw(st.booleans()):
            convs.append({"from": "human", "value": draw(PLAIN)})
    convs.append({"from": "gpt", "value": (think() + draw(PLAIN)).strip()})
    tools = json.dumps([{"type": "function", "function": {"name": t, "parameters": {"type": "object", "properties": {}}}} for t in TOOLS])
    return {"id": draw(st.uuids()).hex, "conversations": convs, "tools": tools, "category": "c", "subcategory": "s", "task": "t"}


@PROFILE
@given(hermes_rows())
def test_sharegpt_to_openai_to_sharegpt_is_the_same_trace(d):
    row = read(d)
    first = parse_trace(row)
    rec = openai_record(first)
    assert all(isinstance(c["function"]["arguments"], str) for m in rec["messages"] for c in m.get("tool_calls") or [])
    chat = read(rec)
    assert chat.conversations == row.conversations
    back = read(sharegpt_record(chat))
    assert back.conversations == row.conversations
    assert trace_facts(parse_trace(chat)) == trace_facts(first) == trace_facts(parse_trace(back))


@st.composite
def openai_rows(draw):
    """A chat-layout row: arguments as objects or strings, ids or none, reasoning fields, <think> in content."""
    with_ids = draw(st.booleans())
    msgs = [{"role": "user", "content": draw(PLAIN)}]
    n = 0
    for _ in range(draw(st.integers(0, 3))):
        calls = []
        for name in draw(st.lists(st.sampled_from(TOOLS), min_size=1, max_size=3)):
            args = draw(st.dictionaries(PLAIN, json_values, max_size=3))
            fn = {"name": name, "arguments": json.dumps(args) if draw(st.booleans()) else args}
            calls.append({"id": f"call_{n}", "type": "function", "function": fn} if with_ids else {"type": "function", "function": fn})
            n += 1
        tagged = st.sampled_from(["<think>\nmore\n</think>\n", "<think>\nopen ", "</think> stray", "<tool_call>\n{\"name\": \"todo\", \"arguments\": {}}\n</tool_call>",
                                  "<tool_call>\n{bad}\n</tool_call>", "<tool_call>\n{\"name\": \"x\"", "a < b"])
        text = draw(st.one_of(st.none(), PLAIN, st.lists(st.one_of(PLAIN, tagged), max_size=4).map("".join)))  # tags of its own too
        m = {"role": "assistant", "content": text, "tool_calls": calls}
        m[draw(st.sampled_from(["reasoning_content", "reasoning", "thinking", "none"]))] = draw(PLAIN)
        msgs.append(m)
        order = draw(st.permutations(range(len(calls)))) if with_ids else range(len(calls))
        for k in order:
            msgs.append({"role": "tool", "content": draw(PLAIN), **({"tool_call_id": calls[k]["id"]} if with_ids else {"name": calls[k]["function"]["name"]})})
    msgs.append({"role": "assistant", "content": f"<think>\n{draw(PLAIN)}\n</think>\n{draw(PLAIN)}"})
    return {"messages": msgs if draw(st.booleans()) else json.dumps(msgs), "tools": []}


@PROFILE
@given(openai_rows())
def test_any_chat_row_builds_the_turns_the_parser_finds_and_writes_back_alike(d):
    row = read(d)
    t = parse_trace(row)
    for (frm, text), turn in zip(row.conversations, t.turns, strict=True):
        assert turn_facts(turn) == turn_facts(parse_turn(frm, text))
    assert sum(t.call(i).response is not None for i in range(len(t.calls))) == len(t.responses)  # each result answers one call
    for i in range(len(t.responses)):  # paired by id (any order) or by name and order
        r = t.response(i)
        assert r.name == t.call(r.call).name
        ti, k = t.calls[r.call]
        made = chat_messages(row.chat)[row.chat.turn_of.index(ti)].get("tool_calls", [])
        k -= len(t.turns[ti].tool_calls) - len(made)  # calls written as text in the content come first, with no id
        assert r.tool_call_id is None or k >= 0 and r.tool_call_id == made[k]["id"]
    # Written back (arguments re-encoded, ids numbered where there were none), it reads the same.
    assert meaning(parse_trace(read(openai_record(t)))) == meaning(t)


def meaning(trace):
    """A trace less the JSON spelling of its calls and results."""
    turns = [(t.role, t.thoughts, t.answer, [(c.name, c.arguments) for c in t.tool_calls], [(r.name, r.content) for r in t.tool_responses]) for t in trace.turns]
    return turns, trace.calls, trace.responses, [trace.call(i).response for i in range(len(trace.calls))]


# ----------------------------------------------------------------------------- bad input

CALL = {"id": "c1", "type": "function", "function": {"name": "terminal", "arguments": "{}"}}
BAD = [
    ({"messages": [{"role": "user", "content": "x"}, {"role": "tool", "content": "r"}]},
     "messages[1]", "a tool result with no call before it to answer"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "tool", "tool_call_id": "nope", "content": "r"}]},
     "messages[1].tool_call_id", "'nope' names no call made before it"),
    ({"messages": [{"role": "assistant", "content": "", "tool_calls": [CALL]}, {"role": "tool", "tool_call_id": "c9", "content": "r"}]},
     "messages[1].tool_call_id", "'c9' names no call made before it"),
    ({"messages": [{"role": "assistant", "content": "", "tool_calls": [CALL]}, {"role": "tool", "tool_call_id": "c1", "content": "r"},
                   {"role": "tool", "tool_call_id": "c1", "content": "r"}]},
     "messages[2].tool_call_id", "'c1' answers a call that was answered already"),
    ({"messages": [{"role": "assistant", "content": "", "tool_calls": [CALL]}, {"role": "user", "content": "and?"}]},
     "messages[0].tool_calls[0]", "call 'c1' is never answered: message 1 (user) comes before its result"),
    ({"messages": [{"role": "assistant", "content": "", "tool_calls": [{**CALL, "function": {"name": "t", "arguments": "{'a': 1}"}}]}]},
     "messages[0].tool_calls[0].arguments", "is not JSON"),
    ({"messages": [{"role": "assistant", "content": "", "tool_calls": [{**CALL, "function": {"name": "t", "arguments": "[1]"}}]}]},
     "messages[0].tool_calls[0].arguments", "is a JSON list, not an object"),
    ({"messages": [{"role": "assistant", "content": "", "tool_calls": {"function": {"name": "t"}}}]},
     "messages[0].tool_calls", "is a dict, not a list"),
    ({"messages": [{"role": "assistant", "content": "", "tool_calls": [{"function": {"arguments": "{}"}}]}]},
     "messages[0].tool_calls[0].name", "missing"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role", "'robot' is not one of system, developer, user, assistant, tool, function"),
    ({"messages": "[{\"role\": \"user\", "}, "messages", "is a string that is not JSON"),
    ({"messages": {"role": "user"}}, "messages", "is a dict, not a list of messages"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content", "is a int, not a string"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0].content[0]", "is not a text part"),
    ({"conversations": [{"from": "function_call", "value": "{oops"}]}, "conversations[0].value", "a function_call that is not JSON"),
    ({"conversations": [{"from": "function_call", "value": "{}"}, {"from": "bot", "value": ""}]},
     "conversations[1].from", "'bot' is not one of system, human, gpt, function_call, observation"),
    ({"uuid": "u", "prompt": "p", "answer": "a"}, "conversations",
     "missing: a row of unknown layout, with columns uuid, prompt, answer (expected `conversations` of from/value, or chat `messages` of role/content)"),
]


@pytest.mark.parametrize("d, field, words", BAD, ids=[w[:40] for _, _, w in BAD])
def test_bad_chat_rows_name_the_field_and_the_reason(d, field, words):
    with pytest.raises(RowError) as e:
        read(d)
    assert e.value.bad.field == field
    assert words in e.value.bad.message
    assert e.value.bad.raw == d


def test_a_file_of_both_layouts_and_bad_rows_counts_every_row(tmp_path, real_rows):
    chat = openai_record(parse_trace(read(real_rows[0])))
    lines = [real_rows[1], chat, BAD[0][0], {"foo": 1}]
    p = tmp_path / "mixed.jsonl"
    p.write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in lines))
    items = list(iter_rows([p]))
    assert [type(i).__name__ for i in items] == ["Row", "Row", "BadRow", "BadRow"]
    assert [i.loc.row for i in items] == [0, 1, 2, 3]


# ----------------------------------------------------------------------------- commands


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streamproc", *args], capture_output=True, text=True)


def test_synth_writes_the_same_traces_in_the_openai_layout(tmp_path):
    files = {"sharegpt": tmp_path / "s.jsonl", "openai": tmp_path / "o.parquet"}
    for layout, path in files.items():
        p = cli("synth", "--rows", "40", "--seed", "3", "--layout", layout, "-o", str(path), "-q")
        assert p.returncode == 0, p.stderr
    assert pq.read_schema(files["openai"]) == arrow_schema("openai")
    sharegpt = [parse_trace(r) for r in iter_rows([files["sharegpt"]])]
    openai = [parse_trace(r) for r in iter_rows([files["openai"]])]
    assert all(t.chat is not None for t in openai)
    assert [trace_facts(t) for t in openai] == [trace_facts(t) for t in sharegpt]


def test_show_and_export_on_chat_layout_rows(tmp_path):
    toucan = need(CHAT / "toucan_kimi_k2_sample.jsonl")
    p = cli("show", str(toucan), "--id", "4d80c0a2", "--color", "never", "--no-pager")
    assert p.returncode == 0, p.stderr
    assert "pubchem-data-access-server-search_compound" in p.stdout and "aspirin" in p.stdout
    pairs = tmp_path / "pairs.jsonl"
    p = cli("export", str(toucan), "--layout", "openai", "--format", "pairs", "-o", str(pairs), "-q")
    assert p.returncode == 0, p.stderr
    recs = [json.loads(line) for line in pairs.open()]
    assert len(recs) == sum(1 for r in iter_rows([toucan]) for m in chat_messages(r.chat) if m["role"] == "assistant")
    assert all(r["completion"][0]["role"] == "assistant" and r["tools"] for r in recs)
    assert any(r["completion"][0].get("tool_calls") for r in recs)
    p = cli("export", str(toucan), "--layout", "sharegpt", "--format", "pairs", "-o", str(tmp_path / "x.jsonl"))
    assert p.returncode == 2 and "use --format messages" in p.stderr


_ANY = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.sampled_from(["", "{}", "[1]", "{\"a\": 1}", "<think>", "call_1", "x"]) | PLAIN,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["role", "content", "tool_calls", "function", "name", "arguments", "id", "tool_call_id", "tool_call_ids",
                         "function_call", "reasoning_content", "type", "text"]), inner, max_size=5),
    max_leaves=20,
)
_ROLES = st.sampled_from(["system", "user", "assistant", "tool", "function", "developer", "robot", None])
_MESSAGES = st.one_of(_ANY, st.fixed_dictionaries(
    {"role": _ROLES}, optional={"content": _ANY, "tool_calls": _ANY, "tool_call_id": _ANY, "name": _ANY, "function_call": _ANY}))


@PROFILE
@given(st.lists(_MESSAGES, max_size=8), st.booleans())
def test_any_messages_read_as_a_row_or_a_reason(messages, as_text):
    """Whatever the messages hold, reading gives a Row whose trace is what the parser finds in its
    text, whose normalized calls are its structured ones, and which writes back alike; or a
    RowError naming a field: never another exception."""
    d = {"messages": json.dumps(messages) if as_text else messages}
    try:
        row = read(d)
    except RowError as e:
        assert e.bad.field.startswith("messages") and e.bad.message
        return
    t = parse_trace(row)
    for (frm, text), turn in zip(row.conversations, t.turns, strict=True):
        assert turn_facts(turn) == turn_facts(parse_turn(frm, text))
    for m, ti in zip(chat_messages(row.chat), row.chat.turn_of, strict=True):  # structured calls come last in a turn
        made = m.get("tool_calls", [])
        tail = t.turns[ti].tool_calls[len(t.turns[ti].tool_calls) - len(made) :]
        assert [(c["function"]["name"], c["function"]["arguments"]) for c in made] == [(c.name, c.arguments) for c in tail]
    assert meaning(parse_trace(read(openai_record(t)))) == meaning(t)
