"""The stats job: metrics and, for a report, the trace browser, from one pass over the input."""

from __future__ import annotations

from typing import Any, Sequence

from streamproc.analyze.metrics import Stats, StatsStage
from streamproc.records import Tally
from streamproc.run.runner import Engine, Job, run_jobs, union
from streamproc.io.sources import Split
from streamproc.views.page import Browser, Chunks, Entries, ViewStage


class StatsJob(Job):
    """Stats of every row, and with `browser` the trace browser of the same traces."""

    def __init__(self, tokenizer: str | None = None, browser: bool = False, spill_dir: str | None = None):
        if tokenizer:  # a bad name fails before any work; the stage counts with this one where it runs in this process
            from streamproc.prepare.tokenizer import cached_tokenizer

            cached_tokenizer(tokenizer)
        self.stages = [StatsStage(tokenizer), ViewStage()] if browser else [StatsStage(tokenizer)]
        self.stats = Stats(tokenizer=tokenizer)
        # Each split's index entries and body chunks go to temporary files in spill_dir.
        self.browser = Browser(Entries(spill_dir=spill_dir), Chunks(spill_dir=spill_dir)) if browser else None
        self.tally = Tally()

    def add(self, partials: list[Any], tallies: list[Tally]) -> None:
        self.stats.merge(partials[0])
        self.tally.add(union(tallies))
        if self.browser is not None:
            self.browser.add(partials[1])

    def result(self) -> tuple[Stats, Browser | None, Tally]:
        return self.stats, self.browser, self.tally


def collect_with_browser(
    splits: Sequence[Split], workers: int | Engine = 1, on_error: str = "skip", tokenizer: str | None = None
) -> tuple[Stats, Browser, Tally]:
    """metrics.collect() and webview.collect() in one pass: each trace is read and parsed once."""
    job = StatsJob(tokenizer, browser=True)
    run_jobs(splits, [job], workers=workers, on_error=on_error, progress="stats")
    return job.result()  # type: ignore[return-value]
