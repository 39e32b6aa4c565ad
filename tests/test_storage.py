"""Inputs by URI: objects on a real S3 endpoint (moto's server, on this machine) read exactly as
the same files on disk, by the reader every engine uses; `file://` URIs read as local paths."""

from __future__ import annotations

import gzip
import io
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from streamproc.io import synth
from streamproc.records import BadRow
from streamproc.io.sources import SourceError, iter_rows, plan, read

ROWS = list(synth.rows(40, seed=5))


def jsonl(rows) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in rows)


def parquet(rows) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf, row_group_size=3)
    return buf.getvalue()


@pytest.fixture(scope="module")
def both(s3, tmp_path_factory) -> tuple[Path, str]:
    """The same folder on disk and under s3://traces/x: plain JSONL with a broken line, gzip and
    zstd JSONL, Parquet in row groups of 3 (one bad row), and a file of no known type."""
    lines = jsonl(ROWS[:20]).splitlines(keepends=True)
    lines.insert(7, b"{not json\n")
    bad = {"id": "robot", "conversations": [{"from": "robot", "value": "hi"}]}
    files = {
        "a.jsonl": b"".join(lines),
        "b.jsonl.gz": gzip.compress(jsonl(ROWS[20:25])),
        "c.jsonl.zst": zstandard.ZstdCompressor().compress(jsonl(ROWS[25:30])),
        "d.parquet": parquet(ROWS[30:34] + [bad] + ROWS[34:]),
        "notes.txt": b"not data",
    }
    d = tmp_path_factory.mktemp("uri") / "x"
    d.mkdir()
    for name, data in files.items():
        (d / name).write_bytes(data)
        s3(f"x/{name}", data)
    return d, "s3://traces/x"


def _read(inputs, **kw) -> tuple[list[str], list[str]]:
    ids, bad = [], []
    for split in plan(inputs, **kw):
        for item in read(split):
            (bad if isinstance(item, BadRow) else ids).append(str(item) if isinstance(item, BadRow) else item.id)
    return ids, bad


@pytest.mark.parametrize("shard_bytes", [32 << 20, 700])  # whole files; byte ranges and row groups
def test_s3_folder_reads_as_the_folder_on_disk(both, shard_bytes):
    local, uri = both
    on_disk = _read([local], shard_bytes=shard_bytes)
    on_s3 = _read([uri], shard_bytes=shard_bytes)
    assert on_s3[0] == on_disk[0] == [r["id"] for r in ROWS]
    assert [b.replace(uri, "X") for b in on_s3[1]] == [b.replace(str(local), "X") for b in on_disk[1]]
    assert len(on_s3[1]) == 2 and "a.jsonl:row 7" in on_s3[1][0] and "d.parquet:row 4" in on_s3[1][1]
    assert [str(u) for u in plan([uri]).unread] == [f"{uri}/notes.txt (unsupported type)"]
    files = [p.path for s in plan([uri]) for p in s.parts]
    assert files == [p.path for s in plan([uri + "/"]) for p in s.parts] and files[0] == f"{uri}/a.jsonl"
    if shard_bytes < 1000:
        assert len(plan([uri], shard_bytes=shard_bytes)) > 6


def test_s3_errors_name_the_uri(s3):
    with pytest.raises(SourceError, match="s3://traces/nothing: no such file or directory"):
        plan(["s3://traces/nothing"])
    broken = s3("y/broken.parquet", b"PAR1 not really")
    items = list(iter_rows([broken]))
    assert len(items) == 1 and isinstance(items[0], BadRow) and "not a readable Parquet file" in str(items[0])


def test_cli_reads_s3_like_disk(both):
    local, uri = both
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    docs = []
    for where in (str(local), uri):
        res = subprocess.run([sys.executable, "-m", "streamproc", "stats", where, "--json", "-", "--workers", "2"], capture_output=True, env=env, timeout=300)
        assert res.returncode == 0, res.stderr.decode()
        docs.append(orjson.loads(res.stdout))
    assert docs[1] == docs[0] and docs[1]["rows"] == {"read": len(ROWS) + 2, "parsed": len(ROWS), "rejected": 2}


def test_file_uri_is_the_local_path(tmp_path):
    d = tmp_path / "data"
    (d / "sub").mkdir(parents=True)
    (d / "a.jsonl").write_bytes(jsonl(ROWS[:3]))
    (d / "sub" / "loop").symlink_to(d, target_is_directory=True)  # walked once, as for a path
    ids = [r.id for r in iter_rows([f"file://{d}"])]
    assert ids == [r.id for r in iter_rows([d])] == [r["id"] for r in ROWS[:3]]
