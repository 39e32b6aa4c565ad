"""`streamproc stats` end to end: real files and a synthetic Parquet file in, JSON, plots, summary
and the viewer page out."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from streamproc.io import synth
from streamproc.cli import main
from streamproc.analyze.metrics import Counts, counts_to_json

STATS_DOC = Path(__file__).resolve().parents[1] / "docs" / "stats.md"
REQUIRED = ["traces", "turns", "tool_calls", "tool_counts", "parallel_widths", "traces_with_errors", "categories"]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("synth") / "both.parquet"
    synth.write(path, 240, seed=7)
    return path


def test_json_report_and_summary(tmp_path, synthetic, capsys):
    out, rep = tmp_path / "stats.json", tmp_path / "report"
    assert main(["stats", str(synthetic), "--workers", "1", "--json", str(out), "--report", str(rep)]) == 0
    printed = capsys.readouterr()
    assert "Top 10 tools" in printed.out and "240 rows read, 240 parsed, 0 rejected" in printed.err

    doc = json.loads(out.read_text())
    assert list(doc)[: len(REQUIRED)] == REQUIRED
    assert doc["traces"] == 240 and doc["rows"] == {"read": 240, "parsed": 240, "rejected": 0}
    assert sum(doc["tool_counts"].values()) == doc["tool_calls"] > 0
    assert sum(doc["categories"].values()) == doc["traces"]
    assert set(doc["by_source"]) == {"kimi", "glm-5.1"}  # synth's source column
    for key in ("traces", "turns", "tool_calls", "traces_with_errors"):
        assert sum(s[key] for s in doc["by_source"].values()) == doc[key]
    assert json.loads((rep / "stats.json").read_text()) == doc

    pngs = sorted(rep.glob("*.png"))
    assert {p.stem for p in pngs} >= {"overview", "top_tools", "parallel_widths", "conversation_length", "categories",
                                      "tools_by_category", "tools_by_position", "reasoning_length", "error_rate"}
    for p in pngs:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000
    md = (rep / "summary.md").read_text()
    assert all(f"]({p.name})" in md for p in pngs) and "| terminal |" in md
    page = (rep / "index.html").read_text()
    assert "Top 10 tools" in page and "data:image/png;base64," in page


def test_workers_do_not_change_the_result(tmp_path, real_row_files):
    """Two real files are two shards: with 2 workers they run in separate processes."""
    docs = []
    for workers in ("1", "2"):
        out = tmp_path / f"w{workers}.json"
        assert main(["stats", *map(str, real_row_files), "--workers", workers, "--json", str(out)]) == 0
        docs.append(out.read_bytes())
    assert docs[0] == docs[1]
    assert len(json.loads(docs[0])["by_source"]) == len(real_row_files)


def test_bad_rows_are_reported_not_fatal(tmp_path, real_row_files, capsys):
    lines = real_row_files[0].read_text(encoding="utf-8").splitlines()[:2]
    src = tmp_path / "bad.jsonl"
    src.write_text(lines[0] + '\n{"conversations": "oops"}\n' + lines[1] + "\n", encoding="utf-8")
    out = tmp_path / "s.json"
    assert main(["stats", str(src), "--json", str(out)]) == 0
    assert "3 rows read, 2 parsed, 1 rejected" in capsys.readouterr().err
    (rejected,) = [json.loads(x) for x in Path(f"{out}.rejects.jsonl").read_text().splitlines()]
    assert rejected["row"] == 1 and rejected["field"] == "conversations"
    assert main(["stats", str(src), "--on-error", "fail"]) == 2


def test_every_json_key_is_documented():
    section = STATS_DOC.read_text(encoding="utf-8").split("\n## ", 1)[0]
    documented = set(re.findall(r"`([a-z_]+)`", section))
    keys = set(counts_to_json(Counts())) | {"tokenizer", "by_source", "rows"}
    assert keys - documented == set()


def test_tools_by_position_shows_each_turn_numbers_share_of_calls():
    from collections import Counter

    from streamproc.views import report
    from streamproc.analyze.metrics import POSITION_CAP

    c = Counts()
    c.calls_by_position = Counter({("terminal", 1): 3, ("read_file", 1): 1, ("terminal", 2): 2, ("terminal", POSITION_CAP): 5})
    c.tool_counts = Counter({"terminal": 10, "read_file": 1})
    fig = report.tools_by_position(c, top=1)  # read_file is not drawn but still counts at turn 1
    ax = fig.axes[0]
    grid = ax.images[0].get_array()
    assert grid.shape == (1, POSITION_CAP)
    assert grid[0, 0] == 0.75 and grid[0, 1] == 1.0 and grid[0, 2] == 0 and grid[0, -1] == 1.0
    assert [t.get_text() for t in ax.get_xticklabels()][-1] == f"{POSITION_CAP}+"
