"""streamproc export on real traces: JSONL and Parquet, messages and pairs, bad rows set aside."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from streamproc.cli import main
from streamproc.prepare.export import export
from streamproc.io.sources import plan


def read(path):
    if str(path).endswith(".parquet"):
        return pq.read_table(path).to_pylist()
    return [json.loads(line) for line in open(path, encoding="utf-8")]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_messages_round_trip(tmp_path, real_rows, real_row_files, suffix):
    out = tmp_path / f"m{suffix}"
    tally = export(plan(real_row_files), out, workers=2)
    assert tally.parsed == len(real_rows) and not tally.rejected
    recs = read(out)
    assert [r["id"] for r in recs] == [d["id"] for d in real_rows]
    role = {"system": "system", "human": "user", "gpt": "assistant", "tool": "tool"}
    for r, d in zip(recs, real_rows):
        assert r["messages"] == [{"role": role[t["from"]], "content": t["value"]} for t in d["conversations"]]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_pairs_one_per_assistant_turn(tmp_path, real_rows, real_row_files, suffix):
    out = tmp_path / f"p{suffix}"
    export(plan(real_row_files), out, fmt="pairs", tool_role="unwrap")
    recs = read(out)
    assert len(recs) == sum(t["from"] == "gpt" for d in real_rows for t in d["conversations"])
    by_id = {d["id"]: d for d in real_rows}
    for r in recs:
        turns = by_id[r["id"]]["conversations"]
        assert r["completion"] == [{"role": "assistant", "content": turns[r["turn"]]["value"]}]
        prompt = r["prompt"]
        assert prompt[0] == {"role": "system", "content": turns[0]["value"]}
        # unwrap: one tool message per response, without the tags the template adds back
        assert all(m["role"] != "tool" or not m["content"].startswith("<tool_response>") for m in prompt)
        assert sum(m["role"] != "tool" for m in prompt) == sum(t["from"] != "tool" for t in turns[: r["turn"]])


def test_cli_tool_role_user_and_rejects(tmp_path, real_row_files, capsys):
    src = tmp_path / "in.jsonl"
    good = next(line for f in real_row_files for line in f.read_text(encoding="utf-8").splitlines() if '"from": "tool"' in line)
    src.write_text(good + '\n{"id": "bad", "conversations": [{"from": "robot", "value": "x"}]}\nnot json\n', encoding="utf-8")
    out = tmp_path / "o.jsonl"
    assert main(["export", str(src), "-o", str(out), "--tool-role", "user", "--tool-prefix", "TOOL:\n", "--workers", "1"]) == 0
    (rec,) = read(out)
    tools = [m for m in rec["messages"] if m["content"].startswith("TOOL:\n<tool_response>")]
    assert tools and all(m["role"] == "user" for m in tools)
    assert "2 rejected" in capsys.readouterr().err
    rejects = read(f"{out}.rejects.jsonl")
    assert [r["row"] for r in rejects] == [1, 2] and rejects[0]["field"] == "conversations[0].from"
