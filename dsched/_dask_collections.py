"""Dask collections (array, dataframe, bag, delayed) computed and persisted on a dsched cluster.

Three ways in, as with dask.distributed:

* ``dask.compute(x, scheduler=client.get)`` (or ``x.compute(scheduler=client)``):
  dask optimizes, then hands ``client.get`` its expression and keys;
  :mod:`dsched._dask_graph` turns the graph into one submission.
* ``client.compute(x)`` / ``client.persist(x)``: :func:`compute` and
  :func:`persist` below do what ``dask.compute`` does before calling a
  scheduler (collections to one expression, optimized), then submit without
  waiting.  ``compute`` finalizes each collection on the cluster (one future per
  collection: a numpy array, a pandas DataFrame, a list ...); ``persist`` keeps
  every output partition on the cluster and rebuilds each collection on top of
  futures, so computing it again fetches instead of recomputing.
* ``Client(..., set_as_default=True)`` or ``client.as_default()``: dask's
  ``scheduler`` setting points at ``client.get`` until the client closes (see
  :class:`DefaultScheduler`).

dask is imported here only, on first use: dsched itself does not need it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dsched._client import Client
    from dsched._future import Future

__all__ = ["DefaultScheduler", "compute", "persist", "shuffle_on_the_cluster"]


def _import_dask() -> Any:
    global _registered
    try:
        import dask
        import dask.base
        from dask.tokenize import normalize_token
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError("Dask collections need dask: pip install 'dsched[dask]'") from exc
    if not _registered:
        from dsched._future import Future

        # A persisted collection's graph holds futures, which dask tokenizes: a key names its value.
        normalize_token.register(Future)(_future_token)  # type: ignore[no-untyped-call]
        _registered = True
    return dask


_registered = False


def _future_token(future: Future) -> tuple[str, str]:
    return ("dsched.Future", future.key)


def _flatten(keys: Any) -> Iterator[Any]:
    if isinstance(keys, list):
        for item in keys:
            yield from _flatten(item)
    else:
        yield keys


def _as_collections(collections: Any) -> tuple[list[Any], bool]:
    """The collections in ``collections`` (one, or a list/tuple of them) and whether it was one."""
    dask = _import_dask()
    single = not isinstance(collections, (list, tuple))
    items = [collections] if single else list(collections)
    for item in items:
        if not dask.is_dask_collection(item):
            raise TypeError(f"not a Dask collection: {type(item).__name__}")
    return items, single


@contextlib.contextmanager
def shuffle_on_the_cluster() -> Iterator[None]:
    """Make dask shuffle dataframes with tasks, unless the user chose a method.

    Without a dask.distributed client dask picks its "disk" shuffle (partd files
    in a local directory), which assumes one machine and a shared filesystem:
    on a cluster each worker would write and read only its own files.  Which
    shuffle dask uses is decided while it lowers the expression, so this is in
    force around that (``compute``, ``persist`` and building the graph).
    """
    dask = _import_dask()
    if dask.config.get("dataframe.shuffle.method", None):
        yield
        return
    with dask.config.set({"dataframe.shuffle.method": "tasks"}):
        yield


def compute(client: Client, collections: Any, *, optimize_graph: bool = True, **submit: Any) -> Any:
    """A Future per collection of its finalized result (one Future if given one collection)."""
    with shuffle_on_the_cluster():
        return _compute(client, collections, optimize_graph, submit)


def _compute(client: Client, collections: Any, optimize_graph: bool, submit: dict[str, Any]) -> Any:
    items, single = _as_collections(collections)
    if not items:
        return []
    from dask._expr import FinalizeCompute
    from dask.base import collections_to_expr

    expr: Any = FinalizeCompute(collections_to_expr(items, optimize_graph)).optimize()  # type: ignore[no-untyped-call]
    keys = list(_flatten(expr.__dask_keys__()))
    if len(keys) != len(items):  # FinalizeCompute gives one output per collection
        raise RuntimeError(f"dask finalized {len(items)} collections into {len(keys)} keys")
    futures: list[Future] = client.get(expr, keys, sync=False, **submit)
    return futures[0] if single else futures


def persist(client: Client, collections: Any, *, optimize_graph: bool = True, **submit: Any) -> Any:
    """Each collection rebuilt on futures of its output partitions, computed on the cluster."""
    with shuffle_on_the_cluster():
        return _persist(client, collections, optimize_graph, submit)


def _persist(client: Client, collections: Any, optimize_graph: bool, submit: dict[str, Any]) -> Any:
    items, single = _as_collections(collections)
    if not items:
        return []
    from dask.base import collections_to_expr

    expr: Any = collections_to_expr(items, optimize_graph).optimize()  # a list: a sequence, keys per collection
    per_collection = expr.__dask_keys__()
    flat = list(_flatten(per_collection))
    futures: list[Future] = client.get(expr, flat, sync=False, **submit)
    by_key = dict(zip(flat, futures))
    rebuilt = []
    for item, keys in zip(items, per_collection, strict=True):
        rebuild, args = item.__dask_postpersist__()
        rebuilt.append(rebuild({key: by_key[key] for key in _flatten(keys)}, *args))
    return rebuilt[0] if single else rebuilt


class DefaultScheduler:
    """dask's ``scheduler`` setting pointed at a client's ``get``, and put back as it was.

    Unless a shuffle method is configured, dataframes shuffle with tasks
    meanwhile (see :func:`shuffle_on_the_cluster`).  ``restore`` only undoes a
    setting while it is still this client's: if something else changed it
    since, that choice stands.
    """

    __slots__ = ("_get", "_previous", "_set_shuffle")

    def __init__(self, get: Callable[..., Any]) -> None:
        dask = _import_dask()
        self._get = get
        self._previous = dask.config.get("scheduler", None)
        self._set_shuffle = not dask.config.get("dataframe.shuffle.method", None)
        dask.config.set(scheduler=get)
        if self._set_shuffle:
            dask.config.set({"dataframe.shuffle.method": "tasks"})

    def restore(self) -> None:
        import dask

        if dask.config.get("scheduler", None) == self._get:
            dask.config.set(scheduler=self._previous)
        if self._set_shuffle and dask.config.get("dataframe.shuffle.method", None) == "tasks":
            dask.config.set({"dataframe.shuffle.method": None})
