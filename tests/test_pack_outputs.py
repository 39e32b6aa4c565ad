"""The pack job's output directory and accounting: it never deletes a user's files, a run that
writes no training data fails saying what would fit, every dropped trace is listed, ids of rows
without one depend on the data, and `train` names a damaged shard."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamproc.cli import main
from streamproc.prepare.job import PackError, PackOptions, pack_to_dir
from streamproc.records import Location, row_from_dict
from streamproc.io.sources import plan

KIMI = "hermes_harness__hermeswith_kimi.jsonl"
SMOL = "smollm2-135m-instruct-gguf"


@pytest.fixture(scope="module")
def kimi(tmp_path_factory, real_dir) -> Path:
    """Five real traces without their ids."""
    d = tmp_path_factory.mktemp("kimi-in")
    rows = [json.loads(line) for line in (real_dir / KIMI).open(encoding="utf-8")][:5]
    with open(d / "in.jsonl", "w", encoding="utf-8") as f:
        for r in rows:
            r.pop("id", None)
            f.write(json.dumps(r) + "\n")
    return d / "in.jsonl"


def pack(inputs, out, models_dir, seq_len=1024, **kw):
    opts = PackOptions(seq_len=seq_len, tokenizer=str(models_dir / SMOL), **kw)
    return pack_to_dir(plan([str(i) for i in inputs]), out, opts)


def test_pack_refuses_a_directory_with_a_users_files(kimi, models_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "train-notes.arrow").write_text("mine")
    (out / ".draft.tmp").write_text("mine too")
    with pytest.raises(PackError, match=r"\.draft\.tmp, train-notes\.arrow"):
        pack([kimi], out, models_dir)
    assert sorted(p.name for p in out.iterdir()) == [".draft.tmp", "train-notes.arrow"]


def test_shard_names_without_a_pack_run_beside_them_are_refused(kimi, models_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "train-00000.arrow").write_text("not ours: no manifest or progress file")
    with pytest.raises(PackError, match="no manifest.json or progress.json"):
        pack([kimi], out, models_dir)
    assert (out / "train-00000.arrow").read_text().startswith("not ours")


def test_a_finished_pack_directory_is_packed_again(kimi, models_dir, tmp_path):
    out = tmp_path / "out"
    pack([kimi], out, models_dir, shard_rows=1)
    first = sorted(p.name for p in out.iterdir())
    pack([kimi], out, models_dir, shard_rows=100)  # fewer shards: the old ones go
    assert len(sorted(p.name for p in out.iterdir())) < len(first)
    assert all(p.name.startswith(("train-", "manifest")) for p in out.iterdir())


def test_nothing_written_fails_saying_what_would_fit(kimi, models_dir, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["pack", str(kimi), "-o", str(out), "--seq-len", "10", "--workers", "1", "--tokenizer", str(models_dir / SMOL)])
    err = capsys.readouterr().err
    assert rc == 1
    assert "no training data written" in err and "shortest system prompt alone is" in err and "Traceback" not in err
    dropped = [orjson.loads(line) for line in (out / "dropped.jsonl").read_bytes().splitlines()]
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(dropped) == manifest["counts"]["rows_dropped"] == 5
    assert all(d["id"].startswith("sha-") and "system prompt" in d["reason"] and d["file"] for d in dropped)


def test_every_row_is_accounted(kimi, models_dir, tmp_path):
    # read = written + dropped (listed) + rejected
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"conversations": 3}\n')
    from streamproc.prepare.mask import MaskOptions

    res = pack([kimi, bad], tmp_path / "out", models_dir, seq_len=400, eval_fraction=0.4, mask=MaskOptions(overflow="drop"))
    c = res.manifest["counts"]
    listed = (tmp_path / "out" / "dropped.jsonl").read_bytes().splitlines()
    assert c["rows_dropped"] == len(listed) == c["train"]["dropped"] + c["eval"]["dropped"] > 0
    assert c["rows_read"] == c["train"]["traces"] + c["eval"]["traces"] + c["rows_dropped"] + c["rows_rejected"]


def test_eval_split_of_rows_without_id_does_not_depend_on_the_path(kimi, models_dir, tmp_path, monkeypatch):
    from streamproc.prepare.shards import read_shards

    monkeypatch.chdir(kimi.parent)
    splits = []
    for k, spelled in enumerate(["in.jsonl", "./in.jsonl", str(kimi)]):
        out = tmp_path / f"o{k}"
        pack([spelled], out, models_dir, eval_fraction=0.5)
        splits.append({s: sorted(read_shards(out, s).column("trace_ids").combine_chunks().flatten().to_pylist()) for s in ("train", "eval")})
    assert splits[0] == splits[1] == splits[2]
    # Each id goes where the hash of the id says (which ids that is depends on the hash alone).
    from streamproc.prepare.job import is_eval

    assert splits[0]["eval"] + splits[0]["train"]
    assert all(is_eval(i, 0.5) for i in splits[0]["eval"]) and not any(is_eval(i, 0.5) for i in splits[0]["train"])


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["system", "human", "gpt", "tool"]), st.text(max_size=30)), min_size=1, max_size=6),
       st.text(min_size=1, max_size=20), st.integers(0, 10**6))
def test_an_id_from_the_content_alone(turns, path, row):
    d = {"conversations": [{"from": f, "value": v} for f, v in turns]}
    a = row_from_dict(d, Location(path, row)).id
    assert a == row_from_dict(d, Location("./" + path, row + 1)).id
    other = {"conversations": d["conversations"] + [{"from": "gpt", "value": "x"}]}
    assert row_from_dict(other, Location(path, row)).id != a


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_train_names_a_damaged_shard(kimi, models_dir, tmp_path, capsys, damage):
    out = tmp_path / "shards"
    pack([kimi], out, models_dir, shard_rows=1)
    shard = sorted(out.glob("train-*.arrow"))[-1]
    data = bytearray(shard.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    rc = main(["train", "--shards", str(out), "--model", str(models_dir / SMOL), "--output", str(tmp_path / "run"), "--init-random"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.count("\n") == 0 and shard.name in err and "damaged" in err


def test_a_manifest_of_another_format_is_refused(kimi, models_dir, tmp_path, capsys):
    from streamproc.prepare.shards import ShardFormatError, read_manifest

    out = tmp_path / "shards"
    pack([kimi], out, models_dir)
    m = json.loads((out / "manifest.json").read_text())
    assert m["format"] == "streamproc-packed/2"
    m["format"] = "streamproc-packed/9"
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ShardFormatError, match="streamproc-packed/9"):
        read_manifest(out)
    rc = main(["train", "--shards", str(out), "--model", str(models_dir / SMOL), "--output", str(tmp_path / "run"), "--init-random"])
    assert rc == 2 and "shard format" in capsys.readouterr().err


def test_version_1_shards_read_as_rows_without_prefix(kimi, models_dir, tmp_path):
    import pyarrow as pa

    from streamproc.prepare.shards import read_shards, sha256

    out = tmp_path / "shards"
    pack([kimi], out, models_dir)
    m = json.loads((out / "manifest.json").read_text())
    for s in m["shards"]:  # rewrite each shard as version 1 wrote it: no prefix_len column
        path = out / s["file"]
        table = pa.ipc.open_stream(pa.py_buffer(path.read_bytes())).read_all().drop(["prefix_len"])
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
            w.write_table(table)
        s["sha256"] = sha256(path)
    m["format"] = "streamproc-packed/1"
    (out / "manifest.json").write_text(json.dumps(m))
    t = read_shards(out)
    assert set(t.column("prefix_len").to_pylist()) == {0}
