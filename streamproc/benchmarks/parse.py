"""Parse throughput: streamproc's parser against the guide's regex + `json.loads` parser and
against a bare `str.find` scan, in MB/s of UTF-8 text of the assistant and tool turns.

Only assistant and tool turns are timed: they hold the tags, and every contender passes system
and human turns through untouched, so their bytes (the 26 KB system prompt of every row) would
only inflate all three figures alike. The three run the same loop over the same list of
(role, text) pairs, so per-turn Python overhead is in all of them.

The same traces are also read in both row layouts, ShareGPT `conversations` and the chat
`messages` layout (io/layouts.py), each written by the project's own writer: rows/s of a whole
row's way, JSON line -> validated Row -> Trace (`sources.decode_line`, `parse_trace`).

Each run is timed in CPU time of the benchmark's thread (`time.thread_time`), round-robin, best
of `repeat`. Wall time is biased on a loaded machine: a run is billed for the time it waits for a
core, and a long run waits more often than a short one, so the slowest contender looks slower
still (with six busy processes on two cores the guide fell from 54 to 19 MB/s in wall time while
streamproc stayed near 205 MB/s: 3.9x became 10.9x). CPU time does not bill the waiting.
"""

from __future__ import annotations

import time
from typing import Callable, Iterable

import orjson

from streamproc._compiled import parser_build
from streamproc.io.layouts import openai_record, sharegpt_record
from streamproc.io.sources import decode_line
from streamproc.parse.parser import CALL_CLOSE, CALL_OPEN, RESP_CLOSE, RESP_OPEN, THINK_CLOSE, THINK_OPEN, parse_trace, parse_turn
from streamproc.records import Location, Row
from streamproc.benchmarks import Context, Result, best_times
from streamproc.benchmarks.guide import parse_assistant_message, parse_tool_message

ASSISTANT_TAGS = (THINK_OPEN, THINK_CLOSE, CALL_OPEN, CALL_CLOSE)
TOOL_TAGS = (RESP_OPEN, RESP_CLOSE)

STREAMPROC = "streamproc parse_turn"
GUIDE = "a regex parser + json.loads"
SCAN = "str.find scan of the tags"
SHAREGPT_ROWS = "ShareGPT layout rows: decode, validate, parse"
OPENAI_ROWS = "OpenAI messages layout rows: decode, validate, parse"
_AT = Location("<bench>", 0)


def tagged_turns(rows: Iterable[Row]) -> list[tuple[str, str]]:
    """The (from, value) pairs of every assistant and tool turn."""
    return [(frm, value) for row in rows for frm, value in row.conversations if frm == "gpt" or frm == "tool"]


def parse_all(turns: list[tuple[str, str]]) -> None:
    for frm, value in turns:
        parse_turn(frm, value)


def guide_all(turns: list[tuple[str, str]]) -> None:
    for frm, value in turns:
        if frm == "gpt":
            parse_assistant_message(value)
        else:
            parse_tool_message(value)


def scan_all(turns: list[tuple[str, str]]) -> None:
    """The least work any tag parser must do: find every occurrence of every tag of the turn's
    role with `str.find`. No JSON decoding, no records."""
    for frm, value in turns:
        find = value.find
        for tag in ASSISTANT_TAGS if frm == "gpt" else TOOL_TAGS:
            i = find(tag)
            while i >= 0:
                i = find(tag, i + 1)


def best_cpu_times(contenders: dict[str, Callable[[], object]], repeat: int) -> dict[str, float]:
    """`best_times` (round-robin, collector paused), billing each run its thread's CPU time."""
    best = dict.fromkeys(contenders, float("inf"))

    def on_cpu(name: str, fn: Callable[[], object]) -> Callable[[], None]:
        def run() -> None:
            t = time.thread_time()
            fn()
            best[name] = min(best[name], time.thread_time() - t)

        return run

    best_times({name: on_cpu(name, fn) for name, fn in contenders.items()}, repeat)
    return best


def contenders(turns: list[tuple[str, str]]) -> dict[str, Callable[[], None]]:
    """The three timed runs over `turns` (a checkout's pytest-benchmark wrapper times the same ones)."""
    return {STREAMPROC: lambda: parse_all(turns), GUIDE: lambda: guide_all(turns), SCAN: lambda: scan_all(turns)}


def text_mb(turns: list[tuple[str, str]]) -> float:
    """MB of UTF-8 text in `turns`: what the rates are per."""
    return sum(len(value.encode()) for _, value in turns) / 1e6


def measure(turns: list[tuple[str, str]], data: str, repeat: int) -> list[Result]:
    mb = text_mb(turns)
    t = best_cpu_times(contenders(turns), repeat)
    data = f"{data}: {len(turns):,} turns, {mb:.1f} MB"
    ours = f"{STREAMPROC} ({parser_build()})"  # the mypyc build, or the Python source
    return [
        Result("parse", GUIDE, mb / t[GUIDE], "MB/s", data),
        Result("parse", SCAN, mb / t[SCAN], "MB/s", data),
        Result("parse", ours, mb / t[STREAMPROC], "MB/s", data, GUIDE, t[GUIDE] / t[STREAMPROC], ">= 5"),
        Result("parse", ours, mb / t[STREAMPROC], "MB/s", data, SCAN, t[SCAN] / t[STREAMPROC], ">= 0.33 (within 3x)"),
    ]


def layout_lines(rows: Iterable[Row]) -> tuple[list[bytes], list[bytes]]:
    """The same traces as JSON lines in the ShareGPT and the OpenAI layout."""
    rows = list(rows)
    return [orjson.dumps(sharegpt_record(r)) for r in rows], [orjson.dumps(openai_record(parse_trace(r))) for r in rows]


def read_lines(lines: list[bytes]) -> None:
    for line in lines:
        parse_trace(decode_line(line, _AT, "bench"))  # type: ignore[arg-type]


def layout_contenders(sharegpt: list[bytes], openai: list[bytes]) -> dict[str, Callable[[], None]]:
    """The two timed row reads (benches/bench_parse.py times the same ones)."""
    return {SHAREGPT_ROWS: lambda: read_lines(sharegpt), OPENAI_ROWS: lambda: read_lines(openai)}


def measure_layouts(rows: list[Row], data: str, repeat: int) -> list[Result]:
    sharegpt, openai = layout_lines(rows)
    t = best_cpu_times(layout_contenders(sharegpt, openai), repeat)
    n = len(rows)
    data = f"{data}: {n:,} rows, {sum(map(len, sharegpt)) / 1e6:.1f} MB as ShareGPT, {sum(map(len, openai)) / 1e6:.1f} MB as OpenAI"
    return [
        Result("parse", SHAREGPT_ROWS, n / t[SHAREGPT_ROWS], "rows/s", data),
        Result("parse", OPENAI_ROWS, n / t[OPENAI_ROWS], "rows/s", data, SHAREGPT_ROWS, t[SHAREGPT_ROWS] / t[OPENAI_ROWS], ">= 1"),
    ]


def run(ctx: Context) -> list[Result]:
    rows = ctx.rows()
    turns = tagged_turns(rows)
    if not turns:
        return [Result("parse", STREAMPROC, 0.0, "MB/s", ctx.label, note="no assistant or tool turns in the input")]
    return measure(turns, ctx.label, ctx.repeat) + measure_layouts(rows, ctx.label, ctx.repeat)
