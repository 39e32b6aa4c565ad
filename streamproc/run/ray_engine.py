"""The Ray engine: the runner's splits folded by Ray tasks on a cluster instead of local processes.

`RayEngine` is a runner.Engine: every command (stats, pack, filter, features, export, report,
run, and the `--where/--preset/--dedup` view) plans its splits as it does locally
(sources.plan: Parquet row groups, JSONL byte ranges) and hands them to Ray, one task a split.
Each task reads its split with the local reader (sources.read, URIs through pyarrow's
filesystems) and folds it with the same stages and view, so rows keep their place in their file,
a de-duplicating view's removed rows are found by that place, and results, rejects and outputs
are those of the local engine, merged by the driver in plan order.

The fold function travels inside the remote function's definition, which each Ray worker loads
once: a stage that loads a tokenizer loads it once per worker, as a local worker does.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Iterator, Sequence

INSTALL = 'the Ray engine needs Ray: pip install "streamproc[ray]"'


class RayUnavailable(RuntimeError):
    """`--engine ray` without Ray installed."""


def require_ray():
    try:
        import ray
    except ImportError as e:
        raise RayUnavailable(f"{INSTALL} ({e})") from e
    return ray


def connect(address: str | None = None):
    """Join the cluster at `address` (`auto`, `ray://head:10001`) or start a local one.

    A process already connected (a notebook, a test) keeps its connection. On a remote cluster
    this very streamproc package is shipped to the workers; its dependencies must be there.
    """
    ray = require_ray()
    if not ray.is_initialized():
        if address:
            import streamproc

            _reachable(address)
            try:
                ray.init(address=address, runtime_env={"py_modules": [streamproc]})
            except ConnectionError as e:  # `auto` with no cluster running, a refused Ray Client
                raise RayUnavailable(f"cannot join the Ray cluster at {address}: {e}") from None
        else:
            ray.init()
    return ray


def _reachable(address: str, timeout: float = 10.0) -> None:
    """Ray retries an address nobody answers at for minutes: a HOST:PORT (or ray://HOST:PORT)
    that refuses or ignores a TCP connection is reported at once."""
    import socket

    host, sep, port = address.split("://", 1)[-1].rpartition(":")
    if not sep or not port.isdigit():
        return  # `auto` and the like: Ray's own lookup
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout).close()
    except OSError as e:
        raise RayUnavailable(f"cannot reach the Ray cluster at {address}: {e.strerror or e}") from None


class RayEngine:
    """runner.Engine on Ray: fn(item) for each item in a Ray task, results in order, at most two
    tasks per cluster CPU in flight (memory stays bounded). Closing the iterator, an exception or
    Ctrl-C cancels the tasks still running. A task whose worker dies is retried by Ray (three
    times by default) before the run fails."""

    def __init__(self, address: str | None = None):
        self.address = address

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> Iterator[Any]:
        ray = connect(self.address)
        task = ray.remote(_answering(fn))
        window = 2 * max(1, int(ray.cluster_resources().get("CPU", 1)))
        pending: deque = deque()  # (item index, task) in order
        try:
            for i, item in enumerate(items):
                pending.append((i, task.remote(item)))
                if len(pending) >= window:
                    yield _value(ray, *pending.popleft())
            while pending:
                yield _value(ray, *pending.popleft())
        finally:
            for _, ref in pending:
                ray.cancel(ref, force=True)


def _answering(fn: Callable[[Any], Any]) -> Callable[[Any], tuple[bool, Any]]:
    """fn as a task body that returns its exception instead of raising it, so the driver raises
    the very exception (a RowError naming the row) rather than Ray's wrapper of it."""
    from streamproc.run.runner import picklable

    def call(item):
        try:
            return True, fn(item)
        except Exception as e:
            return False, picklable(e)

    return call


def _value(ray, index: int, ref) -> Any:
    """The task's result; its own exception raised as is; a task Ray could not finish (its
    worker or node died after Ray's retries) as runner.WorkerDied, which names the split."""
    from streamproc.run.runner import WorkerDied

    try:
        ok, value = ray.get(ref)
    except ray.exceptions.RayError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise WorkerDied(f"a Ray task failed: {type(e).__name__}: {first}", index) from None
    if not ok:
        raise value
    return value
