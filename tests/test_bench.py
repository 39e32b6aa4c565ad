"""`streamproc bench`: the framework and the parse section run end to end on a small file.
Speed itself is never asserted here (benches/ and `streamproc bench` measure it)."""

from __future__ import annotations

import json

import pytest

from streamproc import benchmarks
from streamproc._compiled import parser_build
from streamproc.benchmarks import Result, format_table
from streamproc.benchmarks.parse import OPENAI_ROWS, SHAREGPT_ROWS
from streamproc.benchmarks.guide import parse_assistant_message, parse_tool_message, tool_use_metrics
from streamproc.cli import main

ROW = {
    "id": "r",
    "category": "Agent Tools",
    "conversations": [
        {"from": "human", "value": "list files"},
        {"from": "gpt", "value": '<think>\n plan\n</think>\n<tool_call>\n{"name": "terminal", "arguments": {"command": "ls"}}\n</tool_call>'},
        {"from": "tool", "value": '<tool_response>\n{"tool_call_id": "functions.terminal:0", "name": "terminal", "content": {"output": "a", "exit_code": 0, "error": null}}\n</tool_response>'},
        {"from": "gpt", "value": "<think>\n</think>\nOne file: a."},
    ],
}


def test_bench_cli_prints_and_writes_json(tmp_path, capsys):
    src = tmp_path / "rows.jsonl"
    src.write_text(json.dumps(ROW) + "\n" + "{broken\n" + json.dumps({**ROW, "id": "s"}) + "\n")
    out = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--section", "parse", str(src), "--json", str(out)]) == 0
    printed = capsys.readouterr()
    assert "streamproc parse_turn" in printed.out and "1 bad rows skipped" in printed.err
    results = json.loads(out.read_text())
    ours = f"streamproc parse_turn ({parser_build()})"
    results, layouts = results[:4], results[4:]
    assert [r["name"] for r in results] == ["a regex parser + json.loads", "str.find scan of the tags", ours, ours]
    assert all(r["value"] > 0 and r["unit"] == "MB/s" and "6 turns" in r["data"] for r in results)
    assert [r["baseline"] for r in results[2:]] == ["a regex parser + json.loads", "str.find scan of the tags"]
    assert all(r["ratio"] > 0 for r in results[2:])
    # The same two rows read in both layouts, rows/s, the OpenAI one against the ShareGPT one.
    assert [r["name"] for r in layouts] == [SHAREGPT_ROWS, OPENAI_ROWS]
    assert all(r["value"] > 0 and r["unit"] == "rows/s" and "2 rows" in r["data"] for r in layouts)
    assert layouts[1]["baseline"] == SHAREGPT_ROWS and layouts[1]["ratio"] > 0


def test_unknown_section_is_refused():
    with pytest.raises(ValueError, match="unknown section nope"):
        benchmarks.run(["nope"], benchmarks.Context())
    with pytest.raises(SystemExit):
        main(["bench", "--section", "nope"])


def test_table_lines_up():
    table = format_table([Result("s", "a", 1.0, "MB/s"), Result("s", "long name", 2.0, "MB/s", "d", "a", 2.0, ">= 5")])
    header, rule, *lines = table.splitlines()
    assert header.split() == ["section", "measured", "value", "vs", "ratio", "target", "data"]
    assert lines[1].index("2.00x") == header.index("ratio")


def test_guide_baselines_behave_as_in_the_guide():
    parsed = parse_assistant_message(ROW["conversations"][1]["value"])
    assert parsed == {"thoughts": ["plan"], "tool_calls": [{"name": "terminal", "arguments": {"command": "ls"}}], "final_answer": ""}
    assert parse_tool_message(ROW["conversations"][2]["value"])["content"]["exit_code"] == 0
    m = tool_use_metrics([ROW])
    assert m["tool_counter"] == {"terminal": 1} and m["calls_per_trace"] == [1]
    # The guide's error heuristic flags every terminal result, as FORMAT.md warns ("error": null).
    assert m["errors_per_trace"] == [1]


def test_pack_job_copies_change_every_message_but_the_system_prompt(real_rows, tmp_path):
    """The pack-job input: each altered copy differs from its original in every non-system
    message, keeps the system prompt, and still parses with the same tool calls."""
    import json

    from streamproc.benchmarks.pack_job import write_input
    from streamproc.prepare.chat import unwrap_tool
    from streamproc.parse.parser import parse_trace
    from streamproc.records import row_from_dict

    rows = [row_from_dict(d) for d in real_rows[:6]]
    size = sum(len(v) for r in rows for _, v in r.conversations)
    n, _ = write_input(rows, tmp_path / "in.jsonl", 3 * size)
    out = [json.loads(line) for line in (tmp_path / "in.jsonl").open(encoding="utf-8")]
    assert n == len(out) == 3 * len(rows)
    for k, d in enumerate(out[len(rows):]):
        orig = rows[k % len(rows)]
        assert d["id"] != orig.id
        for turn, (frm, value) in zip(d["conversations"], orig.conversations):
            assert (turn["value"] == value) == (frm == "system")
            if frm == "tool":
                assert len(unwrap_tool(turn["value"])) == len(unwrap_tool(value))
        calls = lambda t: [t.call(i).name for i in range(len(t.calls))]  # noqa: E731
        assert calls(parse_trace(d)) == calls(parse_trace({"id": orig.id, "conversations": [{"from": f, "value": v} for f, v in orig.conversations]}))


def test_scale_measures_the_peak_of_the_command_and_of_its_largest_child():
    """`measure` reads VmHWM of the command and its descendants: a child that holds 300 MB for a
    second shows as the largest worker, the parent stays small."""
    import sys

    from streamproc.benchmarks.scale import measure

    child = "import time; b = bytearray(300 << 20); b[::4096] = b'x' * len(b[::4096]); time.sleep(1.5)"
    parent = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {child!r}], check=True)"
    m = measure([sys.executable, "-c", parent], {})
    assert m["worker_mb"] >= 300 and m["parent_mb"] < 100 and m["cpu"] > 0
