"""The stage runner: every command reads its input through here, once.

A `Stage` folds the parsed rows of one input split into a small picklable partial result; the
job that asked for it merges the partials in plan order. A stage knows nothing of processes,
reading, bad rows or progress: the runner owns those. It plans nothing itself (sources.plan
does), reads and validates the rows of each split, parses each good row once for all stages,
applies `--on-error skip|fail`, keeps a row `Tally` per stage, and runs splits on an engine:
worker processes here (`Local`), or Ray tasks on a cluster (engine_ray.RayEngine), with the
results back in plan order, so every output is the same for any number of workers and on either
engine.

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
from streamproc.io.sources import ON_ERROR, Split, read

BATCH = 64  # rows handed to each stage at once (the masker tokenizes a batch's new pieces together)


class Stage:
    """One step of a job over the parsed rows of a split.

    Subclasses set `name` (the `field` of a row this stage rejects is `<name>`) and `trace`
    (False: the stage reads the Row only, and rows are not parsed for it), and define `start`
    and `fold`; a stage that works on many rows at once overrides `fold_batch` instead of
    `fold`. A stage must be picklable: it is sent to each worker once.
    """

    name = "stage"
    trace = True

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
    view: tuple[Any, Tally] | None = None  # a split's gate: its partial and tally (see fold_items)


class Gate(Protocol):
    """A filtered view inside a pass (curate.ConditionGate): decides which parsed rows the
    stages see. `start` gives a split's empty partial; `keep_batch` returns a keep flag per row
    and the rows it sets aside; `add` merges a split's partial and tally in the planning process."""

    def start(self) -> Any: ...

    def keep_batch(self, acc: Any, rows: list[tuple[Row, Trace]]) -> tuple[list[bool], list[tuple[int, BadRow]]]: ...

    def add(self, acc: Any, tally: Tally) -> None: ...


def fold_items(items: Iterable[Row | BadRow], stages: Sequence[Stage], on_error: str = "skip", gate: Gate | None = None) -> Folded:
    """Fold a stream of read items (validated Rows and BadRows) with every stage. Each stage's
    tally counts every item read; its rejected rows are the bad ones read plus those it set
    aside itself, in row order. `fail` raises RowError at the first bad row of any kind.
    With a `gate`, the stages see only the rows it keeps (the others are not read, for them)."""
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error {on_error!r}: expected one of {', '.join(ON_ERROR)}")
    accs = [s.start() for s in stages]
    tallies = [Tally() for _ in stages]
    view = (gate.start(), Tally()) if gate is not None else None
    parse = gate is not None or any(s.trace for s in stages)
    batch: list[Row | BadRow] = []
    for item in items:
        if isinstance(item, BadRow) and on_error == "fail":
            raise RowError(item)
        batch.append(item)
        if len(batch) == BATCH:
            _fold_batch(batch, stages, accs, tallies, on_error, parse, gate, view)
            batch = []
    if batch:
        _fold_batch(batch, stages, accs, tallies, on_error, parse, gate, view)
    return Folded([s.end(a) for s, a in zip(stages, accs)], tallies, view)


def _fold_batch(batch, stages, accs, tallies, on_error: str, parse: bool, gate=None, view=None) -> None:
    from streamproc.parse.parser import parse_trace

    bad: dict[int, BadRow] = {}
    good: list[tuple[int, Row, Trace | None]] = []
    for i, item in enumerate(batch):
        if isinstance(item, BadRow):
            bad[i] = item
            continue
        trace = None
        if parse:
            try:
                trace = parse_trace(item)
            except Exception as e:  # a parser bug on one row sets that row aside, named
                why = BadRow(item.loc, "<parse>", f"trace {item.id}: {type(e).__name__}: {e}")
                if on_error == "fail":
                    raise RowError(why) from e
                bad[i] = why
                continue
        good.append((i, item, trace))
    rows = [(row, trace) for _, row, trace in good]
    read = len(batch)
    if gate is not None:
        gate_acc, gate_tally = view
        kept, own = gate.keep_batch(gate_acc, rows)
        if own and on_error == "fail":
            raise RowError(own[0][1])
        bad.update((good[k][0], why) for k, why in own)
        gate_tally.rejected.extend(bad[i] for i in sorted(bad))
        gate_tally.read += len(batch)
        gate_tally.parsed += len(good) - len(own)
        read -= len(good) - len(own) - sum(kept)  # the rows it removed are not read, for the stages
        good = [g for g, k in zip(good, kept) if k]
        rows = [(row, trace) for _, row, trace in good]
    for stage, acc, tally in zip(stages, accs, tallies):
        own = stage.fold_batch(acc, rows)
        if own and on_error == "fail":
            raise RowError(own[0][1])
        rejected = {**bad, **{good[k][0]: why for k, why in own}}
        tally.rejected.extend(rejected[i] for i in sorted(rejected))
        tally.read += read
        tally.parsed += len(good) - len(own)


def fold_split(split: Split, stages: Sequence[Stage], on_error: str = "skip") -> Folded:
    """fold_items over the rows of one input split, through its gate if it has one."""
    return fold_items(read(split), stages, on_error, split.gate)


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


class _FoldSplit:
    """Picklable: what a worker runs for each split."""

    def __init__(self, stages: Sequence[Stage], on_error: str):
        self.stages, self.on_error = list(stages), on_error

    def __call__(self, split: Split) -> Folded:
        return fold_split(split, self.stages, self.on_error)


def run(
    splits: Sequence[Split],
    stages: Sequence[Stage],
    *,
    workers: int | Engine = 1,
    on_error: str = "skip",
    progress: str | None = None,
) -> Iterator[Folded]:
    """Each split folded by `stages`, in plan order, in `workers` local processes (1: this one)
    or on the engine given (engine_ray.RayEngine).

    `progress` names a progress bar sized in input bytes, with a rows/s figure (with --limit:
    in rows of the limit, since the input is read only in part); it shows on a terminal, or
    anywhere with STREAMPROC_PROGRESS=1, and never with STREAMPROC_PROGRESS=0 (--quiet)."""
    by_rows = bool(splits) and all(s.limit is not None for s in splits)
    total = sum(s.limit or 0 for s in splits) if by_rows else sum(s.nbytes for s in splits)
    bar = _bar(progress, total, "rows" if by_rows else "B") if progress else None
    rows = 0
    try:
        for split, folded in zip(splits, engine_of(workers).map(_FoldSplit(stages, on_error), splits)):
            if split.gate is not None:  # the copy this process holds gathers every split's decisions
                split.gate.add(*folded.view)
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


def run_merged(splits: Sequence[Split], stages: Sequence[Stage], **kw) -> tuple[list[list[Any]], list[Tally]]:
    """run(), gathered: each stage's partials in plan order and its summed tally."""
    partials: list[list[Any]] = [[] for _ in stages]
    tallies = [Tally() for _ in stages]
    for folded in run(splits, stages, **kw):
        for k in range(len(stages)):
            partials[k].append(folded.partials[k])
            tallies[k].add(folded.tallies[k])
    return partials, tallies


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


class Job(Protocol):
    """What consumes stages' partials: a command's output, merged split by split in plan order."""

    stages: list[Stage]

    def add(self, partials: list[Any], tallies: list[Tally]) -> None:
        """One split's partials of `stages`, and their row tallies."""


def feed(results: Iterable[Folded], jobs: Sequence[Job]) -> None:
    """Hand each folded split to the jobs whose stages were run, concatenated in job order."""
    for folded in results:
        k = 0
        for job in jobs:
            n = len(job.stages)
            job.add(folded.partials[k : k + n], folded.tallies[k : k + n])
            k += n


def run_jobs(splits: Sequence[Split], jobs: Sequence[Job], **kw) -> None:
    """Every job from one pass over the input: each row is read and parsed once for all."""
    feed(run(splits, [s for job in jobs for s in job.stages], **kw), jobs)


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
