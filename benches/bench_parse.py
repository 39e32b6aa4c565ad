"""Parse throughput: streamproc's parser, the guide's regex + json.loads parser and a bare
str.find scan of the tags, on the same turns in the same run (real traces and the synthetic
sample). Compare the means within a group; extra_info holds MB/s of assistant + tool turn text.
Runs are timed in CPU time of the thread, as `streamproc bench` does (see
streamproc/benchmarks/parse.py: wall time on a loaded machine favours the shortest contender).

    python3 -m pytest benches/bench_parse.py --benchmark-only --benchmark-group-by=group

`streamproc bench --section parse [INPUT...]` prints the same figures as a table.
"""

from __future__ import annotations

import time

import pytest

from streamproc.benchmarks.parse import guide_all, parse_all, scan_all

CONTENDERS = {"streamproc": parse_all, "guide": guide_all, "scan": scan_all}


def run(benchmark, turns, contender: str) -> None:
    benchmark.extra_info["MB"] = mb = sum(len(v.encode()) for _, v in turns) / 1e6
    benchmark.pedantic(CONTENDERS[contender], args=(turns,), rounds=7, warmup_rounds=1)
    if benchmark.stats:  # None under --benchmark-disable
        benchmark.extra_info["MB/s"] = mb / benchmark.stats.stats.min


@pytest.mark.parametrize("contender", CONTENDERS)
@pytest.mark.benchmark(group="parse: real traces", timer=time.thread_time)
def test_parse_real(benchmark, real_turns, contender):
    run(benchmark, real_turns, contender)


@pytest.mark.parametrize("contender", CONTENDERS)
@pytest.mark.benchmark(group="parse: synthetic sample", timer=time.thread_time)
def test_parse_sample(benchmark, sample_turns, contender):
    run(benchmark, sample_turns, contender)
