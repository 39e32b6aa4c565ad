"""Bad input: every case gets an error naming file, row and field; `--on-error skip` counts and
sets bad rows aside, `--on-error fail` stops at the first; nothing is silently lost."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import orjson
import pyarrow.parquet as pq
import pytest

from streamproc.io import synth
from streamproc.records import BadRow, Row, RowError
from streamproc.io.sources import good_rows, iter_rows, plan

GOOD = list(synth.rows(3, seed=21))


def _line(obj) -> bytes:
    return orjson.dumps(obj) + b"\n"


# (line, field, words in the message) for each bad line; None marks a good row.
CASES = [
    (_line(GOOD[0]), None, None),
    (_line({"id": "no-conv", "tools": "[]"}), "conversations", "missing"),
    (_line(GOOD[1]), None, None),
    (_line({"id": "role", "conversations": [{"from": "human", "value": "hi"}, {"from": "assistant", "value": "x"}]}),
     "conversations[1].from", "'assistant' is not one of system, human, gpt, tool"),
    (_line({"id": "nonstr", "conversations": [{"from": "human", "value": 42}]}), "conversations[0].value", "is a int, not a string"),
    (_line({"id": "cat", "conversations": [{"from": "human", "value": "hi"}], "category": 5}), "category", "is a int, not a string"),
    (b'{"id": "broken", "conversations": [{"from": "human", "val\n', "<line>", "broken JSON line"),
    (b'{"id": "utf8", "conversations": [{"from": "human", "value": "caf\xe9 \xff"}]}\n', "<line>", "invalid UTF-8"),
    (_line(GOOD[2]), None, None),
]
BAD = [(i, field, words) for i, (_, field, words) in enumerate(CASES) if field]


@pytest.fixture()
def bad_jsonl(tmp_path) -> Path:
    p = tmp_path / "bad.jsonl"
    p.write_bytes(b"".join(line for line, _, _ in CASES))
    return p


def test_api_names_file_row_and_field(bad_jsonl):
    items = list(iter_rows([bad_jsonl]))
    assert len(items) == len(CASES)
    bad = [b for b in items if isinstance(b, BadRow)]
    assert [(b.loc.file, b.loc.row, b.field) for b in bad] == [(str(bad_jsonl), i, f) for i, f, _ in BAD]
    for b, (i, field, words) in zip(bad, BAD):
        assert words in b.message
        assert str(b).startswith(f"{bad_jsonl}:row {i}: field {field!r}: ")
    assert bad[0].raw == {"id": "no-conv", "tools": "[]"}  # the row as read, for the reject file
    assert [r.id for r in items if isinstance(r, Row)] == [g["id"] for g in GOOD]


def test_api_error_policy(bad_jsonl):
    (shard,) = plan([bad_jsonl])
    rejects: list[BadRow] = []
    assert [r.id for r in good_rows(shard, "skip", rejects)] == [g["id"] for g in GOOD]
    assert [b.loc.row for b in rejects] == [i for i, _, _ in BAD]
    stream = good_rows(shard, "fail", [])
    assert next(stream).id == GOOD[0]["id"]
    with pytest.raises(RowError, match=r"bad.jsonl:row 1: field 'conversations': missing") as e:
        next(stream)
    assert e.value.bad.field == "conversations"


def parse_cli(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streamproc", "parse", *map(str, args)], capture_output=True, text=True, cwd=cwd)


def test_cli_skip_counts_and_sets_aside(bad_jsonl, tmp_path):
    out = tmp_path / "out.jsonl"
    p = parse_cli(bad_jsonl, "-o", out, "--on-error", "skip", "--workers", "1")
    assert p.returncode == 0, p.stderr
    assert f"{len(CASES)} rows read, {len(GOOD)} parsed, {len(BAD)} rejected" in p.stderr
    assert f"first: {bad_jsonl}:row 1: field 'conversations': missing" in p.stderr
    assert [json.loads(x)["id"] for x in out.read_text().splitlines()] == [g["id"] for g in GOOD]
    rejects = [json.loads(x) for x in Path(f"{out}.rejects.jsonl").read_text().splitlines()]
    assert [(r["file"], r["row"], r["field"]) for r in rejects] == [(str(bad_jsonl), i, f) for i, f, _ in BAD]
    assert all(words in r["error"] for r, (_, _, words) in zip(rejects, BAD))
    assert rejects[0]["raw"] == {"id": "no-conv", "tools": "[]"}
    assert rejects[-1]["raw"].startswith('{"id": "utf8"')  # undecodable lines are kept as text
    custom = tmp_path / "elsewhere" / "rejected.jsonl"
    assert parse_cli(bad_jsonl, "-o", out, "--rejects", custom).returncode == 0
    assert len(custom.read_text().splitlines()) == len(BAD)


def test_cli_fail_stops_at_the_first_bad_row(bad_jsonl, tmp_path):
    out = tmp_path / "out.jsonl"
    for workers in ("1", "2"):
        p = parse_cli(bad_jsonl, bad_jsonl, "-o", out, "--on-error", "fail", "--workers", workers)
        assert p.returncode == 2
        assert f"error: {bad_jsonl}:row 1: field 'conversations': missing" in p.stderr
        assert "Traceback" not in p.stderr and not out.exists()  # no partial output


@pytest.fixture()
def parquet_file(tmp_path) -> Path:
    p = tmp_path / "rows.parquet"
    synth.write(p, 6, seed=22, row_group=2)
    return p


def test_truncated_parquet(parquet_file, tmp_path):
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(parquet_file.read_bytes()[:-100])
    (bad,) = list(iter_rows([cut]))
    assert bad.loc.file == str(cut) and bad.field == "<file>" and "not a readable Parquet file" in bad.message
    p = parse_cli(cut, parquet_file, "-o", tmp_path / "out.jsonl")
    assert p.returncode == 0 and "7 rows read, 6 parsed, 1 rejected" in p.stderr and str(cut) in p.stderr
    f = parse_cli(cut, "-o", tmp_path / "out.jsonl", "--on-error", "fail")
    assert f.returncode == 2 and f"{cut}" in f.stderr and "not a readable Parquet file" in f.stderr


def test_corrupt_parquet_row_group_costs_only_its_rows(parquet_file, tmp_path):
    data = bytearray(parquet_file.read_bytes())
    col = pq.ParquetFile(parquet_file).metadata.row_group(1).column(2)  # conversations.value of rows 2-3
    assert col.path_in_schema.endswith("value")
    start = col.data_page_offset + 100
    data[start : start + 300] = bytes(300)
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(bytes(data))
    items = list(iter_rows([broken]))
    assert [type(x).__name__ for x in items] == ["Row", "Row", "BadRow", "BadRow", "Row", "Row"]
    for row, bad in zip((2, 3), items[2:4]):
        assert (bad.loc.row, bad.field) == (row, "<row group>") and "row group 1" in bad.message and "2 rows lost" in bad.message
    p = parse_cli(broken, "-o", tmp_path / "out.jsonl")
    assert p.returncode == 0 and "6 rows read, 4 parsed, 2 rejected" in p.stderr and f"{broken}:row 2" in p.stderr


@pytest.mark.parametrize("name", ["cut.jsonl.gz", "cut.jsonl.zst", "cut.json.gz"])
def test_truncated_compressed_stream(tmp_path, name):
    good = tmp_path / name.replace("cut", "good")
    rows = list(synth.rows(6, seed=23))
    text = b"".join(_line(r) for r in rows) if ".jsonl" in name else orjson.dumps(rows)
    if name.endswith(".gz"):
        good.write_bytes(gzip.compress(text))
    else:
        import zstandard

        good.write_bytes(zstandard.ZstdCompressor().compress(text))
    cut = tmp_path / name
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    items = list(iter_rows([cut]))
    bad = [x for x in items if isinstance(x, BadRow)]
    assert len(bad) == 1 and bad[0].loc.file == str(cut) and bad[0].field in ("<file>", "<line>")
    assert [r.id for r in items if isinstance(r, Row)] == [r["id"] for r in rows[: len(items) - 1]]


def test_unknown_file_type_is_a_clear_reject(tmp_path):
    p = tmp_path / "rows.csv"
    p.write_text("id,conversations\n")
    (bad,) = list(iter_rows([p]))
    assert bad.loc.file == str(p) and "unknown file type" in bad.message
