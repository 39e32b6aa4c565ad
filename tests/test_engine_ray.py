"""The Ray engine gives what the local engine gives, on one local Ray cluster for the module.

Inputs are the real traces (../shared) written as JSONL and as Parquet with several row groups,
with bad rows mixed in, so rejected rows must come out with the same file, row and message.
"""

from __future__ import annotations

import sys
import zlib
from collections import Counter

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from streamproc import engine_ray, metrics
from streamproc.cli import main
from streamproc.pack_job import PackOptions, pack_to_dir
from streamproc.records import RowError
from streamproc.report import stats_document
from streamproc.shards import SPLITS, read_shards
from streamproc.sources import plan
from streamproc.stats_job import collect_with_browser

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def inputs(real_rows, tmp_path_factory) -> list[str]:
    """A JSONL file and two Parquet files, each with bad rows at known places."""
    d = tmp_path_factory.mktemp("ray_inputs")
    robot = {"id": "robot", "conversations": [{"from": "robot", "value": "hi"}]}
    lines = [orjson.dumps(r) for r in real_rows[:20]]
    lines[3:3] = [b"", b"{not json", orjson.dumps(robot), b"\xff\xfe{}", b"   "]
    (d / "a.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    rest = real_rows[20:]
    first, second = rest[:17], rest[17:]
    first.insert(9, robot)
    narrator = [{"from": "gpt", "value": "x"}, {"from": "narrator", "value": "y"}]
    second.insert(len(second) - 2, {**robot, "id": "robot2", "conversations": narrator})
    for name, rows in (("b.parquet", first), ("c.parquet", second)):
        pq.write_table(pa.Table.from_pylist(rows), d / name, row_group_size=4)
    return [str(d / "a.jsonl"), str(d / "b.parquet"), str(d / "c.parquet")]


def _doc(stats, tally) -> bytes:
    return orjson.dumps(stats_document(stats, tally), option=orjson.OPT_SERIALIZE_NUMPY)


def _rejects(tally) -> list[str]:
    return [str(b) for b in tally.rejected]


def test_stats_and_rejects_equal_local_in_small_batches(cluster, inputs):
    local = metrics.collect(plan(inputs), workers=1)
    # Batches of 3 rows split every file, so row numbers depend on the driver's offsets.
    on_ray = engine_ray.collect(inputs, batch_rows=3)
    assert len(local[1].rejected) == 5
    assert _rejects(on_ray[1]) == _rejects(local[1])
    assert _doc(*on_ray) == _doc(*local)
    # The trace browser of stats --report, made in the same pass, in batches on Ray.
    stats, browser, tally = collect_with_browser(plan(inputs), workers=1)
    r_stats, r_browser, r_tally = engine_ray.collect_with_browser(inputs, batch_rows=3)
    assert _doc(r_stats, r_tally) == _doc(stats, tally) == _doc(*local)
    assert [e.id for e in r_browser.entries] == [e.id for e in browser.entries] and len(browser.entries) == tally.parsed
    bodies = lambda b: [x for c in b.chunks for x in orjson.loads(zlib.decompress(c))]  # noqa: E731
    assert bodies(r_browser) == bodies(browser)
    for b in (browser, r_browser):  # every entry points at its own body
        assert [bodies(b)[sum(len(orjson.loads(zlib.decompress(c))) for c in b.chunks[: e.chunk]) + e.pos] for e in b.entries] == bodies(b)


def test_limit_reads_the_first_rows_in_order(cluster, inputs):
    for n in (2, 25):  # inside the JSONL file; past it into the first Parquet file
        local = metrics.collect(plan(inputs, limit=n), workers=1)
        on_ray = engine_ray.collect(inputs, limit=n)
        assert on_ray[1].read == n
        assert _doc(*on_ray) == _doc(*local)


def test_fail_stops_at_the_first_bad_row(cluster, inputs):
    with pytest.raises(RowError) as local:
        metrics.collect(plan(inputs[1:]), workers=1, on_error="fail")
    with pytest.raises(RowError) as on_ray:
        engine_ray.collect(inputs[1:], on_error="fail")
    assert str(on_ray.value) == str(local.value)
    assert "b.parquet:row 9" in str(on_ray.value)


def test_uri_directory_reads_like_local_directory(cluster, inputs, tmp_path):
    folder = inputs[0].rsplit("/", 1)[0]
    on_ray = engine_ray.collect([f"file://{folder}"])
    local = metrics.collect(plan([folder]), workers=1)
    assert _doc(*on_ray) == _doc(*local)
    assert [b.loc.row for b in on_ray[1].rejected] == [b.loc.row for b in local[1].rejected]
    assert all(b.loc.file.startswith("file:///") for b in on_ray[1].rejected)


def test_cli_stats_json_and_rejects_equal_local(cluster, inputs, tmp_path, capsys):
    out = {}
    for engine in ("local", "ray"):
        js = tmp_path / f"{engine}.json"
        rep = tmp_path / f"{engine}-report"
        assert main(["stats", *inputs, "--engine", engine, "--workers", "1", "--json", str(js), "--report", str(rep)]) == 0
        out[engine] = (js.read_bytes(), (tmp_path / f"{engine}.json.rejects.jsonl").read_bytes())
        assert (rep / "index.html").stat().st_size > 10_000  # the trace browser, on either engine
    assert out["ray"] == out["local"]
    assert b'"rejected": 5' in out["ray"][0]


def test_cli_pack_counts_and_rejects_equal_local(cluster, inputs, tmp_path, capsys):
    out = {}
    for engine in ("local", "ray"):
        d = tmp_path / engine
        args = ["pack", inputs[0], "--limit", "6", "--seq-len", "16384", "--engine", engine, "--workers", "1", "-o", str(d)]
        assert main(args) == 0
        counts = orjson.loads((d / "manifest.json").read_bytes())["counts"]
        out[engine] = (counts, (d / "rejects.jsonl").read_bytes())
    assert out["ray"] == out["local"]
    assert out["ray"][0]["rows_read"] == 6 and out["ray"][0]["rows_rejected"] == 3


def test_cli_filter_and_features_equal_local(cluster, inputs, tmp_path, capsys):
    """The curation stage on Ray: the same kept and removed rows (near-dedup decided in input
    order), summary, features and rejects as the local engine."""
    out = {}
    for engine in ("local", "ray"):
        d = tmp_path / engine
        d.mkdir()
        args = ["--engine", engine, "--workers", "1"]
        assert main(["filter", *inputs, "--preset", "clean", "--dedup", "near", "-o", str(d / "kept.parquet"), "--removed", str(d / "gone.jsonl"), *args]) == 0
        assert main(["features", *inputs, "-o", str(d / "f.parquet"), *args]) == 0
        summary = orjson.loads((d / "kept.parquet.summary.json").read_bytes())
        summary.pop("output"), summary.pop("removed_rows"), summary["dedup"].pop("index_bytes"), summary["dedup"].pop("index_mib_per_million_rows")
        # Parquet row groups follow the batches (splits locally, map_batches on Ray): the rows are compared.
        tables = [pq.read_table(d / f).to_pylist() for f in ("kept.parquet", "f.parquet")]
        files = ("gone.jsonl", "kept.parquet.rejects.jsonl", "f.parquet.rejects.jsonl")
        out[engine] = (summary, *tables, *((d / f).read_bytes() for f in files))
    assert out["ray"] == out["local"]
    assert out["ray"][0]["rejected"] == 5 and out["ray"][0]["kept"] > 0 and out["ray"][0]["removed"] > 0


def test_view_flags_are_refused_on_ray(capsys):
    assert main(["stats", "--engine", "ray", "--preset", "clean"]) != 0
    assert "streamproc filter --engine ray" in capsys.readouterr().err


def test_without_ray_says_how_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # what an environment without Ray looks like
    with pytest.raises(engine_ray.RayUnavailable, match=r'pip install "streamproc\[ray\]"'):
        engine_ray.require_ray()
    assert main(["stats", "--engine", "ray"]) == 2
    assert 'pip install "streamproc[ray]"' in capsys.readouterr().err


def _segments(out_dir) -> Counter:
    """Every packed sequence of both splits as (split, trace id, input ids, labels), counted."""
    segs: Counter = Counter()
    for split in SPLITS:
        t = read_shards(out_dir, split)
        cols = (t.column(c).to_pylist() for c in ("input_ids", "labels", "seq_lens", "trace_ids"))
        for ids, labels, lens, tids in zip(*cols):
            at = 0
            for n, tid in zip(lens, tids):
                segs[(split, tid, tuple(ids[at : at + n]), tuple(labels[at : at + n]))] += 1
                at += n
    return segs


def test_pack_writes_the_same_sequences_as_local(cluster, inputs, tmp_path):
    opts = PackOptions(seq_len=16384, eval_fraction=0.25, buffer_size=16)  # several flushes, both splits
    local = pack_to_dir(plan(inputs), tmp_path / "local", opts)
    on_ray = engine_ray.pack(inputs, tmp_path / "ray", opts)
    assert _rejects(on_ray.tally) == _rejects(local.tally)
    segs = _segments(tmp_path / "ray")
    assert segs == _segments(tmp_path / "local")
    assert {k[0] for k in segs} == set(SPLITS) and len(segs) > 60
    for split in SPLITS:
        mine, theirs = on_ray.manifest["counts"][split], local.manifest["counts"][split]
        for k in ("traces", "dropped", "tokens_cut", "sequences", "tokens", "trainable"):
            assert mine[k] == theirs[k], (split, k)
