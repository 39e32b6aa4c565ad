"""The pack job end to end on real Arrow shards: schema, manifest, determinism, resume, eval split,
added tokens and bad rows. Inputs are rows of the shipped sample, tokenized with the shipped
Qwen2.5 tokenizer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from streamproc.prepare.mask import Masker, MaskOptions, load_tokenizer
from streamproc.prepare.pack import IGNORE
from streamproc.records import row_from_dict
from streamproc.prepare.job import PROGRESS, PackError, PackOptions, is_eval, pack_to_dir
from streamproc.prepare.shards import MANIFEST, SCHEMA, read_shard, read_shards, sha256
from streamproc.io.sources import SAMPLE, plan

SEQ_LEN = 4096
FILES, PER_FILE = 8, 5


def _write_inputs(d: Path, files: int, per_file: int) -> list[Path]:
    rows = pq.read_table(SAMPLE).slice(0, files * per_file).to_pylist()
    d.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(files):
        p = d / f"part-{k:03d}.jsonl"
        p.write_bytes(b"".join(orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE) for r in rows[k * per_file : (k + 1) * per_file]))
        paths.append(p)
    return paths


def _opts(**kw) -> PackOptions:
    # A small buffer and small shards, so the run has several checkpoints and several shards.
    return PackOptions(**{"seq_len": SEQ_LEN, "buffer_size": 12, "shard_rows": 8, "eval_fraction": 0.25, **kw})


def _files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> list[Path]:
    return _write_inputs(tmp_path_factory.mktemp("in"), FILES, PER_FILE)


@pytest.fixture(scope="module")
def packed(inputs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("packed")
    pack_to_dir(plan(inputs), out, _opts(), workers=1)
    return out


def _manifest(d: Path) -> dict:
    return orjson.loads((d / MANIFEST).read_bytes())


def test_shards_are_arrow_files_datasets_reads(packed):
    import datasets

    m = _manifest(packed)
    assert {s["split"] for s in m["shards"]} == {"train", "eval"}
    assert len([s for s in m["shards"] if s["split"] == "train"]) > 1
    for s in m["shards"]:
        ds = datasets.Dataset.from_file(str(packed / s["file"]))
        assert ds.num_rows == s["rows"] > 0
        assert ds.features.arrow_schema.equals(SCHEMA)
        assert read_shard(packed / s["file"]).schema.equals(SCHEMA)
    assert not (packed / PROGRESS).exists()


def test_manifest_hashes_and_counts_match_the_shards(packed):
    m = _manifest(packed)
    for s in m["shards"]:
        assert sha256(packed / s["file"]) == s["sha256"]
    for split in ("train", "eval"):
        t = read_shards(packed, split)
        c = m["counts"][split]
        lens = np.concatenate(t.column("seq_lens").to_numpy(zero_copy_only=False))
        labels = pa.concat_arrays([ch.flatten() for ch in t.column("labels").chunks]).to_numpy()
        assert (c["rows"], c["sequences"], c["tokens"]) == (t.num_rows, len(lens), lens.sum())
        assert c["trainable"] == np.count_nonzero(labels != IGNORE)
        assert c["padding"] == c["rows"] * SEQ_LEN - c["tokens"]
        assert c["packing_efficiency"] == round(c["tokens"] / (c["rows"] * SEQ_LEN), 6)
    assert m["counts"]["rows_read"] == FILES * PER_FILE
    assert m["counts"]["train"]["traces"] + m["counts"]["eval"]["traces"] + m["counts"]["train"]["dropped"] + m["counts"]["eval"]["dropped"] == FILES * PER_FILE
    assert m["tokenizer"]["name"] == "Qwen/Qwen2.5-0.5B-Instruct" and len(m["tokenizer"]["hash"]) == 64
    assert m["seq_len"] == SEQ_LEN and m["options"]["mask"]["max_len"] == SEQ_LEN


def test_rows_hold_exactly_the_masked_sequences(packed, inputs):
    masker = Masker(load_tokenizer(), MaskOptions(max_len=SEQ_LEN))
    expected = Counter()
    for p in inputs:
        for line in p.read_bytes().splitlines():
            for s in masker.mask(row_from_dict(orjson.loads(line))).seqs:
                expected[(s.trace_id, s.input_ids.tobytes(), s.labels.tobytes())] += 1
    got = Counter()
    for split in ("train", "eval"):
        for r in read_shards(packed, split).to_pylist():
            ids, labels = np.array(r["input_ids"], np.int32), np.array(r["labels"], np.int32)
            assert len(ids) == sum(r["seq_lens"]) <= SEQ_LEN
            assert len(r["trace_ids"]) == len(r["seq_lens"])
            assert np.all((labels == IGNORE) | (labels == ids))
            assert r["seq_lens"] == sorted(r["seq_lens"], reverse=True)
            starts = np.concatenate([[0], np.cumsum(r["seq_lens"])])
            for k, tid in enumerate(r["trace_ids"]):
                a, b = starts[k], starts[k + 1]
                got[(tid, ids[a:b].tobytes(), labels[a:b].tobytes())] += 1
    assert got == expected and len(got) >= FILES * PER_FILE


def test_eval_split_is_by_trace_id_and_disjoint(packed):
    ids = {s: set(sum(read_shards(packed, s).column("trace_ids").to_pylist(), [])) for s in ("train", "eval")}
    assert ids["train"] and ids["eval"] and not ids["train"] & ids["eval"]
    assert all(is_eval(t, 0.25) for t in ids["eval"]) and not any(is_eval(t, 0.25) for t in ids["train"])


def test_output_is_identical_for_any_number_of_workers(packed, inputs, tmp_path):
    pack_to_dir(plan(inputs), tmp_path, _opts(), workers=2)
    assert _files(tmp_path) == _files(packed)


def test_shards_hold_the_same_row_tokens_at_any_row_length():
    """By default a shard holds SHARD_TOKENS row tokens (what the parent holds while writing it),
    so longer rows make shards of fewer rows; --shard-rows still decides where given."""
    from streamproc.prepare.job import SHARD_TOKENS

    assert [PackOptions(seq_len=n).shard_rows for n in (8192, 32768)] == [2048, 512]
    assert PackOptions(seq_len=4096, row_len=65536).shard_rows == SHARD_TOKENS // 65536
    assert PackOptions(seq_len=32768, shard_rows=3).shard_rows == 3
    huge = PackOptions(seq_len=SHARD_TOKENS * 2)
    assert huge.shard_rows == 1  # never none
    with pytest.raises(ValueError):
        PackOptions(shard_rows=0)


def test_read_shards_memory_maps(packed):
    before = pa.total_allocated_bytes()
    t = read_shards(packed)
    assert t.num_rows > 0 and pa.total_allocated_bytes() - before < 1 << 16
    with pytest.raises(FileNotFoundError, match="no manifest"):
        read_shards(packed / "missing")


def _progress(out: Path) -> dict:
    try:
        return orjson.loads((out / PROGRESS).read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return {"consumed": 0, "shards": []}


def _kill_when(cmd: list[str], out: Path, ready) -> None:
    """Run `cmd` and SIGKILL it once ready(progress) holds."""
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not ready(_progress(out)) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / MANIFEST).exists(), "the run finished before it could be killed: make the input bigger"


@pytest.mark.parametrize("phase", ["spill", "plan", "gather"])
def test_resume_after_kill_at_each_phase_ends_with_the_same_bytes(tmp_path, phase):
    """SIGKILL while spilling (some input splits spilled, no shard), after the spill (every split
    spilled, nothing planned or written) and while gathering (some shards written): a rerun, with
    2 workers, resumes there and ends with the bytes of an uninterrupted run, spill removed."""
    from streamproc.prepare.job import PackJob
    from streamproc.run.runner import run_jobs

    inputs = _write_inputs(tmp_path / "in", 16, 3)
    whole = tmp_path / "whole"
    pack_to_dir(plan(inputs), whole, _opts(buffer_size=None, shard_rows=1), workers=1)
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "streamproc", "pack", *map(str, inputs), "-o", str(out), "--seq-len", str(SEQ_LEN),
           "--shard-rows", "1", "--eval-fraction", "0.25"]
    if phase == "spill":
        _kill_when([*cmd, "--workers", "1"], out, lambda p: p["consumed"] >= 2)
        done = _progress(out)
        assert 2 <= done["consumed"] < len(inputs) and not done["shards"] and not list(out.glob("*.arrow"))
    elif phase == "plan":
        # What a kill between the last spill checkpoint and the first shard leaves, made in this
        # process (that moment is too short to hit from outside): every split spilled, no shard.
        splits = plan(inputs)
        with PackJob(out, _opts(buffer_size=None, shard_rows=1), [s.key() for s in splits]) as job:
            run_jobs(splits, [job], workers=1)
        done = _progress(out)
        assert done["consumed"] == len(inputs) and not done["shards"]
    else:
        _kill_when([*cmd, "--workers", "1"], out, lambda p: len(p["shards"]) >= 2)
        done = _progress(out)
        assert done["consumed"] == len(inputs) and len(done["shards"]) >= 2
    assert list((out / "spill").iterdir())
    again = subprocess.run([*cmd, "--workers", "2"], stderr=subprocess.PIPE, text=True, check=True)
    assert f"resuming: {done['consumed']} input split(s) and {len(done['shards'])} output shard(s) already done" in again.stderr
    assert _files(out) == _files(whole) and not (out / "spill").exists()


def test_a_full_disk_while_spilling_is_one_error_and_leaves_no_shard(tmp_path):
    """A file size limit (RLIMIT_FSIZE: writes past it fail with EFBIG, as on a full disk) stops
    the spill: one line naming the spill file and the space needed, exit 2, no shard, no
    manifest, no partial spill file; with the space back, the rerun resumes to the same bytes."""
    import resource

    inputs = _write_inputs(tmp_path / "in", 4, 3)
    whole = tmp_path / "whole"
    pack_to_dir(plan(inputs), whole, _opts(), workers=1)
    out = tmp_path / "full"
    cmd = [sys.executable, "-m", "streamproc", "pack", *map(str, inputs), "-o", str(out), "--seq-len", str(SEQ_LEN),
           "--buffer-size", "12", "--shard-rows", "8", "--eval-fraction", "0.25", "--workers", "2"]

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (48_000, 48_000))

    got = subprocess.run(cmd, stderr=subprocess.PIPE, text=True, preexec_fn=limit)
    lines = [line for line in got.stderr.splitlines() if "error" in line]
    assert got.returncode == 2 and len(lines) == 1, got.stderr
    assert "cannot write the spill file (" in lines[0] and "File too large" in lines[0] and "/spill/" in lines[0] and "twice the shards' size" in lines[0]
    assert "Traceback" not in got.stderr
    assert not list(out.glob("*.arrow")) and not (out / MANIFEST).exists()
    assert not [p for p in (out / "spill").iterdir() if p.name.endswith(".tmp")]
    subprocess.run(cmd, stderr=subprocess.PIPE, check=True)
    assert _files(out) == _files(whole)


def _consumed(out: Path) -> int:
    p = out / PROGRESS
    return orjson.loads(p.read_bytes())["consumed"] if p.exists() else 0


def test_other_options_refuse_to_resume(inputs, tmp_path):
    (tmp_path / PROGRESS).write_bytes(orjson.dumps({"fingerprint": "0" * 64, "consumed": 1, "read": 5, "parsed": 5, "rejected": [], "counts": {}, "shards": []}))
    with pytest.raises(PackError, match="--restart"):
        pack_to_dir(plan(inputs[:1]), tmp_path, _opts())
    res = pack_to_dir(plan(inputs[:1]), tmp_path, _opts(), restart=True)
    assert res.resumed_after == 0 and res.tally.read == PER_FILE


def test_add_tokens_extends_the_tokenizer_beside_the_shards(inputs, tmp_path):
    base = load_tokenizer()
    assert "<think>" not in base.get_vocab()
    res = pack_to_dir(plan(inputs[:1]), tmp_path, _opts(add_tokens=("<think>", "</think>", "<|im_end|>")))
    tok = res.manifest["tokenizer"]
    assert tok["added_tokens"] == ["<think>", "</think>"] and tok["dir"] == "tokenizer"
    extended = load_tokenizer(tmp_path / "tokenizer")
    think = extended.convert_tokens_to_ids("<think>")
    assert think >= len(base) and tok["vocab_size"] == len(extended) == len(base) + 2
    assert extended.encode("<think>\nhi", add_special_tokens=False)[0] == think
    ids = np.concatenate(read_shards(tmp_path).column("input_ids").to_numpy(zero_copy_only=False))
    assert np.count_nonzero(ids == think) > 0


def test_bad_rows_are_counted_and_set_aside(inputs, tmp_path):
    bad = tmp_path / "bad.jsonl"
    lines = inputs[0].read_bytes().splitlines()
    bad.write_bytes(b"\n".join([lines[0], b"{not json", b'{"id": "x", "conversations": 3}', *lines[1:]]) + b"\n")
    res = pack_to_dir(plan([bad]), tmp_path / "out", _opts())
    assert res.tally.read == PER_FILE + 2 and len(res.tally.rejected) == 2
    assert res.manifest["counts"]["rows_rejected"] == 2
    assert "conversations" in str(res.tally.rejected[1]) and "bad.jsonl:row 2" in str(res.tally.rejected[1])
    with pytest.raises(Exception, match="broken JSON"):
        pack_to_dir(plan([bad]), tmp_path / "fail", _opts(), on_error="fail")
