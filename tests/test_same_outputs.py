"""Every command's output on the built-in sample, pinned as sha256 digests.

The digests were computed on the code before the stage runner replaced the per-command loops;
they must not move for 1 or 2 workers. The sample is one input split (it is smaller than a
split), so it is also written as three JSONL files plus itself: four splits, which 2 workers
share out of order. A change that alters an output on purpose updates the digest here, saying why.

Re-pinned once since: shard format 2 (shared-prefix packing) adds a `prefix_len` column and new
manifest counts; the shards' other columns were checked equal to format 1's, column by column.
The three stats.json digests moved once more for one rename: the key `guide_heuristic` is now
`error_substring_check` (the files were checked equal with the old key name put back).
Re-pinned for issue #26: `--overflow split` makes samples that keep the system prompt, the task
and the most recent turns that fit (no more windows that start with a tool result), and the
manifest counts turns trained, shortened and not trained; only the pack outputs moved.
And once more: packing spills and packs every sequence at once by default (`buffer_size`
null in the manifest's options, was 100000): `run`'s manifest moved, its shards did not, and
`pack --buffer-size 200` is byte-identical to the buffered packer.
And once more, `run`'s manifest only: a shard holds 16M row tokens by default, so its options
say `shard_rows` 4096 at seq-len 4096 (was 2048); the sample's one shard did not move.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import orjson
import pyarrow.parquet as pq
import pytest

from streamproc.cli import main
from streamproc.io.sources import SAMPLE


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def packed_digests(out: Path) -> dict[str, str]:
    return {p.name: digest(p) for p in sorted(out.iterdir()) if p.suffix in (".arrow", ".json")}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> list[str]:
    d = tmp_path_factory.mktemp("in")
    pf = pq.ParquetFile(SAMPLE)
    for g in range(pf.metadata.num_row_groups):
        rows = pf.read_row_group(g).to_pylist()
        (d / f"part{g}.jsonl").write_bytes(b"".join(orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE) for r in rows))
    return [str(d / f"part{g}.jsonl") for g in range(pf.metadata.num_row_groups)] + [str(SAMPLE)]


def outputs(tmp: Path, inputs: list[str], workers: int) -> dict[str, object]:
    w = ["--workers", str(workers)]
    got: dict[str, object] = {}
    assert main(["parse", *inputs, "-o", str(tmp / "p.jsonl"), *w]) == 0
    assert main(["parse", *inputs, "-o", str(tmp / "p.parquet"), *w]) == 0
    assert main(["stats", *inputs, "--json", str(tmp / "s.json"), "--report", str(tmp / "rep"), *w]) == 0
    assert main(["export", *inputs, "-o", str(tmp / "e.jsonl"), *w]) == 0
    assert main(["export", *inputs, "-o", str(tmp / "pairs.parquet"), "--format", "pairs", *w]) == 0
    for name in ("p.jsonl", "p.parquet", "s.json", "rep/stats.json", "e.jsonl", "pairs.parquet"):
        got[name] = digest(tmp / name)
    assert main(["pack", *inputs, "-o", str(tmp / "packed"), "--seq-len", "4096", "--buffer-size", "200", "--shard-rows", "64", *w]) == 0
    got["packed"] = packed_digests(tmp / "packed")
    assert main(["run", "-o", str(tmp / "run"), "--seq-len", "4096", *w]) == 0
    got["run"] = {
        "parsed.jsonl": digest(tmp / "run" / "parsed.jsonl"),
        "report/stats.json": digest(tmp / "run" / "report" / "stats.json"),
        **packed_digests(tmp / "run" / "packed"),
    }
    return got


PINNED = json.loads((Path(__file__).parent / "data" / "same_outputs.json").read_text())


@pytest.mark.parametrize("workers", [1, 2])
def test_outputs_match_the_pinned_digests(tmp_path, inputs, workers):
    assert outputs(tmp_path, inputs, workers) == PINNED
