"""Masking throughput against the guide's Step 7 per-message recipe and a bare `encode_batch` of
the same rendered text, on the real trajectories (../shared) and the built-in sample.

    python3 -m pytest benches/bench_mask.py --benchmark-only --benchmark-group-by=group

Within a group the ratio of the means is the speed-up; extra_info holds tokens/s, counted as the
exact tokens of the rows (what Masker writes) for every contender. Targets: >= 3x the guide,
>= 1x bare encode_batch. The masker starts each round with an empty piece cache.
"""

from __future__ import annotations

import pytest

from streamproc.benchmarks.mask import BARE, GUIDE, OURS, contenders
from streamproc.mask import Masker
from streamproc.records import Row
from streamproc.sources import SAMPLE, iter_rows


@pytest.fixture(scope="module")
def masker():
    return Masker(None)


@pytest.fixture(scope="module", params=["real", "sample"])
def timed(request, masker):
    files = request.getfixturevalue("real_files") if request.param == "real" else [SAMPLE]
    rows = [r for r in iter_rows(files) if isinstance(r, Row)][:150]
    return request.param, *contenders(rows, masker)


@pytest.mark.parametrize("who", [GUIDE, BARE, OURS])
def test_mask_throughput(benchmark, timed, who):
    data, fns, tokens = timed
    benchmark.group = f"mask tokens/s, {data}"
    benchmark.pedantic(fns[who], rounds=3, warmup_rounds=0)
    benchmark.extra_info.update(tokens=tokens, tokens_per_s=tokens / benchmark.stats.stats.mean)
