"""`streamproc bench`: each stage's throughput against the baseline it replaces, measured in the
same run on the same data (the machine's noise hits both; the ratio is the figure to read).

A section is a module `streamproc/benchmarks/<name>.py` (`-` in a name is `_` in the module's) with `run(ctx: Context) -> list[Result]`;
adding one means adding that module and its name to SECTIONS. Sections are imported only when
run, so a section's heavy dependencies cost nothing to the others.
"""

from __future__ import annotations

import gc
import importlib
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from streamproc.records import BadRow, Row
from streamproc.io.sources import Split, good_rows, plan

SECTIONS = [
    "sources",
    "parse",
    "stats",
    "filter",
    "mask",
    "pack",
    "pack-job",
    "train",
    "scale",
]
"""Section names in the order `streamproc bench` runs them."""


@dataclass(slots=True)
class Result:
    """One measured figure. `ratio` is value / the baseline's value, so above 1 means better
    for a rate (MB/s, rows/s) whatever the unit."""

    section: str
    name: str  # what was measured
    value: float
    unit: str  # MB/s, rows/s, x, ...
    data: str = ""  # what it ran on
    baseline: str = ""  # the name of the Result it is compared with
    ratio: float | None = None
    target: str = ""  # the goal for `ratio` (or `value`), as text: ">= 5"
    note: str = ""


@dataclass(slots=True)
class Context:
    """What every section gets: the input shards, read once and shared, and how hard to try."""

    shards: list[Split] = field(default_factory=list)
    label: str = "built-in sample"  # names the data in results
    quick: bool = False
    workers: int = 1
    rejected: list[BadRow] = field(default_factory=list)
    _rows: list[Row] | None = None

    @property
    def repeat(self) -> int:
        """Timed repetitions per contender: the best one is reported."""
        return 3 if self.quick else 9

    def rows(self) -> list[Row]:
        """Every good row of the input, in order (bad ones are set aside in `rejected`)."""
        if self._rows is None:
            self._rows = [r for s in self.shards for r in good_rows(s, "skip", self.rejected)]
        return self._rows


def context(inputs: Sequence[str | os.PathLike] = (), *, quick: bool = False, workers: int = 1, **plan_kwargs) -> Context:
    """A Context over files (no input: the built-in sample). `--quick` reads the first 300 rows."""
    if quick:
        plan_kwargs.setdefault("limit", 300)
    label = ", ".join(os.path.basename(str(p)) for p in inputs) or "built-in sample"
    return Context(plan(inputs, **plan_kwargs), label, quick, workers)


def synthetic_file(rows: int) -> Path:
    """A `streamproc synth` Parquet file of `rows` rows (seed 0), made once and kept under
    STREAMPROC_BENCH_DIR (default /tmp): the input of the benches that need a big file."""
    from streamproc.io.synth import write

    path = Path(os.environ.get("STREAMPROC_BENCH_DIR", "/tmp")) / f"streamproc-bench-synth-{rows}.parquet"
    if not path.exists():
        write(path, rows, seed=0)
    return path


def run(sections: Sequence[str], ctx: Context) -> list[Result]:
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        raise ValueError(f"unknown section {', '.join(unknown)}; sections: {', '.join(SECTIONS)}")
    results: list[Result] = []
    for name in sections:
        results.extend(importlib.import_module(f"{__name__}.{name.replace('-', '_')}").run(ctx))
    return results


def best_times(contenders: dict[str, Callable[[], object]], repeat: int) -> dict[str, float]:
    """Best wall time of each contender over `repeat` rounds, taken in turn (round-robin), so a
    burst of load from elsewhere on the machine hits every contender alike. The garbage
    collector is paused while timing, as `timeit` does: the parsers make no reference cycles,
    and a collection would bill one contender for the heap the benchmark itself holds."""
    best = dict.fromkeys(contenders, float("inf"))
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for _ in range(repeat):
            for name, fn in contenders.items():
                t = time.perf_counter()
                fn()
                best[name] = min(best[name], time.perf_counter() - t)
    finally:
        if enabled:
            gc.enable()
    return best


def to_json(results: Sequence[Result]) -> list[dict]:
    return [asdict(r) for r in results]


def format_table(results: Sequence[Result]) -> str:
    """A plain-text table, one line per result, grouped by section and data."""
    header = ("section", "measured", "value", "vs", "ratio", "target", "data")
    rows = [
        (
            r.section,
            r.name,
            f"{r.value:,.1f} {r.unit}",
            r.baseline,
            "" if r.ratio is None else f"{r.ratio:.2f}x",
            r.target,
            r.data + (f" ({r.note})" if r.note else ""),
        )
        for r in results
    ]
    widths = [max(len(c) for c in col) for col in zip(header, *rows)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in (header, *rows)]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
