"""The stage runner in real processes: worker pools that cannot hang, prompt interrupts, atomic
outputs, locked pack directories, and rows nested deeper than a record can hold."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pyarrow.parquet as pq
import pytest

from streamproc.records import Tally, row_from_dict
from streamproc.run.runner import Gather, Job, Stage, WorkerDied, fold_items, map_ordered, run, run_jobs
from streamproc.io.sources import SAMPLE, plan

ROOT = Path(__file__).resolve().parents[1]


def streamproc(*args: str, env: dict | None = None, timeout: float = 300, cwd: Path | None = None) -> subprocess.CompletedProcess:
    e = {**os.environ, "PYTHONPATH": str(ROOT)}
    e.pop("TOKENIZERS_PARALLELISM", None)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "streamproc", *args], capture_output=True, text=True, timeout=timeout, env=e, cwd=cwd)


def start(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "streamproc", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def digests(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def splits4(tmp_path_factory) -> list[str]:
    """Four JSONL files of 15 sample rows each: four splits for two workers."""
    d = tmp_path_factory.mktemp("in4")
    rows = pq.read_table(SAMPLE).slice(0, 60).to_pylist()
    for k in range(4):
        (d / f"p{k}.jsonl").write_bytes(b"".join(orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE) for r in rows[15 * k : 15 * k + 15]))
    return [str(d / f"p{k}.jsonl") for k in range(4)]


@pytest.fixture(scope="module")
def many(tmp_path_factory) -> list[str]:
    """Twelve splits of the whole sample: long enough to interrupt a run in the middle."""
    d = tmp_path_factory.mktemp("in12")
    rows = pq.read_table(SAMPLE).to_pylist()
    for k in range(12):
        (d / f"p{k:02}.jsonl").write_bytes(b"".join(orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE) for r in rows[25 * k : 25 * k + 25]))
    return sorted(str(p) for p in d.iterdir())


# ----------------------------------------------------------------------------- pools


@pytest.mark.parametrize("parallelism", ["true", "false", None])
def test_pack_with_two_workers_never_hangs_whatever_tokenizers_parallelism(tmp_path, splits4, parallelism):
    env = {} if parallelism is None else {"TOKENIZERS_PARALLELISM": parallelism}
    pack = ["--seq-len", "4096", "--buffer-size", "50"]
    one = streamproc("pack", *splits4, "-o", str(tmp_path / "one"), "--workers", "1", *pack, env=env, timeout=300)
    two = streamproc("pack", *splits4, "-o", str(tmp_path / "two"), "--workers", "2", *pack, env=env, timeout=300)
    assert one.returncode == 0 and two.returncode == 0, two.stderr
    assert digests(tmp_path / "one") == digests(tmp_path / "two")


@pytest.mark.parametrize("parallelism", ["true", "false", None])
def test_stats_tokenizer_with_two_workers_never_hangs(tmp_path, splits4, parallelism):
    env = {} if parallelism is None else {"TOKENIZERS_PARALLELISM": parallelism}
    one = streamproc("stats", *splits4, "--tokenizer", "--json", str(tmp_path / "1.json"), "--workers", "1", env=env, timeout=300)
    two = streamproc("stats", *splits4, "--tokenizer", "--json", str(tmp_path / "2.json"), "--workers", "2", env=env, timeout=300)
    assert one.returncode == 0 and two.returncode == 0, two.stderr
    assert (tmp_path / "1.json").read_bytes() == (tmp_path / "2.json").read_bytes()
    assert json.loads((tmp_path / "2.json").read_text())["reasoning_tokens_per_trace"]["count"] == 60


def _boom(x: int) -> int:
    if x == 3:
        raise ValueError(f"bad item {x}")
    return x * x


def test_pool_keeps_order_and_reraises_a_worker_error():
    assert list(map_ordered(_boom, [0, 1, 2], 2)) == [0, 1, 4]
    got = []
    with pytest.raises(ValueError, match="bad item 3"):
        for r in map_ordered(_boom, list(range(8)), 2):
            got.append(r)
    assert got == [0, 1, 4]


class _Fails(Stage):
    name = "fails"
    needs_trace = False

    def start(self) -> list:
        return []

    def fold(self, acc, row, trace) -> None:
        if row.id == "b":
            raise KeyError("no")
        acc.append(row.id)


def test_a_stage_failure_sets_that_row_aside_for_that_stage_only():
    rows = [row_from_dict({"id": i, "conversations": [{"from": "human", "value": "x"}]}) for i in "abc"]

    class Keeps(_Fails):
        def fold(self, acc, row, trace) -> None:
            acc.append(row.id)

    folded = fold_items(rows, [_Fails(), Keeps()])
    assert folded.partials == [["a", "c"], ["a", "b", "c"]]
    t = folded.tallies
    assert (t[0].read, t[0].parsed, len(t[0].rejected)) == (3, 2, 1) and t[0].rejected[0].field == "<fails>"
    assert (t[1].read, t[1].parsed, t[1].rejected) == (3, 3, [])


class _Ids(Stage):
    """The ids of a split's rows, in order (a real stage of its own: needs no trace)."""

    name = "ids"
    needs_trace = False

    def start(self) -> list:
        return []

    def fold(self, acc, row, trace) -> None:
        acc.append(row.id)


class _Holds(Gather):
    def __init__(self, held: set[int]):
        super().__init__(_Ids())
        self.held = held

    def holds(self, index: int) -> bool:
        return index in self.held


def test_a_job_is_not_given_the_splits_it_holds_and_a_split_all_hold_is_not_read(tmp_path, splits4):
    ids = [[json.loads(line)["id"] for line in Path(p).read_text().splitlines()] for p in splits4]
    gone = tmp_path / "gone.jsonl"  # held by every job: read, it would be a rejected file
    gone.write_text("x")
    splits = plan([*splits4, str(gone)])
    gone.unlink()
    for workers in (1, 2):
        every, some, most = Gather(_Ids()), _Holds({0, 2, 4}), _Holds({1, 4})
        run_jobs(splits, [every], workers=workers)
        assert [b.field for b in every.tally.rejected] == ["<file>"]  # the missing file, read
        run_jobs(splits, [some, most], workers=workers)
        assert every.partials == [*ids, []]
        assert some.partials == [ids[1], ids[3]] and most.partials == [ids[0], ids[2], ids[3]]
        assert some.tally.read == 30 and most.tally.read == 45 and not some.tally.rejected and not most.tally.rejected


class _StopsAt(Job):
    """Interrupts a run when it is given its `n`th split, as Ctrl-C would there."""

    def __init__(self, n: int):
        self.stages = [_Ids()]
        self.n = n

    def add(self, partials, tallies) -> None:
        self.n -= 1
        if not self.n:
            raise KeyboardInterrupt


def test_a_resumed_run_masks_only_the_splits_the_pack_job_does_not_hold(tmp_path, splits4):
    """`streamproc run` resumed: parse and stats read every split again, the pack job's masker
    only those it had not packed; the shards are those of a run never stopped."""
    from streamproc.parse.job import ParseJob
    from streamproc.prepare.job import PackJob, PackOptions, pack_to_dir
    from streamproc.prepare.spill import SpillingMaskStage
    from streamproc.run.runner import plan_key

    splits = plan(splits4)
    out = tmp_path / "packed"
    with pytest.raises(KeyboardInterrupt):
        with PackJob(out, PackOptions(seq_len=4096, buffer_size=1), plan_key(splits)) as pack:
            assert not pack.resuming()
            run_jobs(splits, [pack, _StopsAt(2)])  # after the pack job took the second
    masked: list[str] = []

    class Recorded(SpillingMaskStage):  # the real masker, noting the rows it is given
        def fold_batch(self, acc, rows):
            masked.extend(row.id for row, _ in rows)
            return super().fold_batch(acc, rows)

    with ParseJob(tmp_path / "parsed.jsonl") as parse, PackJob(out, PackOptions(seq_len=4096, buffer_size=1), plan_key(splits)) as pack:
        assert pack.resumed_after == 2 and pack.resuming().startswith("resuming: 2 input split(s) and ")
        m = pack.stages[0]
        pack.stages = [Recorded(m.tokenizer, m.options, m.eval_fraction, m.spill_dir)]
        run_jobs(splits, [parse, pack])
        pack.finish()
    assert masked == [json.loads(line)["id"] for p in splits4[2:] for line in Path(p).read_text().splitlines()]
    assert parse.tally.read == 60
    pack_to_dir(splits, tmp_path / "whole", PackOptions(seq_len=4096, buffer_size=1))
    assert digests(out) == digests(tmp_path / "whole")


# ----------------------------------------------------------------------------- interrupts


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < end, f"{path} never appeared"
        time.sleep(0.05)


@pytest.mark.parametrize("sig,code,word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_pack_stops_promptly_on_a_signal_and_resumes_to_the_same_bytes(tmp_path, many, sig, code, word):
    args = ["--seq-len", "4096", "--buffer-size", "20", "--workers", "2"]
    out = tmp_path / "out"
    proc = start("pack", *many, "-o", str(out), *args)
    wait_for(out / "train-00000.arrow", proc)  # a checkpoint was written: the run is mid-way
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == code, err
    assert err.strip().splitlines()[-1] == f"streamproc pack: {word}"
    assert "Traceback" not in err and "BrokenPipeError" not in err
    assert [p.name for p in out.iterdir() if p.name.endswith(".tmp")] == []
    assert (out / "progress.json").exists() and not (out / "manifest.json").exists()

    resumed = streamproc("pack", *many, "-o", str(out), *args)
    assert resumed.returncode == 0 and "resuming:" in resumed.stderr, resumed.stderr
    assert streamproc("pack", *many, "-o", str(tmp_path / "whole"), *args).returncode == 0
    assert digests(out) == digests(tmp_path / "whole")


def test_stats_with_tokenizer_and_workers_stops_on_ctrl_c_without_a_traceback(tmp_path, many):
    # The sample eight times over: counting tokens in it takes far longer than the 2 s waited.
    proc = start("stats", *many * 8, "--tokenizer", "--workers", "2", "--json", str(tmp_path / "s.json"))
    time.sleep(2)  # workers are starting or counting
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert not (tmp_path / "s.json").exists()


def test_a_second_pack_into_a_directory_in_use_is_refused(tmp_path, splits4):
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / ".pack.lock").write_text(f"{holder.pid}\n")
        p = streamproc("pack", *splits4, "-o", str(out), "--seq-len", "4096")
        assert p.returncode == 2
        assert f"another run (pid {holder.pid}) is writing here" in p.stderr
        assert sorted(x.name for x in out.iterdir()) == [".pack.lock"]
    finally:
        holder.kill()
        holder.wait()
    # The holder is gone: its lock is stale and is taken over.
    p = streamproc("pack", *splits4, "-o", str(out), "--seq-len", "4096")
    assert p.returncode == 0, p.stderr
    assert (out / "manifest.json").exists() and not (out / ".pack.lock").exists()


def test_a_killed_writers_temporary_file_is_removed_by_the_next_run(tmp_path):
    out = tmp_path / "p.jsonl"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = [tmp_path / f".p.jsonl.{dead.pid}.x1y2.tmp", tmp_path / ".p.jsonl.abc123.tmp"]
    for s in stale:
        s.write_text("half")
    other = tmp_path / ".q.jsonl.1.tmp"  # another output's: not ours to remove
    other.write_text("x")
    p = streamproc("parse", "-o", str(out), "--workers", "1")
    assert p.returncode == 0, p.stderr
    assert not any(s.exists() for s in stale) and other.exists()


# ----------------------------------------------------------------------------- bad rows and outputs


def deep(n: int) -> str:
    return '{"a": ' * n + "1" + "}" * n


@pytest.fixture
def with_deep_row(tmp_path, splits4) -> list[str]:
    call = '<tool_call>\n{"name": "f", "arguments": ' + deep(300) + "}\n</tool_call>"
    row = {"id": "deep", "conversations": [{"from": "human", "value": "go"}, {"from": "gpt", "value": call}]}
    bad = tmp_path / "deep.jsonl"
    bad.write_bytes(orjson.dumps(row) + b"\n")
    return [splits4[0], str(bad), splits4[1]]


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_a_call_too_deep_for_a_record_is_written_with_its_body_as_text(tmp_path, with_deep_row, workers, suffix):
    out = tmp_path / f"p{suffix}"
    p = streamproc("parse", *with_deep_row, "-o", str(out), "--workers", workers, "--on-error", "fail")
    assert p.returncode == 0, p.stderr
    assert "31 rows read, 31 parsed, 0 rejected" in p.stderr
    records = pq.read_table(out).to_pylist() if suffix == ".parquet" else [json.loads(x) for x in out.read_bytes().splitlines()]
    (deep_record,) = [r for r in records if r["id"] == "deep"]
    (call,) = deep_record["turns"][1]["tool_calls"]
    assert call["name"] == "f" and not call["valid"] and "nested deeper than" in call["error"]
    assert call["raw"] == '\n{"name": "f", "arguments": ' + deep(300) + "}\n"
    assert records.index(deep_record) == 15  # in input order, between the two sample splits


@pytest.mark.parametrize(
    "args,why",
    [
        (["parse", "-o", "{dir}/d.jsonl"], "is a directory, not a file"),
        (["stats", "--json", "{file}/s.json"], "is a file, not a directory"),
        (["stats", "--report", "{file}"], "is a file, not a directory"),
        (["pack", "-o", "{file}/out"], "is a file, not a directory"),
        (["run", "-o", "{file}"], "is a file, not a directory"),
        (["export", "-o", "{file}/sub/e.jsonl"], "is a file, not a directory"),
        (["parse", "-o", "{dir}/p.jsonl", "--rejects", "{dir}"], "is a directory, not a file"),
    ],
)
def test_an_unusable_output_path_is_named_before_any_work(tmp_path, args, why):
    f = tmp_path / "a-file"
    f.write_text("mine")
    (tmp_path / "d.jsonl").mkdir()
    args = [a.format(dir=tmp_path, file=f) for a in args]
    p = streamproc(*args, "--workers", "1")
    assert p.returncode == 2, p.stderr
    assert p.stderr.count("\n") == 1 and why in p.stderr and "Traceback" not in p.stderr
    assert p.stdout == ""  # nothing computed: no summary printed
    assert f.read_text() == "mine"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_directory_is_named_before_any_work(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    p = streamproc("stats", "--json", str(ro / "s.json"), "--workers", "1")
    assert p.returncode == 2 and "is not writable" in p.stderr and p.stdout == ""


def test_plain_stats_writes_no_rejects_into_the_working_directory(tmp_path, with_deep_row):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1}\nnot json\n')
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    p = streamproc("stats", with_deep_row[0], str(bad), "--workers", "1", cwd=cwd)
    assert p.returncode == 0, p.stderr
    assert list(cwd.iterdir()) == []
    assert "2 rejected (first: " in p.stderr and "--rejects FILE keeps them all" in p.stderr
    p = streamproc("stats", with_deep_row[0], str(bad), "--workers", "1", "--rejects", "r.jsonl", cwd=cwd)
    assert len((cwd / "r.jsonl").read_text().splitlines()) == 2


def test_pack_on_error_fail_leaves_nothing_that_looks_like_a_run(tmp_path, splits4):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    out = tmp_path / "out"
    p = streamproc("pack", *splits4, str(bad), "-o", str(out), "--seq-len", "4096", "--buffer-size", "10", "--on-error", "fail")
    assert p.returncode == 2 and "broken JSON line" in p.stderr, p.stderr
    assert list(out.iterdir()) == []


def test_tally_lives_with_the_records():
    t = Tally(3, 2)
    assert t.summary() == "3 rows read, 2 parsed, 0 rejected"


def test_a_trace_too_deep_for_a_record_is_in_the_report(tmp_path, with_deep_row):
    p = streamproc("stats", *with_deep_row, "--report", str(tmp_path / "rep"), "--workers", "2")
    assert p.returncode == 0, p.stderr
    assert "31 rows read, 31 parsed, 0 rejected" in p.stderr
    assert not (tmp_path / "rep" / "stats.rejects.jsonl").exists()
    assert json.loads((tmp_path / "rep" / "stats.json").read_text())["quality"]["malformed_calls"] == 1
    assert '"deep"' in (tmp_path / "rep" / "index.html").read_text()


def _dies_on_3(x: int) -> int:
    if x == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return x


class _KillsAt(Stage):
    """Kills its own worker at one row, as the kernel's out-of-memory killer would."""

    name = "kills"
    needs_trace = False

    def __init__(self, row_id: str):
        self.row_id = row_id

    def start(self) -> None:
        return None

    def fold(self, acc, row, trace) -> None:
        if row.id == self.row_id:
            os.kill(os.getpid(), signal.SIGKILL)


def test_a_killed_worker_is_named_with_the_split_it_held(tmp_path):
    assert list(map_ordered(_dies_on_3, [0, 1, 2], 2)) == [0, 1, 2]
    with pytest.raises(WorkerDied, match="killed by SIGKILL") as e:
        list(map_ordered(_dies_on_3, list(range(8)), 2))
    assert e.value.index == 3
    rows = b"".join(b'{"id": "r%d", "conversations": [{"from": "human", "value": "hi"}]}\n' % i for i in range(2000))
    (tmp_path / "in.jsonl").write_bytes(rows)
    splits = plan([tmp_path / "in.jsonl"], shard_bytes=20_000)
    with pytest.raises(WorkerDied) as e:
        list(run(splits, [_KillsAt("r1500")], workers=2))
    where = splits[e.value.index].where()
    assert str(e.value).endswith(f"while reading {where}") and "in.jsonl (bytes " in where


def test_cli_says_which_split_a_killed_worker_held(tmp_path, many):
    psutil = pytest.importorskip("psutil")
    proc = start("stats", *many * 8, "--tokenizer", "--workers", "2", "--json", str(tmp_path / "s.json"))
    deadline = time.monotonic() + 60
    workers: list = []
    while len(workers) < 2 and time.monotonic() < deadline:
        workers = [c for c in psutil.Process(proc.pid).children() if "spawn_main" in " ".join(c.cmdline())]
        time.sleep(0.1)
    time.sleep(2)  # both are counting tokens
    assert len(workers) == 2 and proc.poll() is None
    workers[0].send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    last = err.strip().splitlines()[-1]
    assert proc.returncode == 1 and "Traceback" not in err, err
    assert last.startswith(f"streamproc stats: error: worker {workers[0].pid} was killed by SIGKILL (out of memory?) while reading "), last
    assert ".jsonl (bytes 0-" in last and not (tmp_path / "s.json").exists()


def test_atomic_outputs_leave_nothing_behind_and_get_the_usual_mode(tmp_path):
    from streamproc.io.files import atomic_path

    target = tmp_path / "out.json"
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(f".out.json.{os.getpid()}.")
        tmp.write_bytes(b"{}")
    umask = os.umask(0)
    os.umask(umask)
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"] and (target.stat().st_mode & 0o777) == 0o666 & ~umask
    # A temporary left by a writer that is gone (killed) is removed by the next write.
    (tmp_path / ".out.json.999999999.dead.tmp").write_bytes(b"")
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"[]")
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"] and target.read_bytes() == b"[]"
