"""The stage runner: every command reads its input through here, once.

A `Stage` folds the parsed rows of one input split into a small picklable partial result; the
job that asked for it merges the partials in plan order. A stage knows nothing of processes,
reading, bad rows or progress: the runner owns those. It plans nothing itself (sources.plan
does), reads and validates the rows of each split, parses each good row once for all stages,
applies `--on-error skip|fail`, keeps a row `Tally` per stage, lets a view given to the run
(--where, --preset, --dedup) decide which rows the stages see, and runs splits on an engine:
worker processes here (`Local`), or Ray tasks on a cluster (engine_ray.RayEngine), with the
results back in plan order, so every output is the same for any number of workers and on either
engine. Commands use it one way: jobs over one pass (`run_jobs`).

Worker processes are spawned, never forked: a fork copies a parent whose threads (the
tokenizer's pool, tqdm's monitor) may hold locks that no thread of the child will release.
A spawned worker imports only the modules of the stages it runs and builds what it needs
(a tokenizer) itself, once. The parent talks to each worker over its own pipe and starts no
thread, so stopping is plain: on Ctrl-C, SIGTERM or an error, every worker is killed and
reaped before the exception goes on.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Any, Callable, Iterable, Iterator, Protocol, Sequence, TypeVar

from streamproc.records import BadRow, Row, RowError, Tally, Trace
from streamproc.io.sources import ON_ERROR, Split, apply_on_error, read

BATCH = 64  # rows handed to each stage at once (the masker tokenizes a batch's new pieces together)


class Stage:
    """One step of a job over the parsed rows of a split.

    Subclasses set `name` (the `field` of a row this stage rejects is `<name>`) and `needs_trace`
    (False: the stage reads the Row only, and rows are not parsed for it), and define `start`
    and `fold`; a stage that works on many rows at once overrides `fold_batch` instead of
    `fold`. A stage must be picklable: it is sent to each worker once.
    """

    name = "stage"
    needs_trace = True

    def start(self) -> Any:
        """The empty partial result of one split."""
        raise NotImplementedError

    def fold(self, acc: Any, row: Row, trace: Trace | None) -> None:
        """Add one row to `acc`. An exception sets the row aside for this stage alone."""
        raise NotImplementedError

    def fold_batch(self, acc: Any, rows: list[tuple[Row, Trace | None]]) -> list[tuple[int, BadRow]]:
        """Add rows in order; return (position in `rows`, why) of each row set aside."""
        bad = []
        for i, (row, trace) in enumerate(rows):
            try:
                self.fold(acc, row, trace)
            except Exception as e:  # one row's failure must not end a long run: it is set aside, named
                bad.append((i, self.reject(row, e)))
        return bad

    def end(self, acc: Any) -> Any:
        """The split's partial result as sent back (default: `acc` itself)."""
        return acc

    def reject(self, row: Row, e: Exception) -> BadRow:
        if isinstance(e, RowError):
            return e.bad
        return BadRow(row.loc, f"<{self.name}>", f"trace {row.id}: {type(e).__name__}: {e}")


@dataclass(slots=True)
class Folded:
    """What one split gives back: each stage's partial and row tally, in the order of the stages."""

    partials: list[Any]
    tallies: list[Tally]
    view: tuple[Any, Tally] | None = None  # the view's account of the split, and its tally (see fold_items)


class View(Protocol):
    """A filtered view given to a run (curate/stage.py: --where, --preset, --dedup): it decides
    which rows the stages see. It is never stored on a split: `start(index)` gives split
    `index`'s account, which travels with the split; `keep_batch`, in the worker, returns a keep
    flag per row and the rows it sets aside (after parsing when `needs_trace`, else before);
    `add` takes each split's account back, in plan order, in the planning process. `key()` is
    its definition, for a resume fingerprint."""

    needs_trace: bool

    def start(self, index: int) -> Any: ...

    def keep_batch(self, acc: Any, rows: list[tuple[Row, Trace | None]]) -> tuple[list[bool], list[tuple[int, BadRow]]]: ...

    def add(self, acc: Any, tally: Tally) -> None: ...

    def key(self) -> str: ...


def fold_items(
    items: Iterable[Row | BadRow], stages: Sequence[Stage], on_error: str = "skip", view: View | None = None, account: Any = None
) -> Folded:
    """Fold a stream of read items (validated Rows and BadRows) with every stage. Each stage's
    tally counts every item read; its rejected rows are the bad ones read plus those it set
    aside itself, in row order. `fail` raises RowError at the first bad row of any kind.
    With a `view` (and `account`, what its `start` gave for this split), the stages see only the
    rows it keeps (the others are not read, for them)."""
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error {on_error!r}: expected one of {', '.join(ON_ERROR)}")
    accs = [s.start() for s in stages]
    tallies = [Tally() for _ in stages]
    seen = (account, Tally()) if view is not None else None
    parse = (view is not None and view.needs_trace) or any(s.needs_trace for s in stages)
    batch: list[Row | BadRow] = []
    for item in apply_on_error(items, on_error):
        batch.append(item)
        if len(batch) == BATCH:
            _fold_batch(batch, stages, accs, tallies, on_error, parse, view, seen)
            batch = []
    if batch:
        _fold_batch(batch, stages, accs, tallies, on_error, parse, view, seen)
    return Folded([s.end(a) for s, a in zip(stages, accs)], tallies, seen)


def _fold_batch(batch, stages, accs, tallies, on_error: str, parse: bool, view=None, seen=None) -> None:
    from streamproc.parse.parser import parse_trace

    bad: dict[int, BadRow] = {i: item for i, item in enumerate(batch) if isinstance(item, BadRow)}
    good: list[tuple[int, Row, Trace | None]] = [(i, item, None) for i, item in enumerate(batch) if not isinstance(item, BadRow)]
    read = len(batch)
    if view is not None and not view.needs_trace:
        good, read = _through(view, seen, good, bad, read, on_error)
    if parse:
        parsed = []
        for i, row, _ in good:
            try:
                parsed.append((i, row, parse_trace(row)))
            except Exception as e:  # a parser bug on one row sets that row aside, named
                why = BadRow(row.loc, "<parse>", f"trace {row.id}: {type(e).__name__}: {e}")
                if on_error == "fail":
                    raise RowError(why) from e
                bad[i] = why
        good = parsed
    if view is not None and view.needs_trace:
        good, read = _through(view, seen, good, bad, read, on_error)
    rows = [(row, trace) for _, row, trace in good]
    for stage, acc, tally in zip(stages, accs, tallies):
        own = stage.fold_batch(acc, rows)
        if own and on_error == "fail":
            raise RowError(own[0][1])
        rejected = {**bad, **{good[k][0]: why for k, why in own}}
        tally.rejected.extend(rejected[i] for i in sorted(rejected))
        tally.read += read
        tally.parsed += len(good) - len(own)


def _through(view: View, seen: tuple[Any, Tally], good: list, bad: dict[int, BadRow], read: int, on_error: str) -> tuple[list, int]:
    """The good rows the view keeps, and the rows read for the stages: those it removed are not
    read, for them. The rows it sets aside join `bad`; its tally counts what it was shown."""
    acc, tally = seen
    kept, own = view.keep_batch(acc, [(row, trace) for _, row, trace in good])
    if own and on_error == "fail":
        raise RowError(own[0][1])
    bad.update((good[k][0], why) for k, why in own)
    tally.rejected.extend(bad[i] for i in sorted(bad))
    tally.read += read
    tally.parsed += len(good) - len(own)
    removed = len(good) - len(own) - sum(kept)
    return [g for g, k in zip(good, kept) if k], read - removed


def fold_split(split: Split, stages: Sequence[Stage], on_error: str = "skip", view: View | None = None, account: Any = None) -> Folded:
    """fold_items over the rows of one input split, through the view if one is given."""
    return fold_items(read(split), stages, on_error, view, account)


class Engine(Protocol):
    """Where splits are folded: `map(fn, items)` gives fn(item) for each item, in order, and
    stops all work when the iterator is closed or an exception goes through it."""

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> Iterator[Any]: ...


@dataclass(slots=True, frozen=True)
class Local:
    """The local engine: `workers` spawned processes on this machine (1: this process)."""

    workers: int = 1

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> Iterator[Any]:
        return map_ordered(fn, items, self.workers)


def engine_of(workers: int | Engine) -> Engine:
    """The API's `workers` arguments take a process count or an engine."""
    return Local(workers) if isinstance(workers, int) else workers


@dataclass(slots=True, frozen=True)
class _Task:
    """One split as sent to a worker: which of the run's stages fold it, and its view account."""

    split: Split
    active: tuple[int, ...]
    account: Any = None


class _FoldSplit:
    """Picklable: what a worker runs for each split (the stages and the view travel once)."""

    def __init__(self, stages: Sequence[Stage], on_error: str, view: View | None):
        self.stages, self.on_error, self.view = list(stages), on_error, view

    def __call__(self, task: _Task) -> Folded:
        if not task.active:  # every job holds this split already: it is not read
            return Folded([], [])
        return fold_split(task.split, [self.stages[k] for k in task.active], self.on_error, self.view, task.account)


def run(
    splits: Sequence[Split],
    stages: Sequence[Stage],
    *,
    workers: int | Engine = 1,
    on_error: str = "skip",
    progress: str | None = None,
    view: View | None = None,
    active: Sequence[tuple[int, ...]] | None = None,
) -> Iterator[Folded]:
    """Each split folded by `stages` (those `active[i]` names for split i; default all), in plan
    order, through `view` if given, in `workers` local processes (1: this one) or on the engine
    given (ray_engine.RayEngine). Commands use `run_jobs`, built on this.

    `progress` names a progress bar sized in input bytes, with a rows/s figure (with --limit:
    in rows of the limit, since the input is read only in part); it shows on a terminal, or
    anywhere with STREAMPROC_PROGRESS=1, and never with STREAMPROC_PROGRESS=0 (--quiet)."""
    everything = tuple(range(len(stages)))
    tasks = [
        _Task(split, everything if active is None else tuple(active[i]), None if view is None else view.start(i))
        for i, split in enumerate(splits)
    ]
    by_rows = bool(splits) and all(s.limit is not None for s in splits)
    total = sum(s.limit or 0 for s in splits) if by_rows else sum(s.nbytes for s in splits)
    bar = _bar(progress, total, "rows" if by_rows else "B") if progress else None
    rows = 0
    try:
        for split, folded in zip(splits, engine_of(workers).map(_FoldSplit(stages, on_error, view), tasks)):
            if view is not None and folded.view is not None:  # every split's account, in plan order
                view.add(*folded.view)
            if bar is not None:
                n = folded.tallies[0].read if folded.tallies else 0
                rows += n
                if not by_rows:
                    bar.set_postfix_str(f"{rows / max(bar.format_dict['elapsed'], 1e-9):,.0f} rows/s", refresh=False)
                bar.update(n if by_rows else split.nbytes)
            yield folded
    except WorkerDied as e:
        raise WorkerDied(f"{e} while reading {splits[e.index].where()}", e.index) from None
    finally:
        if bar is not None:
            bar.close()


def union(tallies: Sequence[Tally]) -> Tally:
    """One tally for stages that ran over the same rows: a row any of them set aside is rejected."""
    seen: set[int] = set()
    rejected = []
    for t in tallies:
        for bad in t.rejected:
            if id(bad) not in seen:
                seen.add(id(bad))
                rejected.append(bad)
    read = tallies[0].read if tallies else 0
    return Tally(read, read - len(rejected), rejected)


class Job:
    """What consumes stages' partials: a command's output, merged split by split in plan order.
    Subclasses set `stages` and define `add`; a job that already holds some splits' results (a
    resumed pack) says so in `holds`, and its stages do not run on them."""

    stages: list[Stage]

    def add(self, partials: list[Any], tallies: list[Tally]) -> None:
        """One split's partials of `stages`, and their row tallies."""
        raise NotImplementedError

    def holds(self, index: int) -> bool:
        """Whether split `index` is in this job's results already (default: none is)."""
        return False


class Gather(Job):
    """One stage's partials, every split's in plan order, and its summed tally: the job of a
    function that merges the partials itself (metrics.collect, page.collect)."""

    def __init__(self, stage: Stage):
        self.stages = [stage]
        self.partials: list[Any] = []
        self.tally = Tally()

    def add(self, partials: list[Any], tallies: list[Tally]) -> None:
        self.partials.append(partials[0])
        self.tally.add(tallies[0])


def run_jobs(splits: Sequence[Split], jobs: Sequence[Job], *, view: View | None = None, **kw) -> None:
    """Every job from one pass over the input, the one way commands use the runner: each row is
    read and parsed once for all, the stages see the rows `view` keeps, and a split a job holds
    already is not folded for it (not read at all when every job holds it). `kw`: run's."""
    stages = [s for job in jobs for s in job.stages]
    firsts = [sum(len(j.stages) for j in jobs[:k]) for k in range(len(jobs))]
    wanted = [[k for k, job in enumerate(jobs) if not job.holds(i)] for i in range(len(splits))]
    active = [tuple(firsts[k] + n for k in ks for n in range(len(jobs[k].stages))) for ks in wanted]
    for ks, folded in zip(wanted, run(splits, stages, view=view, active=active, **kw)):
        at = 0
        for k in ks:
            n = len(jobs[k].stages)
            jobs[k].add(folded.partials[at : at + n], folded.tallies[at : at + n])
            at += n


def plan_key(splits: Sequence[Split], view: View | None = None) -> list[str]:
    """What a run reads, as stable strings (a pack run's plan, to resume it): the splits, and
    the view's definition."""
    return [s.key() for s in splits] + ([view.key()] if view is not None else [])


def progress_shown() -> bool:
    env = os.environ.get("STREAMPROC_PROGRESS")
    return env != "0" and (sys.stderr.isatty() or env == "1")


def _bar(desc: str, total: int, unit: str = "B"):
    from tqdm.auto import tqdm

    scale = unit == "B"
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=scale, unit_divisor=1000, disable=not progress_shown(), smoothing=0.1)


# ----------------------------------------------------------------------------- worker pool

T = TypeVar("T")
R = TypeVar("R")


def map_ordered(fn: Callable[[T], R], items: Sequence[T], workers: int = 1) -> Iterator[R]:
    """fn(item) for each item, in order, computed in `workers` spawned processes (1: in this
    one). At most two items per worker are in flight ahead of the one awaited, so memory stays
    bounded. Leaving the iterator early, an exception and an interrupt kill every worker."""
    if workers < 1:
        raise ValueError(f"workers {workers}: must be at least 1")
    if workers == 1 or len(items) <= 1:
        yield from map(fn, items)
        return
    pool = _Pool(fn, min(workers, len(items)))
    try:
        yield from pool.map(items)
    finally:
        pool.close()


class WorkerDied(RuntimeError):
    """A worker ended without answering (killed, out of memory, a crash in native code) while it
    held item `index`. `run` names the split in the message; the CLI prints it in one line."""

    def __init__(self, message: str, index: int):
        super().__init__(message)
        self.index = index


def _death(proc) -> str:
    code = proc.exitcode
    if code is not None and code < 0:
        name = signal.Signals(-code).name if -code in signal.valid_signals() else f"signal {-code}"
        return f"worker {proc.pid} was killed by {name}" + (" (out of memory?)" if code == -signal.SIGKILL else "")
    return f"worker {proc.pid} died (exit code {code})"


class _Pool:
    def __init__(self, fn: Callable, n: int):
        ctx = mp.get_context("spawn")
        self.procs, self.conns = [], []
        for _ in range(n):
            mine, theirs = ctx.Pipe()
            p = ctx.Process(target=_serve, args=(theirs, fn), daemon=True)
            p.start()
            theirs.close()
            self.procs.append(p)
            self.conns.append(mine)

    def map(self, items: Sequence) -> Iterator:
        n = len(self.procs)
        window = 2 * n
        busy: dict[int, int] = {}  # worker -> item index it holds
        done: dict[int, Any] = {}
        sent = next_out = 0
        while next_out < len(items):
            for w in range(n):
                if w not in busy and sent < len(items) and sent < next_out + window:
                    try:
                        self.conns[w].send((sent, items[sent]))
                    except (BrokenPipeError, ConnectionResetError):  # it died while idle
                        self.procs[w].join()
                        raise WorkerDied(_death(self.procs[w]), sent) from None
                    busy[w] = sent
                    sent += 1
            while next_out in done:
                ok, value = done.pop(next_out)
                if not ok:  # raised in plan order, as one process would: what came before is delivered
                    raise value
                yield value
                next_out += 1
            if next_out >= len(items):
                break
            if not busy:
                continue
            ready = wait([self.conns[w] for w in busy] + [self.procs[w].sentinel for w in busy])
            for w in list(busy):
                if self.conns[w] in ready:
                    try:
                        i, ok, value = self.conns[w].recv()
                    except EOFError:
                        self.procs[w].join()
                        raise WorkerDied(_death(self.procs[w]), busy[w]) from None
                    del busy[w]
                    done[i] = (ok, value)
                elif self.procs[w].sentinel in ready:
                    self.procs[w].join()
                    raise WorkerDied(_death(self.procs[w]), busy[w])

    def close(self) -> None:
        """Stop every worker: idle ones get an end message; all are killed after a moment."""
        for c in self.conns:
            try:
                c.send(None)
            except OSError:
                pass
        for p in self.procs:
            p.join(timeout=0.05)
        for p in self.procs:
            if p.is_alive():
                p.kill()
            p.join()
        for c in self.conns:
            c.close()


def _serve(conn, fn) -> None:
    """A worker: answer (index, item) messages with (index, ok, result or exception) until told
    to stop or the parent goes away. Interrupts are the parent's to handle: it kills workers."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        i, item = msg
        try:
            answer = (i, True, fn(item))
        except Exception as e:
            answer = (i, False, picklable(e))
        try:
            conn.send(answer)
        except (BrokenPipeError, OSError):
            return
        except Exception as e:  # a result that cannot be pickled: say so instead of dying
            conn.send((i, False, RuntimeError(f"cannot send a result back: {type(e).__name__}: {e}")))


def picklable(e: Exception) -> Exception:
    import pickle

    try:
        pickle.loads(pickle.dumps(e))
        return e
    except Exception:
        return RuntimeError(f"{type(e).__name__}: {e}")
