"""The Ray engine gives what the local engine gives, on one local Ray cluster for the module.

Inputs are the real traces (../shared) written as JSONL and as Parquet with several row groups,
with bad rows mixed in, so rejected rows must come out with the same file, row and message, and
every output file with the same bytes.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from streamproc.run import ray_engine as engine_ray
from streamproc.analyze import metrics
from streamproc.cli import main
from streamproc.run.ray_engine import RayEngine
from streamproc.prepare.job import PROGRESS, PackOptions, pack_to_dir
from streamproc.records import RowError
from streamproc.views.report import stats_document
from streamproc.run.runner import Local, WorkerDied
from streamproc.io.sources import plan
from streamproc.analyze.job import collect_with_browser

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def cluster(request) -> RayEngine:
    """A local 2-CPU Ray cluster, started after the S3 endpoint (where moto is installed) so
    that its workers find it."""
    if importlib.util.find_spec("moto"):
        request.getfixturevalue("s3")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield RayEngine()
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




def _files(d: Path) -> dict[str, bytes]:
    """Every file under d by relative path, for byte-for-byte comparison."""
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_stats_browser_and_rejects_equal_local_in_small_splits(cluster, inputs):
    splits = plan(inputs, shard_bytes=20_000)  # byte ranges of the JSONL file, row groups of the Parquet ones
    assert len(splits) > 8
    local = collect_with_browser(splits, workers=1)
    on_ray = collect_with_browser(splits, workers=cluster)
    assert len(local[2].rejected) == 5
    assert _rejects(on_ray[2]) == _rejects(local[2])
    assert _doc(on_ray[0], on_ray[2]) == _doc(local[0], local[2]) == _doc(*metrics.collect(plan(inputs), workers=2))
    assert on_ray[1].entries == local[1].entries and on_ray[1].chunks == local[1].chunks


def test_limit_reads_the_first_rows_in_order(cluster, inputs):
    # Inside the JSONL file; past it into the first Parquet file; Parquet first (row groups of 4
    # rows: whole ones are tasks of their own, then 3 rows).
    for files, n in ((inputs, 2), (inputs, 25), (inputs[1:], 11)):
        splits = plan(files, limit=n, shard_bytes=1)
        local = metrics.collect(splits, workers=1)
        on_ray = metrics.collect(splits, workers=cluster)
        assert on_ray[1].read == n
        assert _doc(*on_ray) == _doc(*local)
    assert [s.limit for s in splits] == [4, 4, 3]


def test_fail_stops_at_the_first_bad_row(cluster, inputs):
    """The worker's RowError itself reaches the caller, not Ray's wrapper of it."""
    with pytest.raises(RowError) as local:
        metrics.collect(plan(inputs[1:]), workers=1, on_error="fail")
    with pytest.raises(RowError) as on_ray:
        metrics.collect(plan(inputs[1:], shard_bytes=20_000), workers=cluster, on_error="fail")
    assert str(on_ray.value) == str(local.value)
    assert "b.parquet:row 9" in str(on_ray.value)


def test_s3_inputs_on_ray(cluster, inputs, s3):
    """Ray workers read objects from S3 themselves: the same statistics and rejects, named by URI."""
    uris = [s3(f"ray/{Path(p).name}", Path(p).read_bytes()) for p in inputs]
    local = metrics.collect(plan(inputs), workers=1)
    on_ray = metrics.collect(plan(["s3://traces/ray"], shard_bytes=20_000), workers=cluster)
    assert _doc(*on_ray) == _doc(*local)
    assert [b.replace("s3://traces/ray", "X") for b in _rejects(on_ray[1])] == [b.replace(str(Path(inputs[0]).parent), "X") for b in _rejects(local[1])]
    assert sorted(uris) == sorted({b.loc.file for b in on_ray[1].rejected} | {uris[2]})


def test_cli_stats_json_and_rejects_equal_local(cluster, inputs, tmp_path, capsys):
    out = {}
    for engine in ("local", "ray"):
        js = tmp_path / f"{engine}.json"
        rep = tmp_path / f"{engine}-report"
        assert main(["stats", *inputs, "--engine", engine, "--workers", "1", "--json", str(js), "--report", str(rep)]) == 0
        out[engine] = (js.read_bytes(), (tmp_path / f"{engine}.json.rejects.jsonl").read_bytes(), (rep / "index.html").read_bytes())
    assert out["ray"] == out["local"]
    assert b'"rejected": 5' in out["ray"][0]


def test_cli_filter_and_features_equal_local(cluster, inputs, tmp_path, capsys):
    """The curation stage on Ray: the same kept and removed rows (near-dedup decided in input
    order), summary, features and rejects as the local engine, file for file."""
    out = {}
    for engine in ("local", "ray"):
        d = tmp_path / engine
        d.mkdir()
        args = ["--engine", engine, "--workers", "2"]
        assert main(["filter", *inputs, "--preset", "clean", "--dedup", "near", "-o", str(d / "kept.parquet"), "--removed", str(d / "gone.jsonl"), *args]) == 0
        assert main(["features", *inputs, "-o", str(d / "f.parquet"), *args]) == 0
        summary = orjson.loads((d / "kept.parquet.summary.json").read_bytes())
        assert summary.pop("output") == str(d / "kept.parquet")
        summary.pop("removed_rows"), summary["dedup"].pop("index_bytes"), summary["dedup"].pop("index_mib_per_million_rows")
        (d / "kept.parquet.summary.json").unlink()
        out[engine] = (summary, _files(d))
    assert out["ray"] == out["local"]
    assert out["ray"][0]["rejected"] == 5 and out["ray"][0]["kept"] > 0 and out["ray"][0]["removed"] > 0


@pytest.mark.parametrize(
    "command",
    [
        ["parse", "-o", "{out}/parsed.parquet"],
        ["stats", "--preset", "clean", "--dedup", "exact", "--json", "{out}/stats.json"],
        ["export", "--where", "tool_calls > 2", "--dedup", "near", "-o", "{out}/pairs.jsonl"],
        ["report", "--preset", "agentic", "-o", "{out}/report.html"],
        ["pack", "--where", "failed_responses = 0", "--seq-len", "16384", "--eval-fraction", "0.25", "-o", "{out}/packed"],
    ],
    ids=["parse", "stats", "export", "report", "pack"],
)
def test_filtered_view_on_ray_equals_local(cluster, inputs, tmp_path, capsys, command):
    """--where / --preset / --dedup on a command's own pass: on Ray the rows to leave out are
    decided by a first pass on Ray, then skipped by their place in their file; every output
    file is the local engine's, byte for byte."""
    out = {}
    for engine in ("local", "ray"):
        d = tmp_path / engine
        d.mkdir()
        args = [a.replace("{out}", str(d)) for a in command]
        assert main([args[0], *inputs, *args[1:], "--engine", engine, "--workers", "2"]) == 0, capsys.readouterr().err
        out[engine] = (_files(d), capsys.readouterr().err.replace(str(d), "OUT"))
    assert out["ray"][0] == out["local"][0] and out["ray"][0]
    view = [line for line in out["ray"][1].splitlines() if line.startswith("filtered view")]
    assert view == [line for line in out["local"][1].splitlines() if line.startswith("filtered view")]
    assert len(view) == (command[0] != "parse")


def test_run_with_a_view_on_ray_equals_local(cluster, inputs, tmp_path, capsys):
    """streamproc run: parsed file, report and shards from one pass, the same on both engines."""
    out = {}
    for engine in ("local", "ray"):
        d = tmp_path / engine
        assert main(["run", *inputs, "-o", str(d), "--seq-len", "16384", "--preset", "clean", "--engine", engine, "--workers", "2"]) == 0
        files = _files(d)
        assert "parsed.jsonl" in files and "report/index.html" in files and "packed/manifest.json" in files
        out[engine] = {k: v for k, v in files.items() if not k.endswith(".png")}  # plots carry their drawing time
    assert out["ray"] == out["local"]


class _Interrupted:
    """The local engine, interrupted after `n` splits as Ctrl-C would."""

    def __init__(self, n: int):
        self.n = n

    def map(self, fn, items):
        for k, value in enumerate(Local(1).map(fn, items)):
            if k == self.n:
                raise KeyboardInterrupt
            yield value


def test_pack_resumes_on_ray_to_the_same_bytes(cluster, inputs, tmp_path):
    """A pack run interrupted on one engine resumes on the other: the plan is the same."""
    splits = plan(inputs, shard_bytes=20_000)
    opts = PackOptions(seq_len=16384, eval_fraction=0.25, buffer_size=2, shard_rows=4)
    whole = pack_to_dir(splits, tmp_path / "whole", opts, workers=1)
    with pytest.raises(KeyboardInterrupt):
        pack_to_dir(splits, tmp_path / "out", opts, workers=_Interrupted(5))
    done = orjson.loads((tmp_path / "out" / PROGRESS).read_bytes())["consumed"]  # as far as shards were written
    assert 1 <= done <= 5
    resumed = pack_to_dir(splits, tmp_path / "out", opts, workers=cluster)
    assert resumed.resumed_after == done and resumed.tally.read == whole.tally.read
    assert _files(tmp_path / "out") == _files(tmp_path / "whole")


def test_ctrl_c_ends_a_ray_run_promptly(inputs, tmp_path):
    """SIGINT to `streamproc pack --engine ray` while its tasks run: one line, exit 130."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]), STREAMPROC_PROGRESS="0")
    # As from a terminal: Python's own SIGINT handler (a shell's `&` would have it ignored).
    cmd = [sys.executable, "-c", "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); from streamproc.cli import main; sys.exit(main(sys.argv[1:]))"]
    proc = subprocess.Popen([*cmd, "pack", *inputs * 300, "--seq-len", "65536", "--engine", "ray", "-o", str(tmp_path / "packed")], stderr=subprocess.PIPE, env=env, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    deadline = time.monotonic() + 120
    while not any("Started a local Ray instance" in x for x in lines) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(3)  # the tasks run (the whole run takes minutes)
    assert proc.poll() is None, "".join(lines)
    t = time.monotonic()
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)
    reader.join(timeout=10)
    err = "".join(lines)
    assert proc.returncode == 130 and "interrupted" in err, err
    assert time.monotonic() - t < 30 and "Traceback" not in err, err


def test_without_ray_says_how_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # what an environment without Ray looks like
    with pytest.raises(engine_ray.RayUnavailable, match=r'pip install "streamproc\[ray\]"'):
        engine_ray.require_ray()
    assert main(["stats", "--engine", "ray"]) == 2
    assert 'pip install "streamproc[ray]"' in capsys.readouterr().err


def test_a_task_whose_worker_keeps_dying_is_named(cluster):
    """Ray retries a task whose worker died; when every try dies, the run fails with
    runner.WorkerDied for that item (the CLI prints it in one line, naming the split)."""

    def dies_on_1(x):  # nested, so Ray's workers get it by value
        if x == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        return x

    assert list(cluster.map(dies_on_1, [0, 2])) == [0, 2]
    with pytest.raises(WorkerDied) as e:
        list(cluster.map(dies_on_1, [0, 1, 2]))
    assert e.value.index == 1 and "a Ray task failed" in str(e.value)


@pytest.mark.parametrize("address", ["127.0.0.1:1", "ray://127.0.0.1:1"])
def test_an_unreachable_cluster_is_one_line_at_once(address, tmp_path):
    """Ray itself retries an address nobody answers at for minutes; streamproc says so at once."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    env.pop("RAY_ADDRESS", None)
    t = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "streamproc", "stats", "--engine", "ray", "--address", address],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert res.stderr.strip().splitlines()[-1] == f"streamproc stats: error: cannot reach the Ray cluster at {address}: Connection refused"
    assert time.monotonic() - t < 60
