"""Agent-behaviour metrics as a mergeable aggregate.

Each worker folds one input split into `Stats` (counters and fixed-bin histograms, never lists of raw
values), the parent merges them in plan order: memory stays bounded as the input grows, and the
result is the same for any number of workers. Every figure is kept per `source`, so configs can
be compared side by side; `Stats.total()` merges the sources.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import Counter
from dataclasses import dataclass, field, fields
from typing import Any, Iterable, Sequence

import numpy as np

from streamproc.analyze.facts import trace_facts
from streamproc.records import Row, Tally, Trace
from streamproc.run.runner import Engine, Gather, Stage, run_jobs
from streamproc.io.sources import Split

# Small integer quantities (turns, calls): one bin per value up to 1023, then one overflow bin,
# so their percentiles are exact below 1024.
COUNT_EDGES: tuple[int, ...] = tuple(range(1025))
# Lengths in characters or tokens: one bin per value below 40, then 40 log-spaced bins per decade
# up to 10^8, so a percentile is exact below 40 and otherwise within one bin (about 6%) of the
# true value. (Rounded log edges alone skip integers from 22 up, so the first 40 are spelled out.)
LENGTH_EDGES: tuple[int, ...] = tuple(range(40)) + tuple(sorted({e for i in range(8 * 40 + 1) if (e := round(10 ** (i / 40))) >= 40}))
POSITION_CAP = 32  # tool usage by assistant-turn number: turns past this share the last bucket


@dataclass(slots=True)
class Hist:
    """Fixed-bin histogram: bin i holds edges[i] <= v < edges[i+1]; the last bin is open."""

    edges: tuple[int, ...]
    counts: np.ndarray = None  # type: ignore[assignment]
    total: int = 0  # sum of the values, for an exact mean
    max: int = 0

    def __post_init__(self) -> None:
        if self.counts is None:
            self.counts = np.zeros(len(self.edges), dtype=np.int64)

    def add(self, v: int) -> None:
        self.counts[bisect_right(self.edges, v) - 1] += 1
        self.total += v
        if v > self.max:
            self.max = v

    def merge(self, other: "Hist") -> None:
        if other.edges is not self.edges and other.edges != self.edges:
            raise ValueError("cannot merge histograms with different bins")
        self.counts += other.counts
        self.total += other.total
        self.max = max(self.max, other.max)

    @property
    def n(self) -> int:
        return int(self.counts.sum())

    def mean(self) -> float:
        n = self.n
        return self.total / n if n else 0.0

    def percentile(self, q: float) -> float:
        """Nearest-rank percentile, interpolated inside a bin wider than one unit."""
        n = self.n
        if not n:
            return 0.0
        rank = max(1, math.ceil(q / 100 * n))
        cum = np.cumsum(self.counts)
        i = int(np.searchsorted(cum, rank))
        lo = self.edges[i]
        hi = self.edges[i + 1] if i + 1 < len(self.edges) else self.max + 1
        hi = min(hi, self.max + 1)
        if hi - lo <= 1:
            return float(lo)
        before = cum[i - 1] if i else 0
        return min(float(self.max), lo + (hi - lo) * (rank - before) / self.counts[i])

    def nonzero(self) -> list[tuple[int, int, int]]:
        """(low, high, count) for each non-empty bin; high of the last bin is max + 1."""
        out = []
        for i in np.flatnonzero(self.counts):
            hi = self.edges[i + 1] if i + 1 < len(self.edges) else self.max + 1
            out.append((self.edges[i], hi, int(self.counts[i])))
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "count": self.n,
            "sum": self.total,
            "mean": round(self.mean(), 3),
            "p50": self.percentile(50),
            "p90": self.percentile(90),
            "p99": self.percentile(99),
            "max": self.max,
            "bins": self.nonzero(),
        }


def _count_hist() -> Hist:
    return Hist(COUNT_EDGES)


def _length_hist() -> Hist:
    return Hist(LENGTH_EDGES)


@dataclass(slots=True)
class Counts:
    """Every metric of one source. Fields are ints, Counters or Hists, so merging is generic."""

    traces: int = 0
    turns: int = 0
    assistant_turns: int = 0
    tool_calls: int = 0
    tool_responses: int = 0
    turns_per_trace: Hist = field(default_factory=_count_hist)
    assistant_turns_per_trace: Hist = field(default_factory=_count_hist)
    calls_per_trace: Hist = field(default_factory=_count_hist)
    tool_counts: Counter = field(default_factory=Counter)  # name -> calls
    parallel_widths: Counter = field(default_factory=Counter)  # calls in one assistant turn -> turns
    calls_by_position: Counter = field(default_factory=Counter)  # (name, assistant turn number) -> calls
    categories: Counter = field(default_factory=Counter)
    subcategories: Counter = field(default_factory=Counter)  # (category, subcategory) -> traces
    tools_by_category: Counter = field(default_factory=Counter)  # (category, name) -> calls
    responses_by_tool: Counter = field(default_factory=Counter)  # name -> responses
    errors_by_tool: Counter = field(default_factory=Counter)  # name -> failed responses
    error_classes: Counter = field(default_factory=Counter)  # outcomes class -> responses
    traces_with_errors: int = 0
    substring_flagged_responses: int = 0  # responses a naive `"error" in text` check flags (outcomes.flagged_by_substring)
    substring_flagged_traces: int = 0
    think_blocks: int = 0
    empty_think_blocks: int = 0
    reasoning_chars_per_turn: Hist = field(default_factory=_length_hist)
    reasoning_chars_per_trace: Hist = field(default_factory=_length_hist)
    reasoning_tokens_per_turn: Hist = field(default_factory=_length_hist)
    reasoning_tokens_per_trace: Hist = field(default_factory=_length_hist)
    output_chars: Counter = field(default_factory=Counter)  # reasoning / tool_calls / answer -> chars
    output_tokens: Counter = field(default_factory=Counter)
    quality: Counter = field(default_factory=Counter)  # problem -> occurrences

    def merge(self, other: "Counts") -> None:
        for f in fields(self):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            if isinstance(mine, int):
                setattr(self, f.name, mine + theirs)
            else:  # Counter.update adds; Hist.merge adds bins
                (mine.update if isinstance(mine, Counter) else mine.merge)(theirs)


@dataclass(slots=True)
class Stats:
    by_source: dict[str, Counts] = field(default_factory=dict)
    tokenizer: str | None = None  # what reasoning tokens were counted with, if any

    def source(self, name: str) -> Counts:
        c = self.by_source.get(name)
        if c is None:
            c = self.by_source[name] = Counts()
        return c

    def merge(self, other: "Stats") -> None:
        for name, c in other.by_source.items():
            self.source(name).merge(c)

    def total(self) -> Counts:
        out = Counts()
        for name in sorted(self.by_source):
            out.merge(self.by_source[name])
        return out

    def to_json(self) -> dict[str, Any]:
        """The `--json` document: the totals, then `by_source` with the same keys per source."""
        return {
            **counts_to_json(self.total()),
            "tokenizer": self.tokenizer,
            "by_source": {name: counts_to_json(self.by_source[name]) for name in sorted(self.by_source)},
        }


# ----------------------------------------------------------------------------- one trace


def add_trace(c: Counts, trace: Trace, tokens=None) -> None:
    """Fold one parsed trace into `c`. `tokens`, when given, maps a list of texts to token counts."""
    facts = trace_facts(trace)
    if facts.declared_tools is None:
        c.quality["unreadable_tools"] += 1
    c.traces += 1
    c.turns += facts.messages
    c.turns_per_trace.add(facts.messages)
    c.categories[trace.category] += 1
    c.subcategories[(trace.category, trace.subcategory)] += 1
    assistant = facts.assistant()
    c.assistant_turns += len(assistant)
    c.assistant_turns_per_trace.add(len(assistant))
    for turn in assistant:
        if turn.calls:
            c.parallel_widths[turn.calls] += 1
        c.reasoning_chars_per_turn.add(turn.reasoning_chars)
        c.think_blocks += turn.think_blocks
        c.empty_think_blocks += turn.empty_think_blocks
        c.output_chars["reasoning"] += turn.reasoning_chars
        c.output_chars["tool_calls"] += turn.call_chars
        c.output_chars["answer"] += turn.answer_chars
    for call in facts.calls:
        c.tool_counts[call.tool] += 1
        c.calls_by_position[(call.tool, min(call.turn, POSITION_CAP))] += 1
        c.tools_by_category[(trace.category, call.tool)] += 1
        if not call.valid:
            c.quality["malformed_calls"] += 1
        if not call.answered:
            c.quality["calls_without_response"] += 1
        for problem in call.problems:
            c.quality[problem] += 1
    c.tool_calls += len(facts.calls)
    c.calls_per_trace.add(len(facts.calls))
    c.reasoning_chars_per_trace.add(sum(t.reasoning_chars for t in assistant))
    if tokens is not None and assistant:
        _add_tokens(c, [t for t in trace.turns if t.role == "assistant"], tokens)
    failed = flagged = False
    for resp in facts.responses:
        c.tool_responses += 1
        if not resp.paired:
            c.quality["responses_without_call"] += 1
        if not resp.readable:
            c.quality["malformed_responses"] += 1
        c.responses_by_tool[resp.tool] += 1
        if resp.failure is not None:
            c.error_classes[resp.failure] += 1
            c.errors_by_tool[resp.tool] += 1
            failed = True
        if resp.flagged_by_substring:
            c.substring_flagged_responses += 1
            flagged = True
    c.traces_with_errors += failed
    c.substring_flagged_traces += flagged


def _add_tokens(c: Counts, assistant, tokens) -> None:
    texts = []
    for turn in assistant:
        texts += ["\n".join(turn.thoughts), "\n".join(k.raw for k in turn.tool_calls), turn.answer]
    n = tokens(texts)
    per_trace = 0
    for i in range(0, len(n), 3):
        c.reasoning_tokens_per_turn.add(n[i])
        per_trace += n[i]
        c.output_tokens["reasoning"] += n[i]
        c.output_tokens["tool_calls"] += n[i + 1]
        c.output_tokens["answer"] += n[i + 2]
    c.reasoning_tokens_per_trace.add(per_trace)


# ----------------------------------------------------------------------------- stage and job


class StatsStage(Stage):
    """A split's Stats. `tokenizer` (see token_counter) adds reasoning lengths in tokens; each
    worker loads it once, itself."""

    name = "metrics"

    def __init__(self, tokenizer: str | None = None):
        self.tokenizer = tokenizer

    def start(self) -> Stats:
        return Stats(tokenizer=self.tokenizer)

    def fold(self, acc: Stats, row: Row, trace: Trace | None) -> None:
        add_trace(acc.source(row.source), trace, token_counter(self.tokenizer) if self.tokenizer else None)


def merge(partials: Iterable[Stats], tokenizer: str | None = None) -> Stats:
    """Merge partial Stats in the order given (the input order, for a reproducible JSON)."""
    stats = Stats(tokenizer=tokenizer)
    for part in partials:
        stats.merge(part)
    return stats


def collect(
    splits: Sequence[Split], workers: int | Engine = 1, on_error: str = "skip", tokenizer: str | None = None
) -> tuple[Stats, Tally]:
    """Aggregate every row of `splits` in `workers` processes. `tokenizer` (see token_counter)
    adds reasoning lengths in tokens."""
    job = Gather(StatsStage(tokenizer))
    run_jobs(splits, [job], workers=workers, on_error=on_error, progress="stats")
    return merge(job.partials, tokenizer), job.tally


def token_counter(spec: str):
    """A function texts -> token counts (no special tokens), over the process's cached tokenizer.
    `spec` is what load_tokenizer takes: `default` (the shipped Qwen2.5 one), a directory or a name."""
    from streamproc.prepare.tokenizer import cached_tokenizer

    tok = cached_tokenizer(spec).backend_tokenizer

    def count(texts: list[str]) -> list[int]:
        return [len(e.ids) for e in tok.encode_batch(texts, add_special_tokens=False)]

    return count


# ----------------------------------------------------------------------------- JSON


def _ranked(counter: Counter) -> dict:
    """Most common first; ties by key, so output does not depend on merge order."""
    return {k: v for k, v in sorted(counter.items(), key=lambda kv: (-kv[1], str(kv[0])))}


def _nested(counter: Counter) -> dict[str, dict]:
    out: dict[str, Counter] = {}
    for (outer, inner), n in counter.items():
        out.setdefault(outer, Counter())[inner] += n
    return {k: _ranked(out[k]) for k in sorted(out, key=lambda k: (-sum(out[k].values()), k))}


def _share(counter: Counter) -> dict[str, float]:
    total = sum(counter.values())
    return {k: round(counter[k] / total, 4) if total else 0.0 for k in ("reasoning", "tool_calls", "answer")}


def counts_to_json(c: Counts) -> dict[str, Any]:
    """One source's (or the total's) figures; every key is documented in docs/stats.md."""
    by_position = {
        name: {str(p): n for p, n in sorted(pos.items())} for name, pos in _nested(c.calls_by_position).items()
    }
    return {
        "traces": c.traces,
        "turns": c.turns,
        "tool_calls": c.tool_calls,
        "tool_counts": _ranked(c.tool_counts),
        "parallel_widths": {str(w): c.parallel_widths[w] for w in sorted(c.parallel_widths)},
        "traces_with_errors": c.traces_with_errors,
        "categories": _ranked(c.categories),
        "assistant_turns": c.assistant_turns,
        "tool_responses": c.tool_responses,
        "turns_per_trace": c.turns_per_trace.to_json(),
        "assistant_turns_per_trace": c.assistant_turns_per_trace.to_json(),
        "calls_per_trace": c.calls_per_trace.to_json(),
        "subcategories": _nested(c.subcategories),
        "tools_by_category": _nested(c.tools_by_category),
        "calls_by_position": by_position,
        "tool_errors": sum(c.error_classes.values()),
        "error_classes": _ranked(c.error_classes),
        "error_rate_by_tool": {
            name: {"responses": n, "errors": c.errors_by_tool[name], "rate": round(c.errors_by_tool[name] / n, 4)}
            for name, n in _ranked(c.responses_by_tool).items()
        },
        "error_substring_check": {"responses_flagged": c.substring_flagged_responses, "traces_flagged": c.substring_flagged_traces},
        "think_blocks": c.think_blocks,
        "empty_think_blocks": c.empty_think_blocks,
        "reasoning_chars_per_turn": c.reasoning_chars_per_turn.to_json(),
        "reasoning_chars_per_trace": c.reasoning_chars_per_trace.to_json(),
        "reasoning_tokens_per_turn": c.reasoning_tokens_per_turn.to_json() if c.reasoning_tokens_per_turn.n else None,
        "reasoning_tokens_per_trace": c.reasoning_tokens_per_trace.to_json() if c.reasoning_tokens_per_trace.n else None,
        "output_chars": dict(c.output_chars),
        "output_share_chars": _share(c.output_chars),
        "output_tokens": dict(c.output_tokens) if c.output_tokens else None,
        "output_share_tokens": _share(c.output_tokens) if c.output_tokens else None,
        "quality": _ranked(c.quality),
    }
