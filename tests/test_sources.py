"""Streaming sources: every format, directories and globs, sharding without loss, --limit, the
`datasets` streaming path on local files, source labels, and the offline Hub error."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from streamproc.io import synth
from streamproc.records import BadRow, Row
from streamproc.io.sources import HUB_DATASET, SAMPLE, Split, SourceError, hub_part, iter_rows, plan, read

N = 24


@pytest.fixture(scope="module")
def want() -> list[dict]:
    return list(synth.rows(N, seed=11))


def key(r: Row) -> tuple:
    return (r.id, r.conversations, r.tools, r.category, r.subcategory, r.task, r.source)


def want_key(d: dict) -> tuple:
    return (d["id"], [(t["from"], t["value"]) for t in d["conversations"]], d["tools"], d["category"], d["subcategory"], d["task"], d["source"])


def jsonl_bytes(rows: list[dict]) -> bytes:
    return b"".join(orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE) for r in rows)


@pytest.fixture(scope="module")
def files(tmp_path_factory, want) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("formats")
    out = {"parquet": d / "rows.parquet", "jsonl": d / "rows.jsonl", "jsonl.gz": d / "rows.jsonl.gz",
           "jsonl.zst": d / "rows.jsonl.zst", "json": d / "rows.json"}
    synth.write(out["parquet"], N, seed=11, row_group=4)
    out["jsonl"].write_bytes(jsonl_bytes(want))
    out["jsonl.gz"].write_bytes(gzip.compress(jsonl_bytes(want)))
    out["jsonl.zst"].write_bytes(zstandard.ZstdCompressor().compress(jsonl_bytes(want)))
    out["json"].write_bytes(orjson.dumps(want))
    return out


def rows_of(items) -> list[Row]:
    items = list(items)
    assert not [b for b in items if isinstance(b, BadRow)]
    return items


@pytest.mark.parametrize("fmt", ["parquet", "jsonl", "jsonl.gz", "jsonl.zst", "json"])
def test_each_format_reads_every_row(files, want, fmt):
    got = rows_of(iter_rows([files[fmt]]))
    assert [key(r) for r in got] == [want_key(w) for w in want]
    assert [r.loc.row for r in got] == list(range(N)) and got[0].loc.file == str(files[fmt])


def test_json_object_holding_a_list_of_rows(tmp_path, want):
    p = tmp_path / "wrapped.json"
    p.write_bytes(orjson.dumps({"data": want[:3]}))
    assert [r.id for r in rows_of(iter_rows([p]))] == [w["id"] for w in want[:3]]


def test_directories_and_globs(tmp_path, files, want):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "2.jsonl").write_bytes(files["jsonl"].read_bytes())
    (tmp_path / "a" / "1.parquet").write_bytes(files["parquet"].read_bytes())
    (tmp_path / "a" / "notes.txt").write_text("not data")
    by_dir = rows_of(iter_rows([tmp_path / "a"]))
    assert [r.loc.file for r in by_dir[:: N]] == [str(tmp_path / "a" / "1.parquet"), str(tmp_path / "a" / "b" / "2.jsonl")]
    assert [r.id for r in by_dir] == [w["id"] for w in want] * 2
    by_glob = rows_of(iter_rows([str(tmp_path / "a" / "**" / "*.jsonl")]))
    assert [r.loc.file for r in by_glob] == [str(tmp_path / "a" / "b" / "2.jsonl")] * N
    for bad, msg in [(str(tmp_path / "*.nothing"), "no file matches"), (tmp_path / "missing.jsonl", "no such file")]:
        with pytest.raises(SourceError, match=msg):
            plan([bad])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="directory holds no"):
        plan([tmp_path / "empty"])


def test_extra_columns_are_carried(tmp_path, want):
    rows = [w | {"timestamp": "2025-03-01T00:00:00", "model": "kimi-k2.5", "completed": i % 2 == 0} for i, w in enumerate(want[:4])]
    p = tmp_path / "extra.jsonl"
    p.write_bytes(jsonl_bytes(rows))
    got = rows_of(iter_rows([p]))
    assert [r.extra for r in got] == [{"timestamp": "2025-03-01T00:00:00", "model": "kimi-k2.5", "completed": i % 2 == 0} for i in range(4)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "extra.parquet")
    assert [r.extra for r in rows_of(iter_rows([tmp_path / "extra.parquet"]))] == [r.extra for r in got]


def test_real_trajectories_read_cleanly(real_row_files, real_rows):
    got = rows_of(iter_rows(real_row_files))
    assert [r.id for r in got] == [r["id"] for r in real_rows]
    assert [r.conversations for r in got] == [[(t["from"], t["value"]) for t in r["conversations"]] for r in real_rows]


# ----------------------------------------------------------------------------- sharding


def union(shards: list[Split]) -> list[tuple]:
    # JSONL rows are placed by byte offset (their line number is counted only for errors).
    return [(r.loc.byte if r.loc.byte >= 0 else r.loc.row, r.id) for s in shards for r in rows_of(read(s))]


def test_jsonl_byte_ranges_lose_and_repeat_nothing(files, real_row_files):
    for path in [files["jsonl"], *real_row_files]:
        sequential = union(plan([path]))
        size = os.path.getsize(path)
        for shard_bytes in (size // 150 + 1, 65_537, size // 3 + 1):
            shards = plan([path], shard_bytes=shard_bytes)
            assert len(shards) == -(-size // shard_bytes) > 1
            assert union(shards) == sequential, (path, shard_bytes)


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 300), min_size=1, max_size=25),
    blank=st.lists(st.booleans(), min_size=25, max_size=25),
    shard_bytes=st.integers(1, 2000),
)
def test_byte_ranges_property(tmp_path_factory, lengths, blank, shard_bytes):
    """Any line lengths (blank lines too), any range size: the ranges' union is the sequential read.
    Ranges that start exactly on a line start, or inside one, are both covered."""
    lines = []
    for i, n in enumerate(lengths):
        lines.append(b"\n" if blank[i] else orjson.dumps({"id": f"r{i}", "conversations": [{"from": "human", "value": "x" * n}]}) + b"\n")
    p = tmp_path_factory.mktemp("ranges") / "rows.jsonl"
    p.write_bytes(b"".join(lines))
    starts = [sum(map(len, lines[:i])) for i in range(len(lines))]
    want = [(starts[i], f"r{i}") for i in range(len(lengths)) if not blank[i]]
    assert union(plan([p])) == want
    assert union(plan([p], shard_bytes=shard_bytes)) == want


def test_bad_line_in_a_later_range_names_its_line_number(tmp_path):
    """Line numbers are counted lazily, only when a bad row needs one; they must still be exact."""
    good = orjson.dumps({"id": "g", "conversations": [{"from": "human", "value": "x" * 50}]}) + b"\n"
    p = tmp_path / "rows.jsonl"
    p.write_bytes(good * 40 + b"{broken\n" + good * 5)
    shards = plan([p], shard_bytes=300)
    assert len(shards) > 5
    bad = [b for s in shards for b in read(s) if isinstance(b, BadRow)]
    assert [str(b.loc) for b in bad] == [f"{p}:row 40"]


def test_parquet_row_group_shards(files, want):
    meta = pq.ParquetFile(files["parquet"]).metadata
    assert meta.num_row_groups == N // 4
    shards = plan([files["parquet"]], shard_bytes=1)  # one row group per shard
    assert [s.parts[0].row_groups for s in shards] == [(g,) for g in range(N // 4)]
    assert [s.parts[0].first_row for s in shards] == list(range(0, N, 4))
    assert union(shards) == [(i, w["id"]) for i, w in enumerate(want)]
    two = plan([files["parquet"]], shard_bytes=meta.row_group(0).total_byte_size * 2)
    assert 1 < len(two) < N // 4 and union(two) == union(shards)


def test_limit_reads_the_first_rows_in_order(files, want):
    assert len(plan([files["jsonl"]], limit=7, shard_bytes=1000)) == 1  # lines are not counted in advance
    parquet_first = plan([files["parquet"], files["jsonl"]], limit=7, shard_bytes=1)
    assert [s.limit for s in parquet_first] == [4, 3]  # a whole row group, then 3 rows read in order
    for shards in (parquet_first, plan([files["jsonl"]], limit=7)):
        assert [r.id for s in shards for r in rows_of(read(s))] == [w["id"] for w in want[:7]]
    two_files = plan([files["parquet"], files["json"]], limit=N + 3, shard_bytes=1)
    assert len(two_files) == N // 4 + 1  # every row group of the Parquet file in parallel
    assert [r.id for s in two_files for r in rows_of(read(s))] == [w["id"] for w in want] + [w["id"] for w in want[:3]]


@settings(max_examples=40, deadline=None)
@given(
    groups=st.lists(st.integers(1, 6), min_size=1, max_size=6),
    bad=st.sets(st.integers(0, 40), max_size=4),
    limit=st.integers(1, 60),
    shard_bytes=st.sampled_from([1, 3000, 1 << 25]),
)
def test_limit_plan_reads_what_a_sequential_read_reads(tmp_path_factory, groups, bad, limit, shard_bytes):
    """Any row groups, bad rows among them, any limit: the planned splits, read in order, give
    exactly the first `limit` items of a sequential read (Parquet counted from footers, then JSONL)."""
    d = tmp_path_factory.mktemp("limit")
    rows = [{"id": f"p{i}", "conversations": [{"from": "human" if i not in bad else "robot", "value": "x"}]} for i in range(sum(groups))]
    writer = pq.ParquetWriter(d / "a.parquet", pa.Table.from_pylist(rows[:1]).schema)
    at = 0
    for g in groups:
        writer.write_table(pa.Table.from_pylist(rows[at : at + g]))
        at += g
    writer.close()
    (d / "b.jsonl").write_bytes(b"".join(orjson.dumps({"id": f"j{i}", "conversations": [{"from": "human", "value": "y"}]}) + b"\n" for i in range(10)))
    inputs = [d / "a.parquet", d / "b.jsonl"]
    key = lambda item: item.id if isinstance(item, Row) else str(item)  # noqa: E731  (bad rows: Parquet, by row)
    sequential = [key(x) for x in read(Split(tuple(p for s in plan(inputs) for p in s.parts)))][:limit]
    splits = plan(inputs, limit=limit, shard_bytes=shard_bytes)
    assert [key(x) for s in splits for x in read(s)] == sequential
    assert sum(s.limit for s in splits) >= len(sequential)


def test_no_input_reads_the_shipped_sample():
    got = rows_of(iter_rows(limit=5))
    assert len(got) == 5 and {r.loc.file for r in got} == {str(SAMPLE)}
    assert {r.source for r in iter_rows()} == {"kimi", "glm-5.1"}


# ----------------------------------------------------------------------------- datasets path, labels


@pytest.mark.parametrize("builder, fmt", [("parquet", "parquet"), ("json", "jsonl"), ("json", "jsonl.gz")])
def test_datasets_streaming_path_gives_the_same_rows(files, builder, fmt):
    direct = rows_of(iter_rows([files[fmt]]))
    via_datasets = rows_of(read(Split((hub_part(builder, [str(files[fmt])], "local"),))))
    assert [key(r) for r in via_datasets] == [key(r) for r in direct]


def test_source_labels(tmp_path, want):
    """Several inputs combine into one stream with a source per row: the row's own `source`
    column, else --source, else the file name (kimi.jsonl -> kimi)."""
    bare = [{k: v for k, v in w.items() if k != "source"} for w in want[:3]]
    for name in ("kimi.jsonl", "glm-5.1.jsonl.gz"):
        data = jsonl_bytes(bare)
        (tmp_path / name).write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    both = rows_of(iter_rows([tmp_path / "kimi.jsonl", tmp_path / "glm-5.1.jsonl.gz"]))
    assert [r.source for r in both] == ["kimi"] * 3 + ["glm-5.1"] * 3
    assert {r.source for r in iter_rows([tmp_path / "kimi.jsonl"], source="mine")} == {"mine"}
    hub = [read(Split((hub_part("json", [str(tmp_path / n)], label),))) for n, label in [("kimi.jsonl", "kimi"), ("glm-5.1.jsonl.gz", "glm-5.1")]]
    assert [r.source for part in hub for r in rows_of(part)] == ["kimi"] * 3 + ["glm-5.1"] * 3
    # A row's own source column wins over the file name: the sample is one file holding both configs.
    assert {r.source for r in rows_of(iter_rows(limit=20))} == {"kimi", "glm-5.1"}


def test_hub_offline_fails_clearly(tmp_path):
    env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    p = subprocess.run(
        [sys.executable, "-m", "streamproc", "parse", "--dataset", HUB_DATASET, "--config", "kimi", "--config", "glm-5.1",
         "-o", str(tmp_path / "out.jsonl")],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert p.returncode == 2, p.stderr
    assert HUB_DATASET in p.stderr and "config kimi" in p.stderr
    assert "Offline?" in p.stderr and "pass them as INPUT" in p.stderr
    assert "Traceback" not in p.stderr and not (tmp_path / "out.jsonl").exists()


def test_bench_section_compares_the_readers_on_the_same_rows(files):
    from streamproc import benchmarks

    datasets_, direct = benchmarks.run(["sources"], benchmarks.context([files["parquet"], files["jsonl"]], quick=True))
    assert (direct.baseline, direct.unit) == (benchmarks.sources.DATASETS, "rows/s") and direct.value > 0 < datasets_.value
    assert direct.ratio == pytest.approx(direct.value / datasets_.value) and direct.data.endswith(f"{2 * N:,} rows")
