"""Curation on the runner: the stage that computes features and dedup keys, and the views given to a run (--where, --preset, --dedup)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import orjson

from streamproc.analyze.features import TokenFeatures, feature_schema, features, features_table
from streamproc.curate.conditions import Condition, ConditionEngine
from streamproc.curate.curator import Accounting, Curator
from streamproc.curate.dedup import dedup_key
from streamproc.records import BadRow, Location, Row, Tally, Trace
from streamproc.io.sources import Split
from streamproc.run.runner import Engine, Job, Stage, run_jobs


@dataclass(slots=True)
class CuratedSplit:
    """A split's features (one per trace the stage kept), with their dedup keys, rows (to be
    written) and locations (for a de-duplicating view's removed rows), in input order."""

    features: Any  # list of feature dicts while folding; a pa.Table once the split is done
    keys: list[Any] | None
    rows: list[Row] | None
    locs: list[Location | None]


class CurateStage(Stage):
    """Features of a split's traces; dedup keys with `dedup`, the rows with `keep_rows`, token
    counts with `tokenizer` (each worker loads it once, itself). What to keep is decided by a
    Curator in the parent, in plan order (Curator.decide_split), so any --workers gives the same."""

    name = "features"

    def __init__(self, dedup: str | None = None, tokenizer: str | None = None, keep_rows: bool = False):
        self.dedup, self.keep_rows = dedup, keep_rows
        self.tokens = TokenFeatures(tokenizer) if tokenizer else None

    def start(self) -> CuratedSplit:
        return CuratedSplit([], [] if self.dedup else None, [] if self.keep_rows else None, [])

    def fold_batch(self, acc: CuratedSplit, rows: list[tuple[Row, Trace | None]]) -> list[tuple[int, BadRow]]:
        bad = []
        traces = []
        for i, (row, trace) in enumerate(rows):
            try:
                f = features(trace)
                key = dedup_key(trace, self.dedup) if self.dedup else None
            except Exception as e:  # a bug must not end a long run: the row is set aside, named
                bad.append((i, self.reject(row, e)))
                continue
            acc.features.append(f)
            acc.locs.append(row.loc)
            if acc.keys is not None:
                acc.keys.append(key)
            if acc.rows is not None:
                acc.rows.append(row)
            traces.append(trace)
        if self.tokens is not None and traces:
            for f, t in zip(acc.features[-len(traces):], self.tokens.count(traces)):
                f.update(t)
        return bad

    def end(self, acc: CuratedSplit) -> CuratedSplit:
        acc.features = features_table(acc.features, self.tokens is not None)
        return acc


class ConditionView:
    """A view of conditions only (no dedup), decided inside the command's own pass: the runner
    asks it which parsed rows the command's stages see (runner.fold_items), in the worker, so the
    input is read and parsed once. Each split's Accounting comes back with its results and is
    added to `acct` here, in the process that planned the run (runner.run)."""

    needs_trace = True

    def __init__(self, conditions: Sequence[Condition]):
        self.conditions = tuple(conditions)
        self.acct = self.start(0)
        self._engine: ConditionEngine | None = None

    def __reduce__(self):  # sent by its conditions: the DuckDB connection is made where it runs
        return ConditionView, (self.conditions,)

    def key(self) -> str:
        return view_key(self.conditions)

    def start(self, index: int) -> Accounting:
        names = {c.name: 0 for c in self.conditions}
        return Accounting(failing=dict(names), removed_by=dict(names))

    def keep_batch(self, acct: Accounting, rows: list[tuple[Row, Trace | None]]) -> tuple[list[bool], list[tuple[int, BadRow]]]:
        """Which rows pass (in order), and the rows set aside because their features fail."""
        if self._engine is None:
            self._engine = ConditionEngine(self.conditions, feature_schema())
        feats, judged, bad = [], [], []
        for i, (row, trace) in enumerate(rows):
            try:
                feats.append(features(trace))
                judged.append(i)
            except Exception as e:  # a bug must not end a long run: the row is set aside, named
                bad.append((i, BadRow(row.loc, "<view>", f"trace {row.id}: {type(e).__name__}: {e}")))
        reasons = self._engine.judge(features_table(feats), acct)
        acct.count(reasons)
        kept = [False] * len(rows)
        for i, reason in zip(judged, reasons):
            kept[i] = reason is None
        return kept, bad

    def add(self, acct: Accounting, tally: Tally) -> None:
        """One split's decisions (runner.run calls this in plan order)."""
        acct.read, acct.rejected = tally.read, len(tally.rejected)
        self.acct.add(acct)


class DedupView:
    """A view with de-duplication: a first pass (`view`) decided every row in plan order, and
    the command's pass leaves out the rows it removed, by their place, before parsing them. The
    removed places of a split travel with that split alone; `acct` is the first pass's."""

    needs_trace = False

    def __init__(self, definition: str, removed: Sequence[frozenset[Location | None]] = (), acct: Accounting | None = None):
        self.definition, self.removed, self.acct = definition, list(removed), acct

    def __reduce__(self):  # a worker needs no split's removed rows but its own (start's)
        return DedupView, (self.definition,)

    def key(self) -> str:
        return self.definition

    def start(self, index: int) -> frozenset[Location | None]:
        return self.removed[index]

    def keep_batch(self, removed: frozenset[Location | None], rows: list[tuple[Row, Trace | None]]) -> tuple[list[bool], list[tuple[int, BadRow]]]:
        return [row.loc not in removed for row, _ in rows], []

    def add(self, removed: frozenset[Location | None], tally: Tally) -> None:
        pass  # the first pass counted every decision


def view_key(conditions: Sequence[Condition], dedup: str | None = None, threshold: float | None = None) -> str:
    """A view's definition as a stable string (part of a pack run's plan, to resume it)."""
    doc = {"where": [c.sql for c in conditions]}
    if dedup:
        doc |= {"dedup": dedup, "threshold": threshold}
    return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS).decode()


class _ViewJob(Job):
    """The locations of the rows the curator removes, split by split."""

    def __init__(self, curator: Curator):
        self.stages: list[Stage] = [CurateStage(curator.dedup)]
        self.curator = curator
        self.removed: list[frozenset[Location | None]] = []

    def add(self, partials: list[Any], tallies: list[Tally]) -> None:
        part = partials[0]
        reasons = self.curator.decide_split(part, tallies[0])
        self.removed.append(frozenset(loc for loc, why in zip(part.locs, reasons) if why is not None))


def view(splits: Sequence[Split], curator: Curator, workers: int | Engine = 1, on_error: str = "skip") -> ConditionView | DedupView:
    """The view of `splits` that only the rows the curator keeps go through, given to the
    command's run (runner.run_jobs(view=...)); its `acct` counts the decisions (complete once
    that run is done).

    Conditions alone are decided in the command's own pass (ConditionView). De-duplication needs
    the rows in input order, so it takes a first pass here (features, keys and decisions) that
    marks the removed rows, which the command's pass leaves out (DedupView)."""
    if not curator.dedup:
        return ConditionView(curator.conditions)
    job = _ViewJob(curator)
    run_jobs(splits, [job], workers=workers, on_error=on_error, progress="curate")
    return DedupView(view_key(curator.conditions, curator.dedup, curator.threshold), job.removed, curator.acct)
