"""Messy inputs a user may have: byte-order marks, .json objects with several lists, directory
trees with links, cycles and files of other types, globs. Each is read or named, never lost."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from streamproc.io import synth
from streamproc.records import BadRow
from streamproc.io.sources import BOM, SourceError, iter_rows, plan, rows_in

ROWS = list(synth.rows(5, seed=17))
IDS = [r["id"] for r in ROWS]


def jsonl(rows) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in rows)


def read_all(inputs, **kw) -> tuple[list[str], list[BadRow]]:
    items = list(iter_rows(inputs, **kw))
    return [r.id for r in items if not isinstance(r, BadRow)], [b for b in items if isinstance(b, BadRow)]


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    return subprocess.run([sys.executable, "-m", "streamproc", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


# ----------------------------------------------------------------------------- byte-order marks


@pytest.mark.parametrize("name", ["rows.jsonl", "rows.jsonl.gz", "rows.jsonl.zst", "rows.json", "rows.json.gz"])
def test_a_leading_byte_order_mark_is_dropped(tmp_path, name):
    body = orjson.dumps(ROWS) if ".json." in name or name.endswith(".json") else jsonl(ROWS)
    data = BOM + body
    if name.endswith(".gz"):
        data = gzip.compress(data)
    elif name.endswith(".zst"):
        data = zstandard.ZstdCompressor().compress(data)
    p = tmp_path / name
    p.write_bytes(data)
    assert read_all([p]) == (IDS, [])


def test_byte_order_mark_with_byte_range_shards(tmp_path):
    p = tmp_path / "rows.jsonl"
    p.write_bytes(BOM + jsonl(ROWS))
    for shard_bytes in (1, 7, 200, 1 << 20):
        shards = plan([p], shard_bytes=shard_bytes)
        from streamproc.io.sources import read

        items = [r for s in shards for r in read(s)]
        assert [r.id for r in items] == IDS, shard_bytes


# ----------------------------------------------------------------------------- .json objects


def test_json_object_rows_under_any_key(tmp_path):
    rows = [{k: v for k, v in r.items()} for r in ROWS[:2]]
    cases = {
        "meta-first": ({"meta": ["a", "b"], "data": rows}, [r["id"] for r in rows]),
        "custom-key": ({"version": 2, "tags": [1, 2], "traces": rows}, [r["id"] for r in rows]),
        "known-key-empty": ({"notes": ["x"], "train": []}, []),
    }
    for name, (obj, want) in cases.items():
        p = tmp_path / f"{name}.json"
        p.write_bytes(orjson.dumps(obj))
        assert read_all([p]) == (want, []), name


def test_json_object_ambiguous_or_rowless_is_a_file_level_error(tmp_path):
    cases = {
        "two-row-lists": ({"a": ROWS[:1], "b": ROWS[1:2]}, "cannot tell which list holds the rows: a, b"),
        "no-row-list": ({"x": [1], "y": ["z"]}, "cannot tell which list holds the rows: x, y"),
        "no-list": ({"x": 1, "y": {"z": 2}}, "the object's keys: x, y"),
        "scalar": (3, "expected a JSON array of rows, found a int"),
    }
    for name, (obj, words) in cases.items():
        p = tmp_path / f"{name}.json"
        p.write_bytes(orjson.dumps(obj))
        ids, bad = read_all([p])
        assert ids == [] and len(bad) == 1, name
        assert bad[0].field == "<file>" and words in bad[0].message and bad[0].loc.file == str(p), (name, bad[0])


@settings(max_examples=80, deadline=None)
@given(
    keys=st.lists(st.text(st.characters(categories=["Ll"]), min_size=1, max_size=6), min_size=1, max_size=5, unique=True),
    where=st.integers(0, 4),
    other=st.lists(st.one_of(st.integers(), st.text(max_size=3), st.lists(st.integers(), max_size=3)), max_size=3),
)
def test_the_one_list_of_rows_is_found_wherever_it_is(keys, where, other):
    """An object with exactly one list of rows: that list, whatever the key and the other values."""
    target = keys[where % len(keys)]
    obj = {k: (ROWS[:2] if k == target else other) for k in keys}
    assert rows_in(obj) == ROWS[:2]


# ----------------------------------------------------------------------------- directories and globs


@pytest.fixture()
def tree(tmp_path) -> Path:
    """data/ with: a.jsonl, sub/b.jsonl, linked -> ../elsewhere (c.jsonl), loop -> . (a cycle),
    x.jsonl.bz2, notes.txt, old.jsonl.rejects.jsonl, dangling.jsonl -> nowhere, a FIFO pipe.jsonl."""
    d = tmp_path / "data"
    (d / "sub").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (d / "a.jsonl").write_bytes(jsonl(ROWS[:1]))
    (d / "sub" / "b.jsonl").write_bytes(jsonl(ROWS[1:3]))
    (tmp_path / "elsewhere" / "c.jsonl").write_bytes(jsonl(ROWS[3:]))
    (d / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (d / "sub" / "loop").symlink_to(d, target_is_directory=True)
    (d / "x.jsonl.bz2").write_bytes(b"BZh9")
    (d / "notes.txt").write_text("not data")
    (d / "old.jsonl.rejects.jsonl").write_text('{"file": "x", "row": 1}\n')
    (d / "dangling.jsonl").symlink_to(tmp_path / "nowhere.jsonl")
    os.mkfifo(d / "pipe.jsonl")  # opening it would wait for a writer
    return d


def unread_of(inputs) -> list[str]:
    return [str(u) for u in plan(inputs).unread]


def test_directory_follows_links_once_and_names_what_it_does_not_read(tree):
    ids, bad = read_all([tree])
    assert sorted(ids) == sorted(IDS) and len(ids) == len(IDS) and bad == []
    assert unread_of([tree]) == [
        f"{tree}/dangling.jsonl (broken link)",
        f"{tree}/notes.txt (unsupported type)",
        f"{tree}/old.jsonl.rejects.jsonl (a rejects file streamproc wrote)",
        f"{tree}/pipe.jsonl (not a regular file)",
        f"{tree}/x.jsonl.bz2 (unsupported type)",
    ]
    with pytest.raises(SourceError, match="pipe.jsonl: not a regular file"):
        plan([tree / "pipe.jsonl"])


def test_glob_of_a_directory_reads_what_the_directory_reads(tree):
    by_dir = read_all([tree])
    by_glob = read_all([f"{tree}/*"])
    assert sorted(by_glob[0]) == sorted(by_dir[0]) and len(by_glob[0]) == len(IDS)
    assert sorted(unread_of([f"{tree}/*"])) == sorted(unread_of([tree]))
    recursive = read_all([f"{tree}/**"])  # every directory matched, each file read once
    assert sorted(recursive[0]) == sorted(IDS)


def test_directory_of_unreadable_types_names_them(tmp_path):
    d = tmp_path / "only-bz2"
    d.mkdir()
    (d / "x.jsonl.bz2").write_bytes(b"BZh9")
    with pytest.raises(SourceError, match=r"holds no .*not read: .*x.jsonl.bz2 \(unsupported type\)"):
        plan([d])


def test_count_line_lists_what_was_not_read(tree):
    res = cli("parse", "data", "-o", "out.jsonl", "--workers", "1", cwd=tree.parent)
    assert res.returncode == 0, res.stderr
    (line,) = [x for x in res.stderr.splitlines() if " rows read, " in x]
    assert line.startswith("5 rows read, 5 parsed, 0 rejected; 5 paths not read: data/dangling.jsonl (broken link), data/notes.txt")
    assert "data/x.jsonl.bz2 (unsupported type)" in line


# ----------------------------------------------------------------------------- rows without an id


def test_rows_without_an_id_are_named_by_their_data(tmp_path, monkeypatch):
    """However the path is spelled and whatever the format, an id-less row gets the same id;
    rows with different conversations get different ones."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    bare = [{k: v for k, v in r.items() if k != "id"} for r in ROWS] + [ROWS[0] | {"id": ""}]
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "in.jsonl").write_bytes(jsonl(bare))
    pq.write_table(pa.Table.from_pylist(bare), tmp_path / "other.parquet")
    monkeypatch.chdir(tmp_path)
    spellings = ["sub/in.jsonl", "./sub/in.jsonl", "sub/../sub/in.jsonl", str(tmp_path / "sub" / "in.jsonl"), "other.parquet"]
    got = [read_all([s])[0] for s in spellings]
    assert all(ids == got[0] for ids in got)
    assert len(set(got[0][:-1])) == len(ROWS) and got[0][-1] == got[0][0]
    assert all(i.startswith("sha-") and len(i) == 20 for i in got[0])


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["system", "human", "gpt", "tool"]), st.text(max_size=20)), min_size=1, max_size=4), st.data())
def test_content_id_depends_on_the_conversation_only(conv, data):
    from streamproc.records import Location, row_from_dict

    d = {"conversations": [{"from": f, "value": v} for f, v in conv]}
    here = row_from_dict(d, Location(data.draw(st.text(max_size=10)), data.draw(st.integers(-1, 99))))
    there = row_from_dict(dict(d, category="x"), Location("elsewhere.jsonl", 0, 123))
    assert here.id == there.id
    changed = [{"from": f, "value": v + "!"} for f, v in conv]
    assert row_from_dict({"conversations": changed}).id != here.id


# ----------------------------------------------------------------------------- output extensions


def decoded_lines(path: Path) -> list[dict]:
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        data = gzip.decompress(data)
    elif path.name.endswith((".zst", ".zstd")):
        data = zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return [orjson.loads(line) for line in data.splitlines()]


def table_rows(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


@pytest.mark.parametrize("ext", ["jsonl", "ndjson", "jsonl.gz", "jsonl.zst", "jsonl.zstd", "parquet", "pq"])
def test_every_writer_honours_the_output_extension(tmp_path, ext):
    """synth, parse and export write what the extension says, and streamproc reads it back."""
    from streamproc.prepare.export import export
    from streamproc.parse.job import parse_to_file

    load = table_rows if ext in ("parquet", "pq") else decoded_lines
    want = [r["id"] for r in synth.rows(4, seed=2)]
    synth.write(tmp_path / f"rows.{ext}", 4, seed=2)
    assert read_all([tmp_path / f"rows.{ext}"]) == (want, [])
    parse_to_file(plan([tmp_path / f"rows.{ext}"]), tmp_path / f"parsed.{ext}")
    assert [r["id"] for r in load(tmp_path / f"parsed.{ext}")] == want
    export(plan([tmp_path / f"rows.{ext}"]), tmp_path / f"exported.{ext}")
    assert [r["id"] for r in load(tmp_path / f"exported.{ext}")] == want


def test_writing_commands_take_the_extension(tmp_path):
    assert cli("synth", "--rows", "3", "-o", "rows.jsonl.gz", cwd=tmp_path).returncode == 0
    for cmd, out in (("parse", "p.pq"), ("export", "e.jsonl.zst")):
        res = cli(cmd, "rows.jsonl.gz", "-o", out, "--workers", "1", cwd=tmp_path)
        assert res.returncode == 0, res.stderr
    assert len(table_rows(tmp_path / "p.pq")) == len(decoded_lines(tmp_path / "e.jsonl.zst")) == 3


@pytest.mark.parametrize("cmd, name", [(["synth", "--rows", "1"], "out.jsonl.bz2"), (["parse"], "out.txt"), (["export"], "out.json"), (["parse"], ".jsonl")])
def test_an_output_extension_streamproc_does_not_write_is_a_usage_error(tmp_path, cmd, name):
    from streamproc.io.files import output_format

    for other in ("out", "x.csv", "x.jsonl.gz.bak", "x.parquet.zst"):
        with pytest.raises(ValueError, match="unknown output type"):
            output_format(other)
    res = cli(*cmd, "-o", name, cwd=tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr and res.stderr.count("\n") == 1
    assert f"error: {name}: unknown output type (expected a name ending in .jsonl, .ndjson, .jsonl.gz" in res.stderr
    assert ".parquet, .pq" in res.stderr and list(tmp_path.iterdir()) == []


def test_rejects_file_is_compressed_as_its_name_says(tmp_path):
    (tmp_path / "in.jsonl").write_bytes(jsonl(ROWS[:2]) + b"{broken\n")
    res = cli("parse", "in.jsonl", "-o", "out.jsonl", "--rejects", "bad.jsonl.gz", "--workers", "1", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert [r["row"] for r in decoded_lines(tmp_path / "bad.jsonl.gz")] == [2]

