"""Find traces from the command line: list them with the trace browser's filters, and look one
up by id, by a unique id prefix, or by position.

`summarize` and `Filters.match` are pure; `list_traces` and `lookup` read input splits in worker processes (jobs on the runner).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from streamproc.parse.parser import parse_trace
from streamproc.records import BadRow, Location, Row, Trace
from streamproc.analyze.facts import trace_facts
from streamproc.views.render import shorten
from streamproc.run.runner import Engine, Job, Stage, run_jobs
from streamproc.io.sources import Split

MIN_PREFIX = 8  # listed ids are shortened to a unique prefix of at least this many characters
AMBIGUOUS_SHOWN = 10  # ids named when a prefix matches several


@dataclass(slots=True, frozen=True)
class Summary:
    """What the trace list shows of one trace and filters on: `streamproc ls` and the report
    page's index read this one record."""

    id: str
    source: str
    category: str
    subcategory: str
    task: str
    turns: int
    calls: int
    errors: int  # failed tool responses plus malformed calls
    tools: tuple[str, ...]  # distinct tools called, in order of first use
    failed_tools: tuple[str, ...]  # tools with a malformed call or a failed response (named by the call it answers)
    classes: tuple[str, ...]  # failure classes: MALFORMED_CALL, then the statuses of failed responses


def summarize(row: Row | Trace, task_chars: int | None = None) -> Summary:
    """`task_chars`: the task shortened to about that many characters (the page keeps a short one)."""
    trace = parse_trace(row) if isinstance(row, Row) else row
    f = trace_facts(trace)
    return Summary(trace.id, trace.source, trace.category, trace.subcategory, shorten(trace.task, task_chars),
                   len(trace.turns), len(trace.calls), f.errors(), tuple(f.tools()), tuple(f.failed_tools()),
                   tuple(f.failure_classes()))


@dataclass(slots=True, frozen=True)
class Filters:
    """Every filter given must hold. Text comparisons ignore case; `text` is searched in the
    id, task, category and every turn of the conversation."""

    source: str | None = None
    category: str | None = None
    tool: str | None = None  # called this tool
    failed_tool: str | None = None  # this tool failed at least once
    failure: str | None = None  # a response failed with this class (or malformed_call)
    errors: bool = False  # any failure at all
    text: str | None = None

    def match(self, s: Summary, row: Row) -> bool:
        def eq(a: str | None, b: str) -> bool:
            return a is None or a.casefold() == b.casefold()

        if not (eq(self.source, s.source) and (eq(self.category, s.category) or eq(self.category, s.subcategory))):
            return False
        if self.tool is not None and self.tool not in s.tools:
            return False
        if self.failed_tool is not None and self.failed_tool not in s.failed_tools:
            return False
        if self.failure is not None and self.failure not in s.classes:
            return False
        if self.errors and not s.errors:
            return False
        if self.text is not None:
            needle = self.text.casefold()
            haystack = (s.id, s.task, s.category, s.subcategory, *(v for _, v in row.conversations))
            return any(needle in h.casefold() for h in haystack)
        return True


@dataclass(slots=True)
class Scanned:
    matches: list[Summary] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)  # every good row's id, for unique prefixes
    rejects: list[BadRow] = field(default_factory=list)


class ScanStage(Stage):
    """A split's summaries that match the filters, and every good row's id."""

    name = "ls"

    def __init__(self, filters: Filters):
        self.filters = filters

    def start(self) -> Scanned:
        return Scanned()

    def fold(self, acc: Scanned, row: Row, trace: Trace | None) -> None:
        acc.ids.append(row.id)
        s = summarize(trace)
        if self.filters.match(s, row):
            acc.matches.append(s)


class ScanJob(Job):
    """The matches and ids of every split, in plan order, and the rows set aside."""

    def __init__(self, filters: Filters):
        self.stages: list[Stage] = [ScanStage(filters)]
        self.found = Scanned()

    def add(self, partials: list, tallies: list) -> None:
        (part,), (tally,) = partials, tallies
        self.found.matches += part.matches
        self.found.ids += part.ids
        self.found.rejects += tally.rejected


def list_traces(splits: Sequence[Split], filters: Filters, *, workers: int | Engine = 1, on_error: str = "skip") -> Scanned:
    """The summaries of the traces that match `filters`, in input order, and every good row's id."""
    job = ScanJob(filters)
    run_jobs(splits, [job], workers=workers, on_error=on_error, progress="ls")
    return job.found


def unique_prefix_length(ids: Sequence[str], minimum: int = MIN_PREFIX) -> int:
    """The shortest length, at least `minimum`, at which every distinct id's prefix is its own
    (ids that are prefixes of others keep their full length where they are printed)."""
    ordered = sorted(set(ids))
    need = minimum
    for a, b in zip(ordered, ordered[1:]):
        common = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        need = max(need, common + 1)
    return need


# ----------------------------------------------------------------------------- lookup


@dataclass(slots=True)
class Lookup:
    """The row an id or id prefix names, and where any other rows with that id are."""

    row: Row
    others: list[Location]


@dataclass(slots=True)
class _Hits:
    """One split's rows whose id equals or starts with the key: the first row of each id (in
    order) and every location of each."""

    first: dict[str, Row] = field(default_factory=dict)
    where: dict[str, list[Location]] = field(default_factory=dict)


class FindStage(Stage):
    """A split's rows whose id equals or starts with the key."""

    name = "find"
    needs_trace = False

    def __init__(self, key: str):
        self.key = key

    def start(self) -> _Hits:
        return _Hits()

    def fold(self, hits: _Hits, row: Row, trace: Trace | None) -> None:
        if row.id.startswith(self.key):
            hits.first.setdefault(row.id, row)
            hits.where.setdefault(row.id, []).append(row.loc or Location("?", -1))


class FindJob(Job):
    """Every split's rows whose id equals or starts with the key, merged in plan order."""

    def __init__(self, key: str):
        self.stages: list[Stage] = [FindStage(key)]
        self.first: dict[str, Row] = {}
        self.where: dict[str, list[Location]] = {}
        self.rejects: list[BadRow] = []

    def add(self, partials: list, tallies: list) -> None:
        (hits,), (tally,) = partials, tallies
        self.rejects.extend(tally.rejected)
        for i, row in hits.first.items():
            self.first.setdefault(i, row)
            self.where.setdefault(i, []).extend(hits.where[i])


def lookup(splits: Sequence[Split], key: str, *, workers: int | Engine = 1, on_error: str = "skip",
           rejects: list[BadRow] | None = None) -> Lookup:
    """The trace whose id is `key`, else the one trace whose id starts with `key`. Raises
    LookupError naming the candidates when there is none or more than one. Every row is read,
    so rows that share the id are all found."""
    job = FindJob(key)
    try:
        run_jobs(splits, [job], workers=workers, on_error=on_error)
    finally:
        if rejects is not None:
            rejects.extend(job.rejects)
    first, where = job.first, job.where
    if key in first:
        chosen = key
    elif len(first) == 1:
        (chosen,) = first
    elif not first:
        raise LookupError(f"no trace with id {key!r} (or starting with it) in the input; `streamproc ls` lists them")
    else:
        names = sorted(first)
        shown = ", ".join(names[:AMBIGUOUS_SHOWN]) + (f" and {len(names) - AMBIGUOUS_SHOWN:,} more" if len(names) > AMBIGUOUS_SHOWN else "")
        raise LookupError(f"id prefix {key!r} matches {len(names):,} traces: {shown}; give more of the id")
    return Lookup(first[chosen], where[chosen][1:])
