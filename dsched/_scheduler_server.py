"""The scheduler server: bytes on sockets in, ``sched_core.SchedulerState`` in the middle.

One task per connection reads frames, decodes them with the connection's reused
:class:`~dsched._protocol.FrameDecoder` and translates each message into a core
event appended to a FIFO: ``_from_workers`` for workers' events (and ticks),
one per client for clients' events and queries.  A single consumer task drains
them once per loop tick, workers' events first (finished tasks free threads
and hold no one up), then the clients' in turn, calls ``state.handle_events``
once for the whole batch
and routes the instructions to per-connection :class:`~dsched._batched.BatchedSender`
queues (a list append each: no per-task coroutine, write or pickling).  Each
sender writes one frame per tick, stamped (scheduler -> worker) with
``state.batch``.

Functions: a ``SubmitGraph`` carries a table of pickled functions.  The server
keeps one table keyed by a digest of the function bytes; a task's ``run_spec``
is ``(function_ref, args)`` (``args`` the opaque ``msgspec.Raw`` as received),
which compares by value, so an identical resubmission dedups and a different
definition is refused by the core.  A worker gets ``DefineFunction`` the first
time it needs a ref.  Nothing is ever unpickled.

Large graphs: a ``SubmitGraph`` of more than ``chunk_size`` tasks is fed to the
core in chunks of ``chunk_size``, one chunk per tick (that client's events
queued behind it keep their order; other clients and the workers go on, so
results flow while a big graph arrives).  The chunks follow submission order, so a client must list
a task's dependencies before it (a topological order) for graphs that large,
and validation is atomic per chunk only.

Liveness: a closed worker connection is ``WorkerRemoved(expected=False)``
(``expected=True`` after a ``Close``); a periodic check removes workers not heard
from within ``max(heartbeat_timeout, 10 * interval)``, where the heartbeat
interval grows with the number of workers.  A ``Tick`` is fed every
``tick_interval`` seconds for work stealing.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections import deque
from types import TracebackType
from typing import Any, Final, TypeAlias

import anyio
from anyio.abc import TaskGroup, TaskStatus

import sched_core as sc
from dsched._batched import BatchedSender
from dsched._comm import DEFAULT_MAX_FRAME_SIZE, Comm, CommClosedError, FrameTooLarge, listen
from dsched._dashboard_server import DashboardServer, start_dashboard
from dsched._gc_policy import GcMode, GcPolicy
from dsched._limits import (
    HANDSHAKE_MAX_FRAME_SIZE, ConnectionLimiter, Limits, RefusalCounts, TlsHandshakeGate, peer_host,
)
from dsched._protocol import (
    CLIENT_TO_SCHEDULER,
    PROTOCOL_VERSION,
    Channel,
    Close,
    ForgetFunctions,
    SCHEDULER_TO_CLIENT,
    SCHEDULER_TO_WORKER,
    WORKER_TO_SCHEDULER,
    FrameDecoder,
    FrameEncoder,
    LimitExceeded,
    ProtocolError,
    Refused,
    RegisterWorker,
    Welcome,
    check_hello,
    decode_hello,
    encode_handshake,
)
from dsched._scheduler_diagnostics import SchedulerDiagnostics
from dsched._scheduler_retire import Retirements
from dsched._security import Security, check_listen_allowed
from dsched._step_stats import StepStats
from dsched._scheduler_routes import (
    KEYS_PER_EVENT,
    ClientConn,
    FunctionTable,
    LayerFeed,
    WorkerConn,
    answer_query,
    client_events,
    key_slices,
    route,
    send_quietly,
    worker_events,
)

__all__ = ["SchedulerServer"]

logger = logging.getLogger("dsched.scheduler")


class SchedulerServer:
    """``async with SchedulerServer(host, port) as server:`` serves until the block ends.

    ``server.address`` is ``tcp://host:port`` (``tls://`` when ``security`` has a
    certificate); ``server.state`` the core.  ``security`` (default: what the
    environment says, :meth:`Security.load`) holds the secret every client and
    worker must send and the TLS settings; listening beyond loopback without
    a secret (or mutual TLS) raises ``SecurityError`` unless ``insecure=True``.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        state: sc.SchedulerState | None = None,
        security: Security | None = None,
        insecure: bool = False,
        heartbeat_interval: float = 0.5,
        heartbeat_timeout: float = 10.0,
        tick_interval: float = 0.1,
        chunk_size: int = 50_000,
        gc_interval: float = 5.0,
        handshake_timeout: float = 10.0,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        gc_mode: GcMode = "off",
        max_layer_tasks: int = 100_000_000,
        dashboard_address: str | None = None,
        profile_interval: float | None = 0.01,
        record: str | None = None,
        record_max_bytes: int | None = None,
        record_dir: str | None = None,
        limits: Limits | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.state = state if state is not None else sc.SchedulerState()
        self.security = security if security is not None else Security.load()
        check_listen_allowed(host, self.security, insecure=insecure, what="scheduler", option="--host")
        self.insecure = insecure
        self.security.server_ssl_context()  # a missing or unreadable certificate fails here, not at the first connection
        self.auth = self.security.secret
        self.heartbeat_interval_base = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout
        self.tick_interval = tick_interval
        self.chunk_size = chunk_size
        # A high-level graph is a few bytes however many tasks it describes: bound
        # what one submission may expand to, so that a typo cannot exhaust memory.
        self.max_layer_tasks = max_layer_tasks
        self.handshake_timeout = handshake_timeout
        self.max_frame_size = max_frame_size
        self.scheduler_id = f"scheduler-{uuid.uuid4().hex[:12]}"
        self.address = ""
        self.functions = FunctionTable()
        self.workers: dict[str, WorkerConn] = {}
        self.clients: dict[str, ClientConn] = {}
        # "off" suits a scheduler process; an in-process cluster inside a user's
        # program asks for "relaxed" (see dsched/_gc_policy.py).
        self.gc = GcPolicy(gc_mode, gc_interval)
        self.protocol_errors = 0
        self.loop_stats = StepStats()
        # Per-peer bounds (messages per frame, tasks per submission, key length,
        # connections per host), what each refused, and who is shaking hands now.
        self.limits = limits if limits is not None else Limits()
        self.refused = RefusalCounts()
        self.connection_limiter = ConnectionLimiter(self.limits)
        self._handshaking: set[Comm] = set()
        self._lingering = 0  # refused connections whose Hello is being read (see _refuse_at_once)
        self.chunked_graphs = 0
        # Each client's events in order, in a queue of its own (a client's big graph
        # holds up only that client); clients with queued events take turns.
        self._client_queues: dict[str, deque[ClientItem]] = {}
        self._ready_clients: deque[str] = deque()
        self._from_workers: deque[sc.SchedulerEvent] = deque()
        self._wake = anyio.Event()
        self._last_busy = time.monotonic()
        self._tg: TaskGroup | None = None
        # Profiles, captures, the task stream; the dashboard (None: no dashboard).
        # Recordings started on request go to record_dir (default: beside --record's file).
        self.diagnostics = SchedulerDiagnostics(
            self, profile_interval=profile_interval, record_max_bytes=record_max_bytes,
            record_dir=record_dir or (os.path.dirname(os.path.abspath(record)) if record else None),
        )
        # Workers being retired, and clients waiting for them (see dsched/_scheduler_retire.py).
        self.retirements = Retirements(self)
        if record is not None:  # a recording starts with the scheduler (see dsched/_recording.py)
            self.diagnostics.start_recording(record, record_max_bytes)
        self.dashboard_address = dashboard_address
        self.dashboard: DashboardServer | None = None

    @property
    def task_group(self) -> TaskGroup | None:
        """The server's task group while it runs (for work that answers requests)."""
        return self._tg

    @property
    def dashboard_link(self) -> str | None:
        return self.dashboard.link if self.dashboard is not None else None

    # -- lifecycle --------------------------------------------------------------------

    async def __aenter__(self) -> SchedulerServer:
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        self.gc.start()
        self.diagnostics.start()
        try:
            await tg.start(self._run)
            if self.dashboard_address is not None:
                self.dashboard = await start_dashboard(self, tg, self.dashboard_address)
                logger.info("dashboard at %s", self.dashboard.link)
        except BaseException:
            self._stop_services()
            tg.cancel_scope.cancel()
            await tg.__aexit__(None, None, None)
            raise
        return self

    def _stop_services(self) -> None:
        self.gc.stop()
        self.diagnostics.stop()
        if self.dashboard is not None:
            self.dashboard.close()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        tg = self._tg
        assert tg is not None
        self._tg = None
        with anyio.CancelScope(shield=True):
            await self._say_goodbye()
        tg.cancel_scope.cancel()
        try:
            # The body's own exception propagates as itself, not wrapped in a group.
            await tg.__aexit__(None, None, None)
        finally:
            self._stop_services()
        return None

    async def _say_goodbye(self, timeout: float = 2.0) -> None:
        """Tell every worker and client that the scheduler stops (workers then exit)."""
        conns: list[WorkerConn | ClientConn] = [*self.workers.values(), *self.clients.values()]
        for conn in conns:
            conn.closing = True
            send_quietly(conn.sender, Close("the scheduler is shutting down"))
        with anyio.move_on_after(timeout):
            for conn in conns:
                await conn.sender.close()

    async def serve_forever(self) -> None:
        """Serve until cancelled (enters the server if it is not running yet)."""
        if self._tg is not None:
            await anyio.sleep_forever()
        async with self:
            await anyio.sleep_forever()

    async def _run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with listen(
            self.host, self.port, self._handle, max_frame_size=self.max_frame_size,
            handshake_timeout=self.handshake_timeout, ssl_context=self.security.server_ssl_context(),
            tls_gate=TlsHandshakeGate(self.limits, self.refused),
        ) as listener:
            self.address = listener.address
            self.port = listener.port
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._consume)
                tg.start_soon(self._periodic)
                task_status.started()
                await anyio.sleep_forever()

    # -- the core loop ----------------------------------------------------------------

    def push(self, client: str, event: ClientItem) -> None:
        """Queue a client's event (or a query tuple, answered after its batch) for the next tick."""
        self.push_many(client, [event])

    def push_many(self, client: str, events: list[ClientItem]) -> None:
        if not events:
            return
        queue = self._client_queues.get(client)
        if queue is None:
            queue = self._client_queues[client] = deque()
        if not queue:
            self._ready_clients.append(client)
        queue.extend(events)
        self._wake.set()

    def push_from_workers(self, events: list[sc.SchedulerEvent]) -> None:
        """Queue workers' events (and ticks): they never wait behind a client's big graph."""
        if events:
            self._from_workers.extend(events)
            self._wake.set()

    def _has_pending(self) -> bool:
        return bool(self._ready_clients or self._from_workers)

    async def _consume(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            while self._has_pending():
                began = time.perf_counter()
                self._step()
                self.loop_stats.step_took(time.perf_counter() - began)
                await anyio.sleep(0)  # let readers and senders run between chunks

    def _step(self) -> None:
        """One batch: queued events up to a budget, one handle_events call, route, answer queries.

        Workers' events come first; clients' events then get what is left of the
        budget, but at least half of it, so neither side can starve the other.
        """
        events: list[sc.SchedulerEvent] = []
        from_workers = self._from_workers
        budget = self.chunk_size
        while from_workers and budget > 0:
            events.append(from_workers.popleft())
            budget -= 1
        queries = self._take_client_events(events, max(budget, self.chunk_size // 2))
        if events:
            for event in events:  # ticks and heartbeats are not work; stops at the first that is
                if not isinstance(event, (sc.Tick, sc.WorkerHeartbeat)):
                    self._last_busy = time.monotonic()
                    break
            recorder = self.diagnostics.recorder
            if recorder is None:
                instructions = self.state.handle_events(events)
            else:
                try:
                    instructions = self.state.handle_events(events)
                except BaseException as exc:
                    recorder.write_batch(events, None, exc)
                    raise
                recorder.write_batch(events, instructions)
            route(self, instructions)
        for client, query in queries:
            answer_query(self, client, query)

    def _take_client_events(self, events: list[sc.SchedulerEvent], budget: int) -> list[tuple[str, Any]]:
        """Move clients' events into ``events`` up to ``budget`` tasks, client by client in
        turn; return the queries met on the way."""
        queries: list[tuple[str, Any]] = []
        ready = self._ready_clients
        queues = self._client_queues
        full = budget
        for _ in range(len(ready)):
            if budget <= 0:
                break
            client = ready.popleft()
            queue = queues[client]
            budget = _take_from(queue, events, queries, budget, full)
            if queue:
                ready.append(client)
            else:
                del queues[client]
        return queries

    async def _periodic(self) -> None:
        """Ticks for stealing, heartbeat deadlines and idle-time garbage collection."""
        next_check = next_progress = time.monotonic()
        while True:
            await anyio.sleep(self.tick_interval)
            now = time.monotonic()
            if not self._has_pending() and now - self._last_busy > 1.0:
                self._forget_functions_if_idle()
                self.gc.maybe_collect()
            self.push_from_workers([sc.Tick()])
            if now >= next_progress:
                next_progress = now + 1.0
                self.diagnostics.tick(time.time())
            if now >= next_check:
                next_check = now + min(1.0, self.heartbeat_deadline() / 4)
                await self._check_heartbeats(now)
                self.retirements.check_deadlines(now)

    def _forget_functions_if_idle(self) -> None:
        """With no task left, no function is needed: drop the table here and on the workers.

        (Functions are not reference-counted per task; an empty scheduler is the
        cheap moment at which the table is known to be garbage.)
        """
        if self.state.tasks or not self.functions.functions:
            return
        self.functions = FunctionTable()
        for conn in self.workers.values():
            if conn.functions_sent:
                refs = sorted(conn.functions_sent)
                conn.functions_sent = set()
                send_quietly(conn.sender, ForgetFunctions(refs))

    def heartbeat_interval(self) -> float:
        """Seconds between a worker's heartbeats: grows with the number of workers."""
        return self.heartbeat_interval_base * max(1.0, len(self.workers) / 50)

    def heartbeat_deadline(self) -> float:
        return max(self.heartbeat_timeout, 10 * self.heartbeat_interval())

    async def _check_heartbeats(self, now: float) -> None:
        deadline = self.heartbeat_deadline()
        for conn in list(self.workers.values()):
            if now - conn.last_heard > deadline:
                logger.warning("worker %s missed heartbeats for %.1fs: removing it", conn.address, deadline)
                self.drop_worker(conn, expected=False)
                await conn.comm.aclose("missed heartbeats")

    # -- connections ------------------------------------------------------------------

    def drop_worker(self, conn: WorkerConn, *, expected: bool) -> None:
        if self.workers.get(conn.address) is conn:
            del self.workers[conn.address]
            self.push_from_workers([sc.WorkerRemoved(conn.address, expected)])
            self.retirements.worker_gone(conn.address)

    def drop_client(self, conn: ClientConn) -> None:
        if self.clients.get(conn.client) is conn:
            del self.clients[conn.client]
            # A graph of this client still being expanded would only be released again.
            for item in self._client_queues.get(conn.client, ()):
                if isinstance(item, LayerFeed):
                    item.cancel()
            held = self.state.clients.get(conn.client)
            if held is not None and len(held.wants) > KEYS_PER_EVENT:
                # Let go of a big hold a slice per event (spread over ticks, like a big
                # release), so that the removal itself is small.
                for keys in key_slices([ts.key for ts in held.wants]):
                    self.push(conn.client, sc.ClientReleasesKeys(conn.client, keys))
            self.push(conn.client, sc.ClientRemoved(conn.client))

    async def _handle(self, comm: Comm) -> None:
        """Admit the connection (per-host limits), then shake hands and serve it."""
        host = peer_host(comm.peer)
        over = self.connection_limiter.admit(host)
        if over is not None:
            await self._refuse_at_once(comm, *over)
            return
        self._handshaking.add(comm)
        try:
            await self._handshake(comm, host)
        finally:
            handshaking = comm in self._handshaking
            self._handshaking.discard(comm)
            self.connection_limiter.release(host, handshaking=handshaking)

    def _handshake_done(self, comm: Comm, host: str) -> None:
        comm.max_frame_size = self.max_frame_size
        if comm in self._handshaking:
            self._handshaking.discard(comm)
            self.connection_limiter.handshake_done(host)

    def count_refusal(self, limit: str, peer: str, reason: str, level: int = logging.WARNING) -> None:
        """Count and log one refusal by ``limit`` (the routes call this too, at INFO:
        a refused request is the client's news, not the operator's)."""
        self.refused[limit] += 1
        logger.log(level, "refused %s: %s", peer, reason)

    async def _refuse_at_once(self, comm: Comm, limit: str, reason: str) -> None:
        self.count_refusal(limit, comm.peer, reason)
        # Take its Hello first (briefly): closing with it unread would reset the
        # connection, and the peer might lose the refusal that says why.  Only so
        # many at a time: in a flood, the rest are refused without waiting.
        comm.max_frame_size = HANDSHAKE_MAX_FRAME_SIZE
        if self._lingering < _MAX_LINGERING:
            self._lingering += 1
            try:
                with anyio.move_on_after(_REFUSAL_LINGER):
                    await comm.recv_frame()
            except CommClosedError:
                return
            finally:
                self._lingering -= 1
        await self._refuse(comm, Refused(reason))

    async def _handshake(self, comm: Comm, host: str) -> None:
        # A Hello is small: a bigger frame is refused before anything is allocated for it.
        comm.max_frame_size = HANDSHAKE_MAX_FRAME_SIZE
        comm.oversize_reply = encode_handshake(
            Refused(f"a handshake frame may be at most {HANDSHAKE_MAX_FRAME_SIZE} bytes")
        )
        try:
            with anyio.fail_after(self.handshake_timeout):
                payload = await comm.recv_frame()
            hello = decode_hello(payload)
        except ProtocolError as exc:
            self.protocol_errors += 1
            logger.warning("bad handshake from %s: %s", comm.peer, exc)
            await self._refuse(comm, Refused(str(exc)))
            return
        except FrameTooLarge as exc:
            self.count_refusal("max_frame_size", comm.peer, exc.reason)
            return
        except TimeoutError:
            reason = f"no handshake within handshake_timeout={self.handshake_timeout}s"
            self.count_refusal("handshake_timeout", comm.peer, reason)
            await self._refuse(comm, Refused(reason))
            return
        refusal = check_hello(hello, roles=("client", "worker"), auth=self.auth)
        if refusal is None and hello.role == "client" and hello.name in self.clients:
            refusal = Refused(f"client id {hello.name!r} is in use")
        if refusal is not None:
            logger.info("refused %s: %s", comm.peer, refusal.reason)
            await self._refuse(comm, refusal)
            return
        client_id = ""
        if hello.role == "client":
            client_id = hello.name or f"client-{uuid.uuid4().hex}"
        welcome = Welcome(
            PROTOCOL_VERSION,
            self.scheduler_id,
            name=self.address,
            max_messages=self.limits.max_messages,
            heartbeat_interval=self.heartbeat_interval(),
            client_id=client_id,
            dashboard=self.dashboard_link or "",
        )
        await comm.send_frame(encode_handshake(welcome))
        self._handshake_done(comm, host)
        if hello.role == "worker":
            await self._serve_worker(comm)
        else:
            await self._serve_client(comm, client_id)

    async def _refuse(self, comm: Comm, refusal: Refused) -> None:
        try:
            await comm.send_frame(encode_handshake(refusal))
        except CommClosedError:
            pass  # it hung up first; the refusal only explains why we close

    async def _serve_worker(self, comm: Comm) -> None:
        decoder = FrameDecoder(WORKER_TO_SCHEDULER, max_messages=self.limits.max_messages)
        self._goodbye_on_oversize(comm, SCHEDULER_TO_WORKER)
        try:
            with anyio.fail_after(self.handshake_timeout):
                first = decoder.decode(await comm.recv_frame())
            if not first or not isinstance(first[0], RegisterWorker):
                raise ProtocolError("a worker's first message must be RegisterWorker")
        except ProtocolError as exc:
            await self._protocol_error(comm, exc, SCHEDULER_TO_WORKER)
            return
        except FrameTooLarge as exc:
            self.count_refusal("max_frame_size", comm.peer, exc.reason)
            return
        except TimeoutError:
            reason = f"no RegisterWorker within handshake_timeout={self.handshake_timeout}s"
            self.count_refusal("handshake_timeout", comm.peer, reason)
            await _say_close(comm, SCHEDULER_TO_WORKER, reason)
            return
        reg = first[0]
        assert isinstance(reg, RegisterWorker)
        encoder = FrameEncoder(SCHEDULER_TO_WORKER)
        state = self.state

        def encode(batch: list[Any]) -> list[bytes]:
            return encoder.encode_frames(batch, batch=state.batch)

        async with BatchedSender(comm, encode) as sender:
            conn = WorkerConn(comm, sender, reg.address)
            old = self.workers.get(reg.address)
            if old is not None:  # the same address again: the old process is gone
                del self.workers[reg.address]
                await old.comm.aclose("replaced by a new worker at the same address")
            self.workers[reg.address] = conn
            self.push_from_workers(
                [sc.WorkerAdded(reg.address, reg.nthreads, reg.memory_limit, dict(reg.resources), reg.name)]
            )
            try:
                self.push_from_workers(worker_events(self, conn, first[1:]))
                while not conn.closing and not comm.closed:
                    payload = await comm.recv_frame()
                    conn.last_heard = time.monotonic()
                    self.push_from_workers(worker_events(self, conn, decoder.decode(payload)))
            except ProtocolError as exc:
                await self._protocol_error(comm, exc, SCHEDULER_TO_WORKER)
            except FrameTooLarge as exc:
                self.count_refusal("max_frame_size", comm.peer, exc.reason)
            except CommClosedError as exc:
                logger.info("worker %s disconnected: %s", conn.address, exc.reason)
            finally:
                # A retiring worker's departure is expected, even one that did not wait to be told.
                self.drop_worker(conn, expected=conn.closing or conn.retire_deadline > 0.0)
                if not conn.closing:
                    await comm.aclose("worker connection ended")  # nothing to flush to

    async def _serve_client(self, comm: Comm, client: str) -> None:
        decoder = FrameDecoder(CLIENT_TO_SCHEDULER, max_messages=self.limits.max_messages)
        self._goodbye_on_oversize(comm, SCHEDULER_TO_CLIENT)
        encoder = FrameEncoder(SCHEDULER_TO_CLIENT)

        def encode(batch: list[Any]) -> list[bytes]:
            return encoder.encode_frames(batch)

        async with BatchedSender(comm, encode) as sender:
            conn = ClientConn(comm, sender, client)
            self.clients[client] = conn
            self.push(client, sc.ClientAdded(client))
            try:
                while not conn.closing and not comm.closed:
                    payload = await comm.recv_frame()
                    self.push_many(client, client_events(self, conn, decoder.decode(payload)))
            except ProtocolError as exc:
                await self._protocol_error(comm, exc, SCHEDULER_TO_CLIENT)
            except FrameTooLarge as exc:
                self.count_refusal("max_frame_size", comm.peer, exc.reason)
            except CommClosedError as exc:
                logger.info("client %s disconnected: %s", client, exc.reason)
            finally:
                self.drop_client(conn)
                if not conn.closing:
                    await comm.aclose("client connection ended")

    def _goodbye_on_oversize(self, comm: Comm, channel: Channel[Any]) -> None:
        reason = f"a frame over max_frame_size={self.max_frame_size} bytes was refused"
        comm.oversize_reply = FrameEncoder(channel).encode([Close(reason)])

    async def _protocol_error(self, comm: Comm, exc: ProtocolError, channel: Channel[Any]) -> None:
        """Count it, and tell the peer why its connection closes (the caller closes it)."""
        if isinstance(exc, LimitExceeded):
            self.refused[exc.limit] += 1
        else:
            self.protocol_errors += 1
        logger.warning("protocol error from %s, closing the connection: %s", comm.peer, exc)
        await _say_close(comm, channel, str(exc))


async def _say_close(comm: Comm, channel: Channel[Any], reason: str) -> None:
    """Send one ``Close(reason)``, best effort and bounded in time, before closing ``comm``."""
    with anyio.move_on_after(_REFUSAL_LINGER):
        try:
            await comm.send_frame(FrameEncoder(channel).encode([Close(reason)]))
        except CommClosedError:
            pass  # it left first; the reason only explained why we close


# How long a refusal may take: to read the refused peer's Hello, or to write its reason.
_REFUSAL_LINGER: Final = 1.0
# Refused connections read at once, at most (each holds a socket for up to _REFUSAL_LINGER).
_MAX_LINGERING: Final = 64


ClientItem: TypeAlias = "sc.SchedulerEvent | tuple[str, Any] | LayerFeed"

# A high-level graph is expanded this many tasks per tick (~20-40 ms of the core's
# time, compiled): the loop stays responsive and results keep flowing meanwhile.
LAYER_TASKS_PER_TICK: Final = 10_000


def _take_from(
    queue: deque[ClientItem], events: list[sc.SchedulerEvent], queries: list[tuple[str, Any]], budget: int, full: int
) -> int:
    """Move one client's queued events into ``events`` up to ``budget`` tasks; the budget left.

    ``full`` is the clients' whole budget this tick: a submission bigger than
    what is left waits for the next tick, unless nothing was taken yet.
    """
    while queue and budget > 0:
        item = queue[0]
        if isinstance(item, LayerFeed):
            # A high-level graph: its next chunk now, the rest in later ticks; this
            # client's later events wait for it, to keep their order - except queries
            # (say, for the first results), which only read.
            events.extend(item.next_events(min(budget, LAYER_TASKS_PER_TICK)))
            if item.done:
                queue.popleft()
                return 0
            _queries_behind(queue, queries)
            return 0
        if isinstance(item, tuple):
            # Answered after this batch: it sees every event queued before it.
            queue.popleft()
            queries.append(item)
            continue
        if isinstance(item, sc.GraphSubmitted):
            size = len(item.tasks)
        elif isinstance(item, (sc.ClientReleasesKeys, sc.ClientWantsKeys, sc.CancelKeys)):
            size = len(item.keys)
        else:
            size = 1
        if size > budget and budget < full:
            break
        budget -= size
        queue.popleft()
        events.append(item)
    return budget


def _queries_behind(queue: deque[ClientItem], queries: list[tuple[str, Any]]) -> None:
    """Take the queries queued behind a graph being expanded (``queue[0]``).

    Only those with nothing but releases and other queries before them: a query
    must see every event its client sent earlier, except releases, which cannot
    change what the client may still ask about.  Looks at most
    ``_QUERY_LOOKAHEAD`` items deep, so a tick's work stays bounded.
    """
    i = 1
    while i < len(queue) and i <= _QUERY_LOOKAHEAD:
        item = queue[i]
        if isinstance(item, tuple):
            queries.append(item)
            del queue[i]
        elif isinstance(item, sc.ClientReleasesKeys):
            i += 1
        else:
            return


_QUERY_LOOKAHEAD: Final = 100
