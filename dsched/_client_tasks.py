"""What a client sends: a ``map``'s tasks, split into submissions, and Dask's options as the core's.

``map_tasks`` is the client's hot loop (a few microseconds per task: pickle
the arguments, hash them into the key, one record); the function was pickled
once by the caller.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Final

from dsched import _protocol as p
from dsched._tokenize import pickle_args, random_token, token

__all__ = ["MAX_SUBMIT_BYTES", "batches", "core_priority", "gc_paused", "map_tasks", "resources_dict", "workers_list"]

# A map's tasks are sent in SubmitGraph messages of at most this many argument bytes
# (frames stay far below the 256 MiB limit); every task of a map is wanted, so
# splitting changes nothing else.
MAX_SUBMIT_BYTES: Final = 64 * 1024 * 1024


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause CPython's cyclic GC during a bulk submission.

    A submission allocates several container objects per task (none of them
    garbage); with the GC on, the collections they trigger walk every live
    object again and again, which doubled ``map``'s cost per task.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def core_priority(priority: int) -> int:
    """A Dask user priority (higher runs earlier) as ``sched_core.TaskSpec.priority``.

    The core follows Dask's convention already (it subtracts the user priority,
    shifted far to the left, from a task's graph order); the wire's GraphTask
    field is a 64-bit int, so priorities are clamped to that range.
    """
    return max(_INT64_MIN, min(_INT64_MAX, int(priority)))


_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1


def workers_list(workers: str | Iterable[str] | None) -> list[str] | None:
    if workers is None:
        return None
    if isinstance(workers, str):
        return [workers]
    return [str(w) for w in workers] or None


def resources_dict(resources: Mapping[str, float] | None) -> dict[str, float] | None:
    return {str(k): float(v) for k, v in resources.items()} if resources else None


def map_tasks(
    salt: bytes,
    prefix: str,
    explicit: list[str] | None,
    arguments: Iterable[tuple[Any, ...]],
    kwargs: dict[str, Any] | None,
    pure: bool,
    priority: int,
    retries: int,
    workers: list[str] | None,
    resources: dict[str, float] | None,
    allow_other_workers: bool,
) -> list[p.GraphTask]:
    """One ``GraphTask`` per argument tuple: the hot loop of ``map`` (a few microseconds each)."""
    GraphTask = p.GraphTask
    tasks: list[p.GraphTask] = []
    append = tasks.append
    for i, args in enumerate(arguments):
        payload, deps = pickle_args(args, kwargs)
        if explicit is not None:
            if i >= len(explicit):
                raise ValueError(f"map got {len(explicit)} keys for more tasks")
            key = explicit[i]
        elif pure:
            key = prefix + token(payload, salt)
        else:
            key = prefix + random_token()
        append(GraphTask(key, deps, 0, payload, priority, retries, workers, resources, allow_other_workers))
    if explicit is not None and len(explicit) != len(tasks):
        raise ValueError(f"map got {len(explicit)} keys for {len(tasks)} tasks")
    return tasks


def batches(tasks: list[p.GraphTask], batch_size: int | None) -> list[list[p.GraphTask]]:
    """Split a map's tasks by ``batch_size`` and by ``MAX_SUBMIT_BYTES`` of arguments."""
    limit = batch_size if batch_size and batch_size > 0 else len(tasks) or 1
    out: list[list[p.GraphTask]] = []
    start = 0
    size = 0
    for i, task in enumerate(tasks):
        size += len(task.args)
        if i - start >= limit or (size > MAX_SUBMIT_BYTES and i > start):
            out.append(tasks[start:i])
            start = i
            size = len(task.args)
    out.append(tasks[start:])
    return out
