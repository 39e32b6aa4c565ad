"""Masking throughput: the contenders of `streamproc bench --section mask`
(streamproc/benchmarks/mask.py: `Masker.mask_many`, the per-message recipe, a bare
`encode_batch` of the same rendered text) on the same rows, from the real trajectories
(../shared) and the built-in sample.

    python3 -m pytest benches/bench_mask.py --benchmark-only --benchmark-group-by=group

Within a group the ratio of the means is the speed-up; extra_info holds tokens/s, counted as the
exact tokens of the rows (what Masker writes) for every contender. Targets: >= 3x the recipe,
>= 1x bare encode_batch. The masker starts each round with an empty piece cache.
"""

from __future__ import annotations

import pytest

from streamproc.benchmarks import context
from streamproc.benchmarks.mask import BARE, GUIDE, OURS, contenders, timed_rows
from streamproc.prepare.mask import Masker


@pytest.fixture(scope="module")
def masker():
    return Masker(None)


@pytest.fixture(scope="module", params=["real", "sample"])
def timed(request, masker):
    ctx = context(request.getfixturevalue("real_files") if request.param == "real" else ())
    return request.param, *contenders(timed_rows(ctx), masker)


@pytest.mark.parametrize("who", [GUIDE, BARE, OURS])
def test_mask_throughput(benchmark, timed, who):
    data, fns, tokens = timed
    benchmark.group = f"mask tokens/s, {data}"
    benchmark.pedantic(fns[who], rounds=3, warmup_rounds=0)
    if benchmark.stats:  # None under --benchmark-disable
        benchmark.extra_info.update(tokens=tokens, tokens_per_s=tokens / benchmark.stats.stats.mean)
