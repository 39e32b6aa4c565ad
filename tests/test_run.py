"""The main job end to end on real inputs: every stage's artifact exists and agrees with the others."""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow as pa

from streamproc.prepare.shards import read_shards


def test_run_writes_parse_report_and_shards(tmp_path, real_row_files):
    out = tmp_path / "out"
    p = subprocess.run(
        [sys.executable, "-m", "streamproc", "run", *map(str, real_row_files), "-o", str(out), "--workers", "2", "--seq-len", "4096"],
        capture_output=True, text=True, timeout=600,
    )
    assert p.returncode == 0, p.stderr
    n_rows = sum(1 for f in real_row_files for line in f.open() if line.strip())
    assert f"{n_rows} rows read, {n_rows} parsed, 0 rejected" in p.stderr

    parsed = [json.loads(line) for line in (out / "parsed.jsonl").open()]
    assert len(parsed) == n_rows
    calls = sum(len(t["tool_calls"]) for r in parsed for t in r["turns"] if t["role"] == "assistant")

    stats = json.loads((out / "report" / "stats.json").read_text())
    assert stats["traces"] == n_rows and stats["tool_calls"] == calls
    assert (out / "report" / "index.html").stat().st_size > 10_000
    assert (out / "report" / "top_tools.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    manifest = json.loads((out / "packed" / "manifest.json").read_text())
    c = manifest["counts"]["train"]
    assert c["tokens_cut"] > 0.05 * (c["tokens"] + c["tokens_cut"])  # 4096 is short for their system prompts
    assert "of the train text was cut; a larger --seq-len keeps more of it" in p.stderr
    table: pa.Table = read_shards(out / "packed")
    ids = set(table.column("trace_ids").combine_chunks().flatten().to_pylist())
    assert ids <= {r["id"] for r in parsed} and len(ids) > 0
    assert table.num_rows == sum(s["rows"] for s in manifest["shards"] if s["split"] == "train")
    # the report, written after the pack, shows what it wrote
    page = (out / "report" / "index.html").read_text(encoding="utf-8")
    assert "Training data" in page and f"{c['trainable']:,} ({100 * c['trainable'] / c['tokens']:.1f}%)" in page
    assert (out / "report" / "sequence_lengths.png").exists()
