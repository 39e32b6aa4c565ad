"""One writer of rows (io/writer.py): every command that writes rows or records (parse, export,
filter, features) takes the same output names, writes the format the name says, refuses any
other name in one line before reading a row, and `filter` writes rows as it read them."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from streamproc.cli import main
from streamproc.io.sources import SAMPLE

NAMES = ("out.jsonl", "out.ndjson", "out.jsonl.gz", "out.jsonl.zst", "out.parquet")
COMMANDS = {
    "parse": [],
    "export": [],
    "filter": ["--where", "tool_calls > 2"],
    "features": [],
}


def records(path: Path) -> list[dict]:
    """The records of a file by what its bytes are (not by its name): Parquet, gzip, zstd or plain."""
    data = path.read_bytes()
    if data[:4] == b"PAR1":
        return pq.read_table(path).to_pylist()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    elif data[:4] == b"\x28\xb5\x2f\xfd":
        data = zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return [json.loads(line) for line in data.splitlines() if line]


def kind(path: Path) -> str:
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        return "gzip"
    return {b"PAR1": "parquet", b"\x28\xb5\x2f\xfd": "zstd"}.get(data[:4], "plain")


@pytest.fixture(scope="module")
def no_source(tmp_path_factory) -> Path:
    """Sample rows without a `source` column, as the Hub dataset has none, one with an extra column."""
    rows = pq.read_table(SAMPLE).slice(0, 30).drop_columns(["source"]).to_pylist()
    rows[0]["quality"] = 0.5
    path = tmp_path_factory.mktemp("in") / "traces.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE) for r in rows))
    return path


@pytest.mark.parametrize("command", COMMANDS)
def test_every_name_writes_its_format_and_the_same_records(tmp_path, no_source, command):
    got = {}
    for name in NAMES:
        out = tmp_path / name
        assert main([command, str(no_source), "-o", str(out), "--workers", "1", "-q", *COMMANDS[command]]) == 0
        assert kind(out) == {"gz": "gzip", "zst": "zstd", "parquet": "parquet"}.get(name.rsplit(".", 1)[1], "plain")
        got[name] = records(out)
    jsonl = got["out.jsonl"]
    assert jsonl and all(got[n] == jsonl for n in NAMES if n != "out.parquet")
    assert [r["id"] for r in got["out.parquet"]] == [r["id"] for r in jsonl]


@pytest.mark.parametrize("command", COMMANDS)
def test_stdout_gets_the_jsonl_records(tmp_path, no_source, command, capsysbinary):
    assert main([command, str(no_source), "-o", str(tmp_path / "f.jsonl"), "--workers", "1", "-q", *COMMANDS[command]]) == 0
    capsysbinary.readouterr()
    assert main([command, str(no_source), "-o", "-", "--workers", "1", "-q", *COMMANDS[command]]) == 0
    assert capsysbinary.readouterr().out == (tmp_path / "f.jsonl").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.jsonl"] + (["f.jsonl.summary.json"] if command == "filter" else [])


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("name", ["f.csv", "f.json", "f.jsonl.bz2", "f.txt"])
def test_any_other_name_is_refused_in_one_line_before_work(tmp_path, command, name, capsys):
    missing = str(tmp_path / "nowhere.parquet")  # never read: the name is refused first
    assert main([command, missing, "-o", str(tmp_path / name), *COMMANDS[command]]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"streamproc {command}: error: {tmp_path / name}: unknown output type" in err
    assert ".jsonl.zst, " in err and "or - for stdout" in err and "nowhere" not in err
    assert list(tmp_path.iterdir()) == []


def test_features_jsonl_gz_is_gzip(tmp_path, no_source):
    """Was: plain JSON lines under a .gz name. The same rows make the same bytes (the gzip header
    names no temporary file)."""
    assert main(["features", str(no_source), "-o", str(tmp_path / "f.jsonl.gz"), "--workers", "1", "-q"]) == 0
    assert main(["features", str(no_source), "-o", str(tmp_path / "g.jsonl.gz"), "--workers", "1", "-q"]) == 0
    assert (tmp_path / "f.jsonl.gz").read_bytes() == (tmp_path / "g.jsonl.gz").read_bytes()
    rows = [json.loads(line) for line in gzip.decompress((tmp_path / "f.jsonl.gz").read_bytes()).splitlines()]
    assert len(rows) == 30 and rows[0]["source"] == "traces"


def test_filter_writes_kept_rows_exactly_as_read(tmp_path, no_source):
    """Was: a `source` column added to rows whose input had none (`"source": "in"`)."""
    read = [json.loads(line) for line in no_source.read_text().splitlines()]
    for name in ("k.jsonl", "k.jsonl.gz", "k.parquet"):
        assert main(["filter", str(no_source), "-o", str(tmp_path / name), "--where", "true", "--workers", "1", "-q"]) == 0
        back = records(tmp_path / name)
        if name.endswith(".parquet"):  # a column some rows lack is null in the others
            back = [{k: v for k, v in r.items() if v is not None or k != "quality"} for r in back]
        assert back == read, name
    assert main(["filter", str(no_source), "-o", str(tmp_path / "s.jsonl"), "--where", "true", "--with-source", "--workers", "1", "-q"]) == 0
    assert [r.pop("source") for r in records(tmp_path / "s.jsonl")] == ["traces"] * 30
    assert main(["filter", str(SAMPLE), "-o", str(tmp_path / "own.jsonl"), "--where", "true", "--workers", "1", "-q"]) == 0
    assert [r["source"] for r in records(tmp_path / "own.jsonl")] == pq.read_table(SAMPLE, columns=["source"]).column(0).to_pylist()


def test_filter_with_nothing_kept_writes_an_empty_file_of_the_input_columns(tmp_path, no_source):
    assert main(["filter", str(no_source), "-o", str(tmp_path / "none.parquet"), "--where", "false", "--workers", "1", "-q"]) == 0
    t = pq.read_table(tmp_path / "none.parquet")
    assert t.num_rows == 0 and "source" not in t.column_names and "conversations" in t.column_names


def test_a_parquet_batch_that_does_not_fit_the_first_is_named(tmp_path):
    from streamproc.io.files import OutputError
    from streamproc.io.writer import RowWriter

    out = tmp_path / "x.parquet"
    with pytest.raises(OutputError, match="column 'b' first appears after row 1; write .jsonl instead"):
        with RowWriter(out) as w:
            w.write([{"a": 1}])
            w.write([{"a": 2, "b": 3}])
    assert list(tmp_path.iterdir()) == []
    with RowWriter(out) as w:
        w.write([{"a": 1}])
        w.write([{"a": 2}])
    assert pq.read_table(out).equals(pa.table({"a": [1, 2]}))
    with RowWriter(tmp_path / "none.parquet"):  # no schema declared, no row: an empty file still
        pass
    assert pq.read_table(tmp_path / "none.parquet").num_rows == 0


def test_filter_removed_rows_go_to_a_file_only(tmp_path, no_source, capsys):
    assert main(["filter", str(no_source), "-o", "-", "--removed", "-", "--where", "true"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--removed -: the kept rows may go to stdout, the removed ones only to a file" in err
