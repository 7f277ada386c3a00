"""``Client``: submit work to a dsched cluster and get results back, as with dask.distributed.

::

    from dsched._client import Client          # instead of: from distributed import Client

    with Client("tcp://127.0.0.1:8786") as client:
        futures = client.map(inc, range(1000))
        total = client.submit(sum, futures)
        print(total.result())

A synchronous client (the default) runs its event loop in a daemon thread and
its methods block.  ``Client(address, asynchronous=True)`` runs in the
caller's event loop: ``async with Client(..., asynchronous=True) as client:``
or ``client = await Client(..., asynchronous=True)``; then the methods that
talk to the cluster (``gather``, ``scatter``, ``get``, ``close`` ...) return
awaitables, and ``await future`` gives a result.  ``submit`` and ``map``
never wait for the network in either mode.

``Client()`` without an address starts a ``LocalCluster`` (keyword arguments
go to it) and closes it with the client; ``Client(cluster)`` connects to any
object with a ``scheduler_address``.

Security: ``Client("tls://host:8786", security=Security(...))``.  Without
``security`` a client uses its cluster's (``Client(cluster)``, so a
``LocalCluster``'s generated secret needs no typing) or else what the
environment and the security file say (:meth:`Security.load`).

Costs: ``map`` pickles its function once and sends one ``SubmitGraph`` for
all its tasks; per task it pickles the arguments, hashes them for the key and
builds one record (a few microseconds).  Completions are applied per frame
with plain dict lookups; ``gather`` waits on one counter and fetches from each
worker in one request.  See docs/client.md.
"""

from __future__ import annotations

import atexit
import logging
import sys
import threading
import weakref
from collections.abc import Callable, Coroutine, Generator, Iterable, Mapping
from types import TracebackType
from typing import Any

import anyio

from dsched import _protocol as p
from dsched._client_diagnostics import ClientDiagnostics
from dsched._client_errors import ClientDisconnectedError
from dsched._client_loop import SchedulerLink
from dsched._client_results import futures_in, unpack, unpack_states, value_of
from dsched._client_state import ClientState, run_notifications
from dsched._security import Security, security_for
from dsched._client_tasks import (
    MAP_LAYER_MIN_INPUTS,
    MAX_SUBMIT_BYTES,
    batches,
    core_priority,
    gc_paused,
    layer_options,
    map_layer,
    map_tasks,
    resources_dict,
    workers_list,
)
from dsched._dask_collections import DefaultScheduler, compute, persist
from dsched._dask_graph import FIRST_PART, PARTS_MIN_SIZE, GraphPlan
from dsched._graph_builder import Collection, Graph
from dsched._loop_thread import LoopThread
from dsched._future import FINISHED, CallbackWatcher, Future, KeyState
from dsched._future_sequence import FutureSequence
from dsched._layer_hold import LayerHold
from dsched._tokenize import funcname, pickle_args, pickle_function, random_token, token, value_key

__all__ = ["Client"]

logger = logging.getLogger("dsched.client")

# Synchronous clients still open at interpreter exit are closed by an atexit
# hook, while their loop threads still run (a close from ``__del__`` during
# finalization would wait forever on a frozen daemon thread).  The hook is
# registered when the first client starts, after any cluster's finalizer, so
# (atexit being last-in first-out) clients say goodbye before clusters stop.
_open_sync_clients: weakref.WeakSet[Client] = weakref.WeakSet()
_exit_hook_registered = False


def _track_open_client(client: Client) -> None:
    global _exit_hook_registered
    if not _exit_hook_registered:
        _exit_hook_registered = True
        atexit.register(_close_open_clients)
    _open_sync_clients.add(client)


def _close_open_clients() -> None:
    for client in list(_open_sync_clients):
        try:
            client.close()
        except Exception:
            logger.debug("closing %r at exit failed", client, exc_info=True)



class _Done:
    """An awaitable that is already done (what an asynchronous client's ``cancel`` returns)."""

    def __await__(self) -> Generator[Any, None, None]:
        return
        yield


class Client(ClientDiagnostics):
    """A connection to a dsched scheduler (see the module docstring)."""

    def __init__(
        self,
        address: Any = None,
        *,
        asynchronous: bool = False,
        name: str = "",
        timeout: float = 10.0,
        security: Security | None = None,
        set_as_default: bool = False,
        reconnect_timeout: float = 0.0,
        **cluster_kwargs: Any,
    ) -> None:
        self.asynchronous = asynchronous
        self._dask_default: DefaultScheduler | None = None
        self.timeout = timeout
        self.status = "newly-created"
        self.cluster: Any = None
        self._owns_cluster = False
        self._cluster_kwargs = cluster_kwargs
        self._address = ""
        if isinstance(address, str):
            self._address = address
        elif address is not None:
            if not hasattr(address, "scheduler_address"):
                raise TypeError(f"Client needs an address or a cluster, not {type(address).__name__}")
            self.cluster = address
        if cluster_kwargs and address is not None:
            raise TypeError(f"unexpected arguments {sorted(cluster_kwargs)} (only used to start a LocalCluster)")
        if address is None:
            if security is not None:
                cluster_kwargs["security"] = security  # the cluster this client starts uses it
        elif security is None:
            # A cluster object knows its own (generated) secret; otherwise the environment says.
            cluster_security = getattr(self.cluster, "security", None)
            if isinstance(cluster_security, Security):
                security = cluster_security
            else:
                security = security_for(self._address or str(self.cluster.scheduler_address))
        self._state = ClientState()
        self._link = SchedulerLink(
            self._state, name=name, security=security, timeout=timeout, reconnect_timeout=reconnect_timeout
        )
        self._thread: LoopThread | None = None
        if not asynchronous:
            self._start_sync()
        if set_as_default:
            self.as_default()

    # -- lifecycle ---------------------------------------------------------------------

    def _start_cluster_sync(self) -> None:
        if self.cluster is None:
            from dsched._cluster import LocalCluster

            self.cluster = LocalCluster(**self._cluster_kwargs)
            self._owns_cluster = True
            self._link.use_security(self.cluster.security)
        self._address = self.cluster.scheduler_address

    def _start_sync(self) -> None:
        try:
            if not self._address:
                self._start_cluster_sync()
            self._thread = LoopThread("dsched-client-loop")
            self._thread.call(self._link.open, self._address)
        except BaseException:
            self._stop_sync()
            self.status = "failed"
            raise
        self.status = "running"
        _track_open_client(self)

    async def _start_async(self) -> Client:
        if self.status == "running":
            return self
        if self.status != "newly-created":
            raise RuntimeError(f"the client is {self.status}: it can be started once")
        try:
            if not self._address:
                if self.cluster is None:
                    from dsched._cluster import LocalCluster

                    self.cluster = await LocalCluster(asynchronous=True, **self._cluster_kwargs)
                    self._owns_cluster = True
                    self._link.use_security(self.cluster.security)
                self._address = self.cluster.scheduler_address
            await self._link.open(self._address)
        except BaseException:
            self.status = "failed"
            if self._owns_cluster:
                await self.cluster.close()
            raise
        self.status = "running"
        return self

    def __await__(self) -> Generator[Any, None, Client]:
        return self._start_async().__await__()

    async def __aenter__(self) -> Client:
        return await self._start_async()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._close_async()

    def __enter__(self) -> Client:
        if self.asynchronous:
            raise TypeError("an asynchronous Client is used with 'async with'")
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self, timeout: float | None = None) -> Any:
        """Release everything, tell the scheduler ``Close``, disconnect; pending futures are cancelled.

        Also closes a ``LocalCluster`` the client started.  Idempotent.  An
        asynchronous client returns an awaitable.
        """
        if self.asynchronous:
            return self._close_async()
        if self.status in ("closing", "closed"):
            return None
        self.status = "closing"
        self._restore_dask_default()
        try:
            if self._thread is not None:
                self._thread.call(self._link.close)
        finally:
            self._stop_sync()
            self.status = "closed"
        return None

    def _stop_sync(self) -> None:
        if self._thread is not None:
            self._thread.stop()
            self._thread = None
        if self._owns_cluster and self.cluster is not None:
            self._owns_cluster = False
            self.cluster.close()

    async def _close_async(self) -> None:
        if self.status in ("closing", "closed"):
            return
        self.status = "closing"
        self._restore_dask_default()
        try:
            await self._link.close()
            if self._owns_cluster and self.cluster is not None:
                self._owns_cluster = False
                await self.cluster.close()
        finally:
            self.status = "closed"

    def __del__(self) -> None:
        if sys.is_finalizing():  # too late: the loop thread may be frozen already
            return
        thread = getattr(self, "_thread", None)
        if thread is not None and getattr(self, "status", "") == "running":
            try:
                self.close()
            except Exception:
                pass

    # -- what it is connected to ---------------------------------------------------------

    @property
    def id(self) -> str:
        """The id the scheduler knows this client by (its ``name``, or one it generated)."""
        welcome = self._link.welcome
        return welcome.client_id if welcome is not None else ""

    @property
    def scheduler_address(self) -> str:
        return self._address

    def __repr__(self) -> str:
        return f"<Client: {self._address!r} id={self.id!r} status={self.status!r}>"

    def _call(self, func: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> Any:
        """An asynchronous client's coroutine, or a synchronous client's blocking call of it."""
        if self.asynchronous:
            return func(*args)
        thread = self._thread
        if thread is None:
            raise ClientDisconnectedError(f"the client is {self.status}")
        return thread.call(func, *args)

    def _check_running(self) -> None:
        if self.status != "running":
            raise ClientDisconnectedError(f"the client is {self.status}")

    # -- submitting ----------------------------------------------------------------------

    def submit(
        self,
        func: Callable[..., Any],
        *args: Any,
        key: str | None = None,
        workers: str | Iterable[str] | None = None,
        resources: Mapping[str, float] | None = None,
        retries: int | None = None,
        priority: int = 0,
        allow_other_workers: bool = False,
        pure: bool = True,
        **kwargs: Any,
    ) -> Future:
        """Run ``func(*args, **kwargs)`` on the cluster; a ``Future`` of its result.

        Futures among the arguments (nested anywhere) become dependencies and are
        replaced by their values on the worker.  ``pure=True`` names the key
        after the function and arguments, so the same call made twice shares
        one key; ``priority``: higher runs earlier; ``workers``: addresses or
        names allowed to run it (``allow_other_workers`` makes that a preference).
        """
        if not callable(func):
            raise TypeError(f"submit needs a callable, not {type(func).__name__}")
        self._check_running()
        function = pickle_function(func)
        payload, deps = pickle_args(args, kwargs)
        if key is None:
            key = f"{funcname(func)}-{token(payload, function.digest) if pure else random_token()}"
        task = p.GraphTask(
            key, deps, 0, payload, core_priority(priority), retries or 0, workers_list(workers),
            resources_dict(resources), allow_other_workers,
        )
        (state,) = self._state.submit([function.data], [task])
        self._link.wake()
        return Future(key, self, state)

    def compute_graph(
        self,
        graph: Graph,
        outputs: Collection | Iterable[Collection],
        *,
        priority: int = 0,
        retries: int | None = None,
        workers: str | Iterable[str] | None = None,
        resources: Mapping[str, float] | None = None,
        allow_other_workers: bool = False,
    ) -> Any:
        """Send a high-level graph (:mod:`dsched.graph`); futures of the outputs' partitions.

        One collection gives a list of futures (one per partition), several a
        list of such lists.  The scheduler expands the layers into tasks; the
        options apply to every one of them, as in ``submit``.
        """
        self._check_running()
        single = isinstance(outputs, Collection)
        chosen = [outputs] if isinstance(outputs, Collection) else list(outputs)
        options = layer_options(
            core_priority(priority), retries or 0, workers_list(workers), resources_dict(resources), allow_other_workers
        )
        wanted = [key for collection in chosen for key in collection.keys()]
        futures = self._submit_layers(graph.message(chosen, options), wanted)
        grouped: list[list[Future]] = []
        start = 0
        for collection in chosen:
            grouped.append(futures[start : start + collection.npartitions])
            start += collection.npartitions
        return grouped[0] if single else grouped

    def _submit_layers(self, message: p.SubmitLayers, wanted: list[str]) -> list[Future]:
        states = self._state.submit_layers(message, wanted)
        self._link.wake()
        return [Future(state.key, self, state) for state in states]

    def map(
        self,
        func: Callable[..., Any],
        *iterables: Iterable[Any],
        key: str | list[str] | None = None,
        workers: str | Iterable[str] | None = None,
        retries: int | None = None,
        resources: Mapping[str, float] | None = None,
        priority: int = 0,
        allow_other_workers: bool = False,
        pure: bool = True,
        batch_size: int | None = None,
        as_layer: bool | None = None,
        **kwargs: Any,
    ) -> list[Future] | FutureSequence:
        """``submit(func, *args, **kwargs)`` for each ``args`` of ``zip(*iterables)``, as one submission.

        The function is pickled once; ``key`` is a key prefix, or a list of keys;
        ``batch_size`` splits the submission into messages of that many tasks.
        ``as_layer=True`` sends one Map layer, expanded on the scheduler, instead
        of a task per input: a few bytes per input and far less client time,
        with keys ``"('<prefix><token>', i)"``; it cannot take futures among
        the arguments.  By default (``as_layer=None``) a map over
        ``MAP_LAYER_MIN_INPUTS`` (10,000) or more inputs is sent as a layer
        when it can be (no futures among the arguments, no ``batch_size``, no
        list of keys).  A map sent as a layer returns a :class:`FutureSequence`
        (its futures made when used: the call's cost per input is pickling
        it); others return a list of futures.
        """
        if not callable(func):
            raise TypeError(f"map needs a callable, not {type(func).__name__}")
        if not iterables:
            raise TypeError("map needs at least one iterable")
        self._check_running()
        explicit = list(key) if isinstance(key, (list, tuple)) else None
        prefix = (key if isinstance(key, str) else funcname(func)) + "-"
        if as_layer and (explicit is not None or batch_size is not None):
            raise ValueError("map(as_layer=True) names its keys itself and sends one message: no key list or batch_size")
        priority = core_priority(priority)
        workers_ = workers_list(workers)
        resources_ = resources_dict(resources)
        with gc_paused():
            rows = list(zip(*iterables))
            if as_layer and not rows:
                return FutureSequence(self, LayerHold("", 0))
            layer = as_layer if as_layer is not None else (
                explicit is None and batch_size is None and len(rows) >= MAP_LAYER_MIN_INPUTS and "'" not in prefix
            )
            if layer and rows:
                if "'" in prefix:
                    raise ValueError(f"a map sent as a layer needs a key prefix without quotes, not {prefix!r}")
                options = layer_options(priority, retries or 0, workers_, resources_, allow_other_workers)
                message = map_layer(func, prefix, rows, kwargs or None, pure, options)
                if message is not None:
                    hold = self._state.submit_map_layer(message, message.maps[0].name, len(rows))
                    self._link.wake()
                    return FutureSequence(self, hold)
                if as_layer:
                    raise ValueError(
                        "map(as_layer=True): the arguments refer to futures or exceed one message "
                        f"({MAX_SUBMIT_BYTES // 2**20} MiB); a Map layer cannot hold them, use as_layer=False"
                    )
            function = pickle_function(func)
            tasks = map_tasks(
                function.digest, prefix, explicit, rows, kwargs or None, pure, priority, retries or 0,
                workers_, resources_, allow_other_workers,
            )
            states: list[KeyState] = []
            for batch in batches(tasks, batch_size):
                states.extend(self._state.submit([function.data], batch))
            self._link.wake()
            return [Future(task.key, self, state) for task, state in zip(tasks, states)]

    def get(
        self,
        dsk: Mapping[Any, Any],
        keys: Any,
        *,
        sync: bool = True,
        priority: int = 0,
        retries: int | None = None,
        resources: Mapping[str, float] | None = None,
        workers: str | Iterable[str] | None = None,
        allow_other_workers: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Compute a Dask task graph (``{key: (func, *args) | value}``, or a dask expression); results nested as ``keys``.

        The keys are released once their results are here.  ``sync=False``
        returns futures (in the same nesting) instead.
        """
        self._check_running()
        # A dask expression (what dask.compute hands a scheduler) gets keys of its own: dask may define a
        # key differently in another graph, which the scheduler would refuse while it knows the key.
        suffix = "" if isinstance(dsk, Mapping) else "@" + random_token()[:12]
        with gc_paused():
            graph = GraphPlan(
                dsk, keys, priority=core_priority(priority), retries=retries or 0, resources=resources_dict(resources),
                workers=workers_list(workers), allow_other_workers=allow_other_workers, suffix=suffix,
            )
            states = self._submit_plan(graph)
        futures = {key: Future(key, self, state) for key, state in zip(graph.wanted, states)}
        structure = graph.nest(futures)
        if not sync:
            return structure
        if self.asynchronous:
            return self._get_async(structure, list(futures.values()))
        try:
            return self.gather(structure)
        finally:
            for future in futures.values():
                future.release()

    def _submit_plan(self, graph: GraphPlan) -> list[KeyState]:
        """Send a converted graph; hold (and return the states of) its wanted keys.

        A big graph goes out in parts as it is converted, so the cluster starts
        on the first tasks while the client still pickles the rest: each part's
        keys are held until the last part is in (a later part may need them),
        then let go, leaving only the wanted keys held.
        """
        if graph.size < PARTS_MIN_SIZE:
            (part,) = graph.parts(first=sys.maxsize)
            states = self._state.submit(part.functions, part.tasks, graph.wanted)
            self._link.wake()
            return states
        bridging: list[KeyState] = []
        try:
            for part in graph.parts(first=FIRST_PART):
                bridging.extend(self._state.submit(part.functions, part.tasks, [t.key for t in part.tasks]))
                self._link.wake()
            return self._state.submit([], [], graph.wanted)
        finally:
            for state in bridging:
                self._state.queue_release(state)
            self._link.wake()

    async def _get_async(self, structure: Any, futures: list[Future]) -> Any:
        try:
            return await self._gather_async(structure, "raise")
        finally:
            for future in futures:
                future.release()

    # -- Dask collections (logic in dsched._dask_collections) ------------------------------

    def compute(self, collections: Any, *, optimize_graph: bool = True, **submit: Any) -> Any:
        """Start computing Dask collections: a Future of each one's result (one Future for one collection).

        ``submit`` takes ``get``'s options (``priority``, ``retries``, ``resources``, ``workers`` ...).
        """
        self._check_running()
        return compute(self, collections, optimize_graph=optimize_graph, **submit)

    def persist(self, collections: Any, *, optimize_graph: bool = True, **submit: Any) -> Any:
        """Dask collections (one, or a list) of the same types, their partitions computed and kept on the cluster."""
        self._check_running()
        return persist(self, collections, optimize_graph=optimize_graph, **submit)

    def as_default(self) -> Client:
        """Make this client dask's default scheduler (``x.compute()``) until it closes."""
        if self.asynchronous:
            raise TypeError("dask.compute blocks: only a synchronous client can be its default scheduler")
        if self._dask_default is None:
            self._dask_default = DefaultScheduler(self.get)
        return self

    def _restore_dask_default(self) -> None:
        if self._dask_default is not None:
            self._dask_default.restore()
            self._dask_default = None

    # -- results -------------------------------------------------------------------------

    def gather(self, futures: Any, errors: str = "raise", direct: bool | None = None) -> Any:
        """The results of futures in any nesting of lists, tuples, sets and dicts (kept as given).

        ``errors="raise"`` raises the first erred future's exception as soon as
        it is known; ``"skip"`` leaves erred futures out.
        """
        if errors not in ("raise", "skip"):
            raise ValueError(f"errors must be 'raise' or 'skip', not {errors!r}")
        if self.asynchronous:
            return self._gather_async(futures, errors)
        if type(futures) is FutureSequence:  # its keys' states, without making a future per key
            states = futures._states()
            raw = self._call(self._link.gather_raw, states, errors == "raise", None)
            return unpack_states(states, raw, errors)
        found = futures_in(futures)
        raw = self._call(self._link.gather_raw, [f._state for f in found], errors == "raise", None)
        return unpack(futures, found, raw, errors)

    async def _gather_async(self, futures: Any, errors: str) -> Any:
        if type(futures) is FutureSequence:
            states = futures._states()
            return unpack_states(states, await self._link.gather_raw(states, errors == "raise", None), errors)
        found = futures_in(futures)
        raw = await self._link.gather_raw([f._state for f in found], errors == "raise", None)
        return unpack(futures, found, raw, errors)

    def _future_result(self, future: Future, timeout: float | None) -> Any:
        if self.asynchronous:
            return self._future_result_async(future, timeout)
        state = future._state
        raw = self._call(self._link.gather_raw, [state], True, timeout)
        return value_of(state, raw)

    async def _future_result_async(self, future: Future, timeout: float | None) -> Any:
        state = future._state
        raw = await self._link.gather_raw([state], True, timeout)
        return value_of(state, raw)

    def _future_exception(self, future: Future, timeout: float | None) -> Any:
        if self.asynchronous:
            return self._future_exception_async(future, timeout)
        self._call(self._wait_one, future._state, timeout)
        return None if future._state.status == FINISHED else future._state.error()

    async def _future_exception_async(self, future: Future, timeout: float | None) -> BaseException | None:
        await self._wait_one(future._state, timeout)
        return None if future._state.status == FINISHED else future._state.error()

    async def _wait_one(self, state: KeyState, timeout: float | None) -> None:
        with anyio.fail_after(timeout):
            await self._link.wait_done([state])

    # -- scatter, cancel, callbacks --------------------------------------------------------

    def scatter(
        self,
        data: Any,
        workers: str | Iterable[str] | None = None,
        broadcast: bool = False,
        hash: bool = True,
        direct: bool | None = None,
    ) -> Any:
        """Put data on workers; futures of it (already finished), shaped like ``data``.

        ``data`` is one object, a list/tuple/set of objects (a list of futures)
        or a dict (futures under the same keys, which become the keys on the
        cluster).  Values are spread round robin over the workers (or the
        ``workers`` given); ``broadcast=True`` puts every value on each of them.
        """
        self._check_running()
        if isinstance(data, dict):
            keys = [str(k) for k in data]
            payloads = {key: value_key(value)[1] for key, value in zip(keys, data.values())}
        else:
            items = list(data) if isinstance(data, (list, tuple, set, frozenset)) else [data]
            pairs = [value_key(value, pure=hash) for value in items]
            keys = [key for key, _ in pairs]
            payloads = dict(pairs)
        if self.asynchronous:
            return self._scatter_async(data, keys, payloads, workers_list(workers), broadcast)
        held = self._call(self._link.scatter, payloads, workers_list(workers), broadcast)
        return self._scattered_futures(data, keys, held)

    async def _scatter_async(
        self, data: Any, keys: list[str], payloads: dict[str, bytes], workers: list[str] | None, broadcast: bool
    ) -> Any:
        held = await self._link.scatter(payloads, workers, broadcast)
        return self._scattered_futures(data, keys, held)

    def _scattered_futures(self, data: Any, keys: list[str], held: dict[str, KeyState]) -> Any:
        seen: set[str] = set()
        extra = []
        futures = []
        for key in keys:
            state = held[key]
            if key in seen:
                extra.append(state)  # the same value twice: one more hold on the shared state
            seen.add(key)
            futures.append(Future(key, self, state))
        if extra:
            self._state.hold(extra)
        if isinstance(data, dict):
            return dict(zip(data, futures))
        if isinstance(data, (list, tuple, set, frozenset)):
            return futures if isinstance(data, (list, set, frozenset)) else type(data)(futures)
        return futures[0]

    def cancel(self, futures: Any, force: bool = False) -> Any:
        """Cancel futures: the scheduler drops this client's hold (every client's with ``force``).

        Their status becomes "cancelled" before this returns; ``result()`` then
        raises ``FutureCancelledError``.
        """
        if type(futures) is FutureSequence:  # the whole layer, futures made later included
            return self._cancel_on_loop(self._cancel_layer, futures._hold, force)
        found = futures_in(futures)
        states = [f._state for f in found]
        if self.asynchronous:
            self._link.cancel(states, force)
            return _Done()
        if self._thread is not None and self.status == "running":
            self._thread.call(self._link.cancel, states, force)
        return None

    def _cancel_on_loop(self, func: Callable[[Any, bool], None], what: Any, force: bool) -> Any:
        if self.asynchronous:
            func(what, force)
            return _Done()
        if self._thread is not None and self.status == "running":
            self._thread.call(func, what, force)
        return None

    def _cancel_layer(self, hold: LayerHold, force: bool) -> None:
        run_notifications(self._state.cancel_layer(hold, force))
        self._link.flush()

    def _release_layer(self, hold: LayerHold) -> None:
        """A ``FutureSequence`` holding ``hold`` is gone (any thread, maybe inside ``__del__``)."""
        if self._state.closed is None:
            self._state.queue_layer_release(hold)
            self._link.wake()

    def _add_done_callback(self, future: Future, fn: Callable[[Future], object]) -> None:
        watcher = CallbackWatcher(future, fn)
        self._on_loop(self._watch, [future._state], watcher)

    def _watch(self, states: list[KeyState], watcher: Any) -> None:
        """Register a watcher (on the loop thread), telling it at once about done states."""
        done = self._state.watch(states, watcher)
        run_notifications([(state, [watcher]) for state in done])

    def _on_loop(self, func: Callable[..., None], *args: Any) -> None:
        """Run ``func(*args)`` on the loop thread: now if this is it, else soon."""
        link = self._link
        loop = link._loop
        if loop is None or threading.get_ident() == link.loop_thread_id:
            func(*args)
        else:
            loop.call_soon_threadsafe(func, *args)

    def _release_state(self, state: KeyState) -> None:
        """A future of ``state`` is gone (any thread, maybe inside ``__del__``)."""
        if self._state.closed is None:  # a closed client holds nothing any more
            self._state.queue_release(state)
            self._link.wake()

    # -- the cluster -----------------------------------------------------------------------

    def wait_for_workers(self, n_workers: int = 1, timeout: float | None = None) -> Any:
        """Block (or await) until at least ``n_workers`` workers are registered; ``TimeoutError`` after ``timeout``."""
        if self.asynchronous:
            return self._wait_for_workers_async(n_workers, timeout)
        self._call(self._link.wait_for_workers, n_workers, timeout)
        return None

    async def _wait_for_workers_async(self, n_workers: int, timeout: float | None) -> None:
        await self._link.wait_for_workers(n_workers, timeout)

    def scheduler_info(self) -> Any:
        """``{"id", "address", "type", "workers": {address: {"name", "nthreads", "memory_limit", "resources"}}}``."""
        if self.asynchronous:
            return self._scheduler_info_async()
        return self._info(self._call(self._link.get_workers))

    async def _scheduler_info_async(self) -> dict[str, Any]:
        return self._info(await self._link.get_workers())

    def _info(self, workers: list[p.WorkerInfo]) -> dict[str, Any]:
        welcome = self._link.welcome
        return {
            "type": "Scheduler",
            "id": welcome.scheduler_id if welcome is not None else "",
            "address": self._address,
            "workers": {
                w.address: {
                    "name": w.name, "nthreads": w.nthreads, "memory_limit": w.memory_limit,
                    "resources": dict(w.resources),
                }
                for w in workers
            },
        }

    def retire_workers(self, workers: str | Iterable[str], timeout: float = 60.0) -> Any:
        """Retire workers (addresses or names) gracefully; the addresses of those retired (awaitable if asynchronous).

        Each gets no new task, what it was to run goes elsewhere, and results
        only it holds are copied to other workers before it is told to close:
        futures keep their data.  Returns once they are gone; after ``timeout``
        seconds a worker is closed even if copies are missing (those results
        are recomputed when needed).  Unknown workers are ignored.
        """
        names = [workers] if isinstance(workers, str) else list(workers)
        if timeout < 0:
            raise ValueError(f"timeout must be at least 0, not {timeout}")
        return self._call(self._link.retire_workers, names, float(timeout))

    def nthreads(self) -> Any:
        """``{worker address: threads}`` (awaitable in an asynchronous client)."""
        if self.asynchronous:
            return self._nthreads_async()
        return {w.address: w.nthreads for w in self._call(self._link.get_workers)}

    async def _nthreads_async(self) -> dict[str, int]:
        return {w.address: w.nthreads for w in await self._link.get_workers()}
