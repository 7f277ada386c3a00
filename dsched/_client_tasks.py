"""What a client sends: a ``map``'s tasks, split into submissions, and Dask's options as the core's.

``map_tasks`` is the client's hot loop (a few microseconds per task: pickle
the arguments, hash them into the key, one record); the function was pickled
once by the caller.  ``map_layer`` says the same as one Map layer (a few
bytes per input, expanded on the scheduler), which ``map`` prefers for large
inputs.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import pickle
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Final

import msgspec

from dsched import _protocol as p
from dsched._serialize import PROTOCOL
from dsched._tokenize import pickle_args, pickle_function, pickle_row, random_token, token

dumps = pickle.dumps

__all__ = [
    "MAP_LAYER_MIN_INPUTS",
    "MAX_SUBMIT_BYTES",
    "batches",
    "core_priority",
    "gc_paused",
    "layer_options",
    "map_layer",
    "map_tasks",
    "resources_dict",
    "workers_list",
]

# A map's tasks are sent in SubmitGraph messages of at most this many argument bytes
# (frames stay far below the 256 MiB limit); every task of a map is wanted, so
# splitting changes nothing else.
MAX_SUBMIT_BYTES: Final = 64 * 1024 * 1024

# ``map`` over at least this many inputs sends one Map layer instead of a task per
# input (unless told otherwise): from here on the layer's savings (a fifth of the
# bytes, a tenth of the client time) outweigh its keys being named by position.
MAP_LAYER_MIN_INPUTS: Final = 10_000


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


def map_layer(
    func: Callable[..., Any],
    prefix: str,
    rows: list[tuple[Any, ...]],
    kwargs: dict[str, Any] | None,
    pure: bool,
    options: p.LayerOptions | None,
) -> p.SubmitLayers | None:
    """``map(func, rows, **kwargs)`` as one Map layer wanting all its partitions.

    None when it cannot be one: an argument refers to a future (a Map layer's
    partitions have no dependencies), or the arguments exceed
    ``MAX_SUBMIT_BYTES`` (one message).  Keyword arguments, the same for every
    call, are bound into the function, pickled once.  ``pure`` names the layer
    after the function and every argument, so the same map made twice is one
    layer; its keys are ``"('<prefix><token>', i)"``.
    """
    if kwargs and pickle_args((), kwargs)[1]:
        return None
    function = pickle_function(functools.partial(func, **kwargs) if kwargs else func)
    try:
        # Plain pickle, in one C-speed pass: a future among the arguments refuses it
        # (TypeError), as do values only cloudpickle can pickle; those take the careful path.
        payloads = [dumps(row, PROTOCOL) for row in rows]
    except (pickle.PicklingError, TypeError, AttributeError):
        careful = [pickle_row(row) for row in rows]
        if any(deps for _, deps in careful):
            return None
        payloads = [payload for payload, _ in careful]
    if sum(map(len, payloads)) > MAX_SUBMIT_BYTES:
        return None
    if pure:
        # Length-prefixed (msgpack), so that different splits of the same bytes differ.
        name = prefix + token(msgspec.msgpack.encode(payloads), function.digest)
    else:
        name = prefix + random_token()
    layer = p.MapLayerSpec(name, len(payloads), 0, payloads)
    return p.SubmitLayers([function.data], [layer], [], [(0, 0)], [], [name], options=options)


def layer_options(
    priority: int, retries: int, workers: list[str] | None, resources: dict[str, float] | None, allow_other_workers: bool
) -> p.LayerOptions | None:
    """The ``LayerOptions`` for these task options, None when all are the defaults."""
    if priority == 0 and retries == 0 and workers is None and resources is None and not allow_other_workers:
        return None
    return p.LayerOptions(priority, retries, workers, resources, allow_other_workers)


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
