"""Translation between wire messages and core events / instructions for the scheduler server.

Pure, synchronous functions: messages in, events out (``worker_events``,
``client_events``); instructions in, messages queued on per-connection
:class:`~dsched._batched.BatchedSender` objects out (``route``).  Queuing is a
list append: no coroutine, no write, no pickling per task.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final, TypeAlias

from msgspec import Raw

import sched_core as sc
from dsched._batched import BatchedSender
from dsched._comm import Comm, CommClosedError
from dsched import _protocol as p

if TYPE_CHECKING:
    from dsched._scheduler_server import SchedulerServer

__all__ = ["ClientConn", "FunctionTable", "LayerFeed", "send_quietly", "WorkerConn", "answer_query", "client_events", "route", "worker_events"]

logger = logging.getLogger("dsched.scheduler")

Event: TypeAlias = "sc.SchedulerEvent | tuple[str, Any] | LayerFeed"

# The core's priorities are unbounded ints (a user priority is shifted far left
# of the graph order); the wire carries int64.  A worker only orders the tasks
# it holds, so clamping an extreme priority keeps it ahead of (or behind) every
# ordinary task there; the scheduler itself orders by the exact value.
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1


class WorkerConn:
    """A connected, registered worker."""

    __slots__ = ("address", "closing", "comm", "cpu", "functions_sent", "in_memory", "last_heard", "managed", "memory",
        "retire_deadline", "sender", "spilled")

    def __init__(self, comm: Comm, sender: BatchedSender[p.SchedulerToWorker], address: str) -> None:
        self.comm = comm
        self.sender = sender
        self.address = address
        self.functions_sent: set[int] = set()
        self.last_heard = time.monotonic()
        self.closing = False  # told to close (retired) or the scheduler stops: its departure is expected
        self.retire_deadline = 0.0  # retiring (monotonic time by which it is closed anyway); 0: not retiring
        self.memory = 0  # process memory and CPU percent, from the last heartbeat
        self.cpu: float | None = None
        self.managed = 0  # bytes of results in its memory and spilled to its disk, from the last heartbeat
        self.spilled = 0
        self.in_memory = 0  # results it stores, from the last heartbeat


class ClientConn:
    __slots__ = ("client", "closing", "comm", "sender")

    def __init__(self, comm: Comm, sender: BatchedSender[p.SchedulerToClient], client: str) -> None:
        self.comm = comm
        self.sender = sender
        self.client = client
        self.closing = False


class FunctionTable:
    """Pickled functions, stored once each, keyed by a digest of their bytes.

    ``intern(payload)`` returns the function's ref (a small int); ``functions[ref]``
    its bytes.  The server replaces the whole table when no task is left
    (and tells the workers with ``ForgetFunctions``).
    """

    __slots__ = ("by_digest", "functions")

    def __init__(self) -> None:
        self.by_digest: dict[bytes, int] = {}
        self.functions: list[bytes] = []

    def intern(self, payload: p.Payload) -> int:
        view = p.payload_view(payload)
        digest = hashlib.blake2b(view, digest_size=20).digest()
        ref = self.by_digest.get(digest)
        if ref is None:
            ref = len(self.functions)
            self.functions.append(view.tobytes())
            self.by_digest[digest] = ref
        return ref


# -- messages -> events -------------------------------------------------------------


def worker_events(server: SchedulerServer, conn: WorkerConn, messages: list[p.WorkerToScheduler]) -> list[sc.SchedulerEvent]:
    address = conn.address
    out: list[sc.SchedulerEvent] = []
    append = out.append
    task_done = server.diagnostics.task_done
    for msg in messages:
        if isinstance(msg, p.TaskFinished):
            append(sc.TaskFinished(address, msg.key, msg.nbytes, msg.duration, msg.run_id))
            task_done(msg.key, address, msg.start, msg.duration, False)
        elif isinstance(msg, p.TaskErred):
            append(sc.TaskErred(address, msg.key, msg.exception, msg.traceback, msg.run_id))
            task_done(msg.key, address, msg.start, msg.duration, True)
        elif isinstance(msg, p.Heartbeat):
            append(sc.WorkerHeartbeat(address, msg.latency, msg.memory))
            conn.memory = msg.memory
            conn.cpu = msg.cpu
            conn.managed = msg.managed_bytes
            conn.spilled = msg.spilled_bytes
            conn.in_memory = msg.in_memory
            send_quietly(conn.sender, p.HeartbeatAck(msg.seq, server.heartbeat_interval()))
        elif isinstance(msg, p.ProfileData):
            server.diagnostics.profile_arrived(address, msg)
        elif isinstance(msg, p.WorkerStatus):
            append(sc.WorkerStatusChanged(address, msg.paused))
        elif isinstance(msg, p.ReplicasAdded):
            append(sc.ReplicasAdded(address, msg.keys, dict(msg.nbytes), msg.seen_batch))
        elif isinstance(msg, p.MissingData):
            append(sc.MissingData(address, msg.key, msg.errant_worker, msg.seen_batch))
        elif isinstance(msg, p.StealResponse):
            append(sc.StealResponse(address, msg.key, msg.state, msg.run_id))
        elif isinstance(msg, p.Close):
            # The worker is leaving: retire it (its only copies move first); it
            # goes when the scheduler answers Close.  In order: after its news before it.
            retiring = server.retirements.start(conn)
            if retiring is not None:
                append(retiring)
        else:  # RegisterWorker again
            raise p.ProtocolError(f"unexpected {type(msg).__name__} from a registered worker")
    return out


# A client's request about this many keys or more becomes several events, which the
# server's queue spreads over ticks (a million keys released at once held the loop
# for a second).
KEYS_PER_EVENT: Final = 10_000


def key_slices(keys: list[str]) -> list[list[str]]:
    if len(keys) <= KEYS_PER_EVENT:
        return [keys]
    return [keys[i:i + KEYS_PER_EVENT] for i in range(0, len(keys), KEYS_PER_EVENT)]


def client_events(server: SchedulerServer, conn: ClientConn, messages: list[p.ClientToScheduler]) -> list[Event]:
    client = conn.client
    out: list[Event] = []
    for msg in messages:
        if isinstance(msg, p.SubmitGraph):
            out.extend(_graph_events(server, conn, msg))
        elif isinstance(msg, p.SubmitLayers):
            out.extend(_layer_events(server, conn, msg))
        elif isinstance(msg, p.ReleaseKeys):
            out.extend(sc.ClientReleasesKeys(client, keys) for keys in key_slices(msg.keys))
        elif isinstance(msg, p.WantKeys):
            out.extend(sc.ClientWantsKeys(client, keys) for keys in key_slices(msg.keys))
        elif isinstance(msg, p.CancelKeys):
            out.extend(sc.CancelKeys(client, keys, msg.force) for keys in key_slices(msg.keys))
        elif isinstance(msg, p.Scattered):
            over = _check_scatter_limits(server, msg)
            if over is not None:
                _refuse_over_limit(server, conn, over[0], over[1], list(msg.nbytes))
            else:
                out.append(sc.KeysScattered(client, msg.workers, dict(msg.nbytes)))
        elif isinstance(msg, (p.WhoHas, p.GetWorkers)):
            out.append((client, msg))
        elif isinstance(msg, p.Diagnostics):
            server.diagnostics.request(conn, msg)  # answered by a task of its own, off the queue
        elif isinstance(msg, p.RetireWorkers):
            server.retirements.request(conn, msg)
        else:  # Close
            conn.closing = True
            break
    return out


def _refuse_over_limit(server: SchedulerServer, conn: ClientConn, limit: str, message: str, keys: list[str]) -> None:
    """Refuse one request over ``limit``: a ``ClientError`` to its client (whose futures
    for ``keys`` get it), counted; the scheduler's state is untouched."""
    server.count_refusal(limit, conn.comm.peer, message, logging.INFO)
    send_quietly(conn.sender, p.ClientError(LIMIT_EXCEEDED, message, keys))


# The ClientError kind of every request refused by a limit of the scheduler's.
LIMIT_EXCEEDED = "limit-exceeded"


def _long_key(server: SchedulerServer, keys: Iterable[str]) -> str | None:
    """The first key over ``max_key_length``, if any (one len() per key)."""
    limit = server.limits.max_key_length
    for key in keys:
        if len(key) > limit:
            return key
    return None


def _key_too_long(server: SchedulerServer, key: str) -> str:
    limit = server.limits.max_key_length
    return f"key {key[:40]!r}... is {len(key):,} characters long, over max_key_length={limit:,}"


def _check_graph_limits(server: SchedulerServer, msg: p.SubmitGraph) -> tuple[str, str] | None:
    """``(limit, message)`` for a submission over a limit, or None."""
    limits = server.limits
    if len(msg.tasks) > limits.max_graph_tasks:
        return "max_graph_tasks", (
            f"a graph of {len(msg.tasks):,} tasks is over max_graph_tasks={limits.max_graph_tasks:,} "
            "(split it, or describe it as layers)"
        )
    long_key = _long_key(server, (t.key for t in msg.tasks))
    if long_key is not None:
        return "max_key_length", _key_too_long(server, long_key)
    return None


def _check_scatter_limits(server: SchedulerServer, msg: p.Scattered) -> tuple[str, str] | None:
    """Scattered keys become tasks too: the same bounds as a graph's."""
    limits = server.limits
    if len(msg.nbytes) > limits.max_graph_tasks:
        return "max_graph_tasks", (
            f"a scatter of {len(msg.nbytes):,} keys is over max_graph_tasks={limits.max_graph_tasks:,}"
        )
    long_key = _long_key(server, msg.nbytes)
    if long_key is not None:
        return "max_key_length", _key_too_long(server, long_key)
    return None


def _graph_events(server: SchedulerServer, conn: ClientConn, msg: p.SubmitGraph) -> list[Event]:
    over = _check_graph_limits(server, msg)
    if over is not None:
        _refuse_over_limit(server, conn, over[0], over[1], list(msg.wanted))
        return []
    client = conn.client
    refs = [server.functions.intern(f) for f in msg.functions]
    TaskSpec = sc.TaskSpec
    specs = [
        TaskSpec(
            t.key, t.dependencies, (refs[t.function], t.args), t.priority, t.retries,
            t.workers, t.resources, t.allow_other_workers,
        )
        for t in msg.tasks
    ]
    size = server.chunk_size
    if len(specs) <= size:
        return [sc.GraphSubmitted(client, specs, msg.wanted)]
    # Feed the core in chunks (one per tick), in submission order: a chunk's
    # dependencies must come in it or earlier, so the client sends a topological order.
    # The core forgets what nobody holds, so each chunk is submitted by a private
    # pseudo-client holding the keys later chunks depend on (and the client's wanted
    # keys, until the client's own hold is taken right after); it is removed after the
    # last chunk.  Its ClientErrors are forwarded to the client, its other news dropped.
    chunk_of: dict[str, int] = {}
    for i, spec in enumerate(specs):
        chunk_of[spec.key] = i // size
    n_chunks = (len(specs) + size - 1) // size
    holds: list[list[str]] = [[] for _ in range(n_chunks)]
    wanted: list[list[str]] = [[] for _ in range(n_chunks)]
    for key in msg.wanted:
        j = chunk_of.get(key, -1)
        if j >= 0:
            holds[j].append(key)
        wanted[j].append(key)  # keys already known: the client's hold is taken at the end
    seen: set[str] = set(msg.wanted)
    for i, spec in enumerate(specs):
        j = i // size
        for dep in spec.dependencies:
            k = chunk_of.get(dep, j)
            if k < j and dep not in seen:
                seen.add(dep)
                holds[k].append(dep)
    server.chunked_graphs += 1
    holder = f"{client}\x00chunking-{server.chunked_graphs}"
    out: list[Event] = [sc.ClientAdded(holder)]
    for i in range(n_chunks):
        out.append(sc.GraphSubmitted(holder, specs[i * size : (i + 1) * size], holds[i]))
        if wanted[i]:
            out.append(sc.ClientWantsKeys(client, wanted[i]))
    out.append(sc.ClientRemoved(holder))
    return out


class LayerFeed:
    """A ``SubmitLayers`` being expanded by the core's ``LayerExpander``, one chunk per tick.

    The server's queue holds this object where the submission arrived; each
    tick takes the next chunk (dependencies first).  A private pseudo-client
    (``holder``) submits the chunks.  It holds the keys later chunks may need
    (of layers that other layers read, and of layers whose tasks depend on
    each other) until every task that needs them is in, then lets them go a
    chunk at a time, so that no tick does more than a chunk's worth of work
    however big the graph (letting go of a million keys at once held the
    loop for a second).  The client's own hold on the keys it wants is taken
    with the chunk that defines them (so their results reach the client
    while later chunks are still expanding).  ``wanted`` (explicit keys) and
    ``wanted_layers`` (every key of those layers) say what it wants; keys of
    neither, needed by nothing later, are dropped as soon as they are in.
    ``options`` (priority, retries, restrictions), when given, go on every
    task.
    """

    __slots__ = ("cancelled", "client", "expander", "held", "holder", "options", "releasing", "wanted", "wanted_layers")

    def __init__(
        self,
        client: str,
        holder: str,
        expander: sc.LayerExpander,
        wanted: set[str],
        options: p.LayerOptions | None = None,
        wanted_layers: set[str] | None = None,
    ) -> None:
        self.client = client
        self.holder = holder
        self.expander = expander
        self.wanted = wanted
        self.wanted_layers = wanted_layers or set()
        self.options = options
        self.cancelled = False
        self.held: dict[int, list[str]] = {}  # layer index -> its keys the holder holds
        self.releasing: list[str] = []  # held keys nothing left to expand needs

    @property
    def done(self) -> bool:
        return self.cancelled or (self.expander.done and not self.held and not self.releasing)

    def cancel(self) -> None:
        """Its client is gone: expand no more (the next call removes the holder, releasing what it held)."""
        self.cancelled = True
        self.wanted = set()

    def next_events(self, budget: int) -> list[sc.SchedulerEvent]:
        if self.cancelled:
            return [sc.ClientRemoved(self.holder)]
        out: list[sc.SchedulerEvent] = []
        if self.releasing:
            # Letting go takes this tick: as much work as a chunk, and no more.
            out.append(sc.ClientReleasesKeys(self.holder, self.releasing[:budget]))
            del self.releasing[:budget]
        elif not self.expander.done:
            self._expand(budget, out)
        if self.expander.done and self.wanted:  # keys no layer defines: the core answers for those (known, or an error)
            out.append(sc.ClientWantsKeys(self.client, sorted(self.wanted)))
            self.wanted = set()
        if self.expander.done and not self.held and not self.releasing:
            out.append(sc.ClientRemoved(self.holder))
        return out

    def _expand(self, budget: int, out: list[sc.SchedulerEvent]) -> None:
        expander = self.expander
        specs = expander.next_chunk(budget)
        if self.options is not None:
            _apply_options(specs, self.options)
        held: list[str] = []  # the holder's, for later chunks
        mine: list[str] = []  # the client's
        passed: list[str] = []  # the client's only: the holder takes them just to hand them over
        wanted = self.wanted
        start = 0
        for layer_index, count in expander.spans:
            keys = [spec.key for spec in specs[start:start + count]]
            start += count
            hold = expander.needs_hold[layer_index]
            if hold:
                self.held.setdefault(layer_index, []).extend(keys)
                held.extend(keys)
            if expander.layers[layer_index].name in self.wanted_layers:
                found = keys
            elif wanted:
                found = [key for key in keys if key in wanted]
                wanted.difference_update(found)
            else:
                continue
            mine.extend(found)
            if not hold:
                passed.extend(found)
        # A task nobody wants at the end of the event that submits it is dropped, so the
        # holder takes the client's keys too, until the client's own hold is in.
        out.append(sc.GraphSubmitted(self.holder, specs, held + passed))
        if mine:
            out.append(sc.ClientWantsKeys(self.client, mine))
        if passed:
            out.append(sc.ClientReleasesKeys(self.holder, passed))
        done = expander.layers_done
        for layer_index in [i for i in self.held if expander.release_after[i] < done]:
            self.releasing.extend(self.held.pop(layer_index))


def _apply_options(specs: list[sc.TaskSpec], options: p.LayerOptions) -> None:
    for spec in specs:
        spec.priority = options.priority
        spec.retries = options.retries
        spec.workers = options.workers
        spec.resources = options.resources
        spec.allow_other_workers = options.allow_other_workers


class _OverLimit(ValueError):
    def __init__(self, limit: str, message: str) -> None:
        super().__init__(message)
        self.limit = limit


# Characters a layer's keys add to its name, at most: "('" + name + "-combine-NN" + "', " + index + ")".
_LAYER_KEY_OVERHEAD = 40


def _check_layer_names(server: SchedulerServer, layers: list[sc.Layer]) -> None:
    limit = server.limits.max_key_length
    for layer in layers:
        if len(layer.name) + _LAYER_KEY_OVERHEAD > limit:
            raise _OverLimit(
                "max_key_length",
                f"layer name {layer.name[:40]!r}... is {len(layer.name):,} characters long: its keys would be "
                f"over max_key_length={limit:,}",
            )


def _layer_events(server: SchedulerServer, conn: ClientConn, msg: p.SubmitLayers) -> list[Event]:
    refs = [server.functions.intern(f) for f in msg.functions]
    layers: list[sc.Layer] = []
    try:
        for kind, index in msg.order:
            if kind == 0:
                m = msg.maps[index]
                args: list[object] | None = list(m.args) if m.args is not None else None
                layers.append(sc.MapLayer(m.name, m.npartitions, refs[m.function], args, list(m.inputs), list(m.input_partitions)))
            elif kind == 2:
                sh = msg.shuffles[index]
                layers.append(sc.ShuffleLayer(sh.name, sh.input, sh.input_partitions, sh.npartitions, refs[sh.split], refs[sh.combine]))
            else:
                r = msg.reductions[index]
                chunk = refs[r.chunk] if r.chunk >= 0 else None
                layers.append(
                    sc.TreeReduceLayer(r.name, r.input, r.input_partitions, refs[r.combine], refs[r.aggregate], chunk, r.split_every)
                )
        expander = sc.LayerExpander(layers)
        if expander.total > server.max_layer_tasks:
            raise _OverLimit(
                "max_layer_tasks",
                f"the layers expand to {expander.total:,} tasks, over max_layer_tasks={server.max_layer_tasks:,} "
                "(the most this scheduler accepts in one submission)",
            )
        _check_layer_names(server, layers)
        defined = {layer.name for layer in layers}
        for name in msg.wanted_layers:
            if name not in defined:
                raise ValueError(f"wanted layer {name!r} is not in the graph")
    except ValueError as exc:
        keys = list(msg.wanted) + [sc.layer_key(name, 0) for name in msg.wanted_layers]
        if isinstance(exc, _OverLimit):
            _refuse_over_limit(server, conn, exc.limit, str(exc), keys)
        else:
            send_quietly(conn.sender, p.ClientError("invalid-layers", str(exc), keys))
        return []
    server.chunked_graphs += 1
    holder = f"{conn.client}\x00layers-{server.chunked_graphs}"
    return [sc.ClientAdded(holder), LayerFeed(conn.client, holder, expander, set(msg.wanted), msg.options, set(msg.wanted_layers))]


# -- instructions -> messages --------------------------------------------------------


def send_quietly(sender: BatchedSender[Any], msg: Any) -> None:
    try:
        sender.send(msg)
    except CommClosedError:
        pass  # the connection is going away; its handler removes it


def _payload(value: object) -> p.Payload:
    if isinstance(value, (bytes, Raw)):
        return value
    return b""


def route(server: SchedulerServer, instructions: list[sc.Instruction]) -> None:
    """Queue each instruction on its connection's sender, in order."""
    workers = server.workers
    clients = server.clients
    functions = server.functions.functions
    for ins in instructions:
        if isinstance(ins, sc.ComputeTask):
            wconn = workers.get(ins.worker)
            if wconn is None:
                continue
            spec = ins.run_spec
            call = 0
            index = 0
            keys: list[str] = []
            ref: int
            args: p.Payload
            if isinstance(spec, sc.LayerCall):
                ref = spec.function  # type: ignore[assignment]  # the server put a ref there
                args = spec.args if isinstance(spec.args, (bytes, Raw)) else b""
                call = 1 if spec.kind == sc.APPLY else 2 if spec.kind == sc.REDUCE else 3
                keys = spec.keys
                index = spec.index
            else:
                ref, args = spec  # type: ignore[misc]  # the server's (ref, args) pair
            if ref not in wconn.functions_sent:
                wconn.functions_sent.add(ref)
                send_quietly(wconn.sender, p.DefineFunction(ref, functions[ref]))
            priority = ins.priority
            if not _INT64_MIN <= priority <= _INT64_MAX:
                priority = _INT64_MIN if priority < 0 else _INT64_MAX
            send_quietly(
                wconn.sender,
                p.Compute(ins.key, ref, args, priority, ins.run_id, ins.who_has, ins.nbytes, ins.resources, call, keys, index),
            )
        elif isinstance(ins, sc.FreeKeys):
            wconn = workers.get(ins.worker)
            if wconn is not None:
                send_quietly(wconn.sender, p.FreeKeys(ins.keys))
        elif isinstance(ins, sc.StealRequest):
            wconn = workers.get(ins.worker)
            if wconn is not None:
                send_quietly(wconn.sender, p.StealRequest(ins.key, ins.run_id))
        elif isinstance(ins, sc.AcquireReplicas):
            wconn = workers.get(ins.worker)
            if wconn is not None:
                send_quietly(wconn.sender, p.AcquireReplicas(ins.who_has, ins.nbytes))
        elif isinstance(ins, sc.CloseWorker):
            server.retirements.close_worker(ins.worker, ins.reason)
        elif isinstance(ins, sc.ClientInstruction):
            cconn = clients.get(ins.client)
            if cconn is None and isinstance(ins, sc.ClientError) and "\x00" in ins.client:
                cconn = clients.get(ins.client.partition("\x00")[0])  # a chunked graph's holder
            if cconn is not None:
                send_quietly(cconn.sender, _client_message(ins))
        else:
            logger.error("unknown instruction %r", ins)


def _client_message(ins: sc.ClientInstruction) -> p.SchedulerToClient:
    if isinstance(ins, sc.ClientKeysInMemory):
        return p.KeysInMemory(ins.keys)
    if isinstance(ins, sc.ClientKeyErred):
        exc = ins.exception
        if isinstance(exc, sc.SchedulerError):
            return p.KeyFailed(ins.key, ins.blamed_key, exc.kind, exc.message)
        tb = ins.traceback if isinstance(ins.traceback, str) else ""
        return p.KeyErred(ins.key, ins.blamed_key, _payload(exc), tb)
    if isinstance(ins, sc.ClientKeyLost):
        return p.KeyLost(ins.key)
    if isinstance(ins, sc.ClientKeysCancelled):
        return p.KeysCancelled(ins.keys)
    if isinstance(ins, sc.ClientError):
        return p.ClientError(ins.kind, ins.message, ins.keys)
    raise TypeError(f"unknown client instruction {ins!r}")


def answer_query(server: SchedulerServer, client: str, query: Any) -> None:
    """Answer a WhoHas / GetWorkers from the current state (after the batch before it)."""
    conn = server.clients.get(client)
    if conn is None:
        return
    state = server.state
    if isinstance(query, p.WhoHas):
        who_has: dict[str, list[str]] = {}
        for key in query.keys:
            ts = state.tasks.get(key)
            if ts is not None and ts.who_has:
                who_has[key] = [ws.address for ws in ts.who_has]
        send_quietly(conn.sender, p.WhoHasReply(query.request, who_has))
    elif isinstance(query, p.GetWorkers):
        infos = [
            p.WorkerInfo(ws.address, ws.name, ws.nthreads, ws.memory_limit, dict(ws.resources))
            for ws in state.workers.values()
        ]
        send_quietly(conn.sender, p.WorkersReply(query.request, infos))
