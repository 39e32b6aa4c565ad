"""Parse throughput: the contenders of `streamproc bench --section parse`
(streamproc/benchmarks/parse.py: streamproc's parser, a regex + json.loads parser, a bare
str.find scan of the tags) on the same turns in the same run (real traces and the synthetic
sample). Compare the means within a group; extra_info holds MB/s of assistant + tool turn text.
Runs are timed in CPU time of the thread, as `streamproc bench` does (wall time on a loaded
machine favours the shortest contender).

    python3 -m pytest benches/bench_parse.py --benchmark-only --benchmark-group-by=group
"""

from __future__ import annotations

import time

import pytest

from streamproc.benchmarks.parse import GUIDE, OPENAI_ROWS, SCAN, SHAREGPT_ROWS, STREAMPROC, contenders, layout_contenders, layout_lines, text_mb

NAMES = [STREAMPROC, GUIDE, SCAN]


def run(benchmark, turns, contender: str) -> None:
    benchmark.extra_info["MB"] = mb = text_mb(turns)
    benchmark.pedantic(contenders(turns)[contender], rounds=7, warmup_rounds=1)
    if benchmark.stats:  # None under --benchmark-disable
        benchmark.extra_info["MB/s"] = mb / benchmark.stats.stats.min


@pytest.mark.parametrize("contender", NAMES)
@pytest.mark.benchmark(group="parse: real traces", timer=time.thread_time)
def test_parse_real(benchmark, real_turns, contender):
    run(benchmark, real_turns, contender)


@pytest.mark.parametrize("contender", NAMES)
@pytest.mark.benchmark(group="parse: synthetic sample", timer=time.thread_time)
def test_parse_sample(benchmark, sample_turns, contender):
    run(benchmark, sample_turns, contender)


@pytest.mark.parametrize("contender", [SHAREGPT_ROWS, OPENAI_ROWS])
@pytest.mark.benchmark(group="parse: the sample's rows in both layouts", timer=time.thread_time)
def test_parse_layouts(benchmark, sample_rows, contender):
    lines = layout_lines(sample_rows)
    benchmark.pedantic(layout_contenders(*lines)[contender], rounds=7, warmup_rounds=1)
    if benchmark.stats:
        benchmark.extra_info["rows/s"] = len(sample_rows) / benchmark.stats.stats.min
