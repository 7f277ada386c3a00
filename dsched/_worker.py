"""The worker: a ``sched_core.WorkerMachine`` driven by the scheduler, its peers and its threads.

Everything that happens to a worker becomes a worker-machine event, appended to
one list (``_events``): a frame of ``Compute`` / ``FreeKeys`` / ``StealRequest``
messages from the scheduler, a batch of finished tasks from the task threads, a
transfer's answer, values a peer put here.  One consumer task drains that list
once per loop tick with a single ``handle_events`` call and carries out the
instructions: start tasks on the threads, fetch dependencies from peers (one
request per peer, several keys each), drop data, and queue reports for the
scheduler on a :class:`~dsched._batched.BatchedSender` (one frame per tick).

Bookkeeping the machine leaves to the runtime:

* ``run_ids``: the scheduler's run id of each key's latest ``Compute``, echoed in
  ``TaskFinished`` / ``TaskErred`` so that the scheduler can ignore a result
  that crossed a reassignment on the wire.
* ``seen_batch``: the largest scheduler batch number among the frames whose
  messages have been handled, sent with replica and missing-data reports.
* the data store (``data``): the values of the keys in memory here.

Execution slots: the machine starts a task only when one of its ``nthreads``
slots is free, and a slot frees only when the loop has handled the task's
completion.  For tasks of a few microseconds that makes every task wait for a
thread -> loop -> thread round trip (tens of microseconds, plus a GIL hand-off).
So the worker gives the machine extra slots when its tasks are short:
``nthreads * (1 + extra)`` where ``extra`` covers about ``PREFETCH_SECONDS`` of
measured task time per thread (at most ``MAX_PREFETCH``, none for tasks longer
than that).  The extra tasks wait in the executor's queue, so a thread never
idles between short tasks and completions reach the loop - and the scheduler -
in batches.  Long tasks get no extra slots, so they stay stealable and in
priority order until a thread is free.

The worker exits when its scheduler connection ends (or on ``close()``, which
retires it: the scheduler is told with ``Close`` first).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import MutableMapping
from types import TracebackType
from typing import Any

import anyio
import msgspec
from anyio.abc import TaskGroup

import sched_core as sc
from dsched import _protocol as p
from dsched._batched import BatchedSender
from dsched._handshake import open_comm
from dsched._comm import Comm, CommClosedError, format_address, listen, parse_address
from dsched._worker_executor import FunctionCache, TaskExecutor
from dsched._worker_memory import (
    DEFAULT_PAUSE,
    DEFAULT_SPILL,
    DEFAULT_TARGET,
    DEFAULT_TERMINATE,
    MemoryMonitor,
    MemoryPolicy,
    make_store,
    parse_fraction,
    process_memory,
    watch_memory,
)
from dsched._worker_spill import SpillableStore
from dsched._peer_pool import PeerPool
from dsched._security import Security, check_listen_allowed
from dsched._worker_peers import PeerServing, fetch, serve_peer
from dsched._profiler import CallTree
from dsched._serialize import sizeof
from dsched._worker_profile import WorkerProfiler

__all__ = ["Worker", "process_memory"]

logger = logging.getLogger("dsched.worker")

_BUSY_RETRY_DELAY = 0.05
_ACQUIRE_ATTEMPTS = 30  # a busy peer is asked again, backing off to 1 s: about half a minute
# Extra execution slots cover this much task time per thread: several of the task
# threads' report intervals (REPORT_DELAY), so a thread has work queued between them.
PREFETCH_SECONDS = 0.01
MAX_PREFETCH = 32
_DURATION_WEIGHT = 0.2


class Worker:
    """``async with Worker(scheduler_address) as worker:`` serves until the block ends.

    With a ``memory_limit`` (bytes; 0: none) the worker spills results to a
    temporary directory under ``local_directory`` and pauses by the memory
    thresholds (fractions of the limit, or False: see ``_worker_memory`` and
    docs/operations.md); ``memory_monitor`` is then the monitor doing it.

    ``worker.address`` is where it serves its data to peers.  ``serve_forever()``
    returns when the scheduler goes away.  ``security`` (default: what the
    environment says, :meth:`Security.load`) is used towards the scheduler,
    towards peers and by the peer listener, which refuses peers without the
    secret; binding that listener beyond loopback without a secret (or mutual
    TLS) raises ``SecurityError`` unless ``insecure=True``.

    ``close()`` retires the worker: it says ``Close`` and keeps serving its
    peers until the scheduler, having copied elsewhere what only this worker
    holds, answers ``Close`` - for at most ``retire_timeout`` seconds.
    """

    retire_timeout: float = 60.0

    def __init__(
        self,
        scheduler_address: str,
        *,
        nthreads: int = 1,
        name: str = "",
        memory_limit: int = 0,
        resources: dict[str, float] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        security: Security | None = None,
        insecure: bool = False,
        connect_timeout: float = 10.0,
        profile_interval: float | None = 0.01,
        local_directory: str | None = None,
        memory_target_fraction: float | bool | None = DEFAULT_TARGET,
        memory_spill_fraction: float | bool | None = DEFAULT_SPILL,
        memory_pause_fraction: float | bool | None = DEFAULT_PAUSE,
        memory_terminate_fraction: float | bool | None = DEFAULT_TERMINATE,
    ) -> None:
        if nthreads < 1:
            raise ValueError(f"nthreads must be at least 1, not {nthreads}")
        self.scheduler_address = scheduler_address
        self.nthreads = nthreads
        self.name = name
        self.memory_limit = memory_limit
        self.resources = dict(resources or {})
        self.host = host
        self.port = port
        self.security = security if security is not None else Security.load()
        check_listen_allowed(host, self.security, insecure=insecure, what="worker's peer listener", option="--host")
        self.security.server_ssl_context()  # a missing or unreadable certificate fails here
        self.connect_timeout = connect_timeout
        self.address = ""
        self.scheduler_id = ""
        self._scheduler_max_messages = p.MAX_MESSAGES  # per frame, as its Welcome says
        # Results held here; a spilling store once started, if the memory policy spills.
        self.data: MutableMapping[str, object] = {}
        self.memory_policy = MemoryPolicy(
            memory_limit,
            parse_fraction(memory_target_fraction, "memory_target_fraction"),
            parse_fraction(memory_spill_fraction, "memory_spill_fraction"),
            parse_fraction(memory_pause_fraction, "memory_pause_fraction"),
            parse_fraction(memory_terminate_fraction, "memory_terminate_fraction"),
        )
        self.local_directory = local_directory
        self.memory_monitor: MemoryMonitor | None = None
        self.functions = FunctionCache()
        self.run_ids: dict[str, int] = {}
        self.seen_batch = -1
        self.machine: sc.WorkerMachine | None = None
        self.heartbeat_interval = 0.5
        self.latency = 0.0
        self.closed = anyio.Event()
        self._steal_run_ids: dict[str, int] = {}
        self._events: list[sc.WorkerEvent] = []
        self._frame_batch = -1
        self._wake = anyio.Event()
        self._tg: TaskGroup | None = None
        self._comm: Comm | None = None
        self._sender: BatchedSender[p.WorkerToScheduler] | None = None
        self._executor: TaskExecutor | None = None
        self._peers: PeerPool | None = None
        self._serving: PeerServing | None = None
        self._heartbeat_sent: dict[int, float] = {}
        self.profile_interval = profile_interval
        self._profiler: WorkerProfiler | None = None
        self.task_duration = -1.0  # moving average of task run times (s); -1: none yet
        self._closing = False
        self._scheduler_done = anyio.Event()  # the scheduler connection ended (or it said Close)

    def __repr__(self) -> str:
        return f"<Worker {self.address or '(not started)'} name={self.name!r} nthreads={self.nthreads}>"

    # -- lifecycle --------------------------------------------------------------------

    async def __aenter__(self) -> Worker:
        # Connect first, outside any task group, so that an unreachable or
        # refusing scheduler raises a plain ConnectError / CommClosedError.
        comm = await self._connect()
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        try:
            await tg.start(self._run, comm)
        except BaseException as exc:
            tg.cancel_scope.cancel()
            with anyio.CancelScope(shield=True):
                await comm.aclose("worker failed to start")
            await tg.__aexit__(None, None, None)
            if isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
                raise exc.exceptions[0] from None  # e.g. the port is taken: say so plainly
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        await self.close("worker stopped")
        tg = self._tg
        assert tg is not None
        self._tg = None
        tg.cancel_scope.cancel()
        # The body's own exception propagates as itself, not wrapped in a group.
        await tg.__aexit__(None, None, None)
        return None

    async def serve_forever(self) -> None:
        """Serve until the scheduler connection ends or the caller is cancelled."""
        if self._tg is None:
            async with self:
                await self.closed.wait()
        else:
            await self.closed.wait()

    async def close(self, reason: str = "") -> None:
        """Retire: tell the scheduler (``Close``), wait for its ``Close``, stop the threads and the connections.

        Meanwhile the worker keeps serving its peers: the scheduler has results
        only this worker holds copied elsewhere before it answers (for at most
        ``retire_timeout`` seconds).
        """
        if self._closing:
            await self.closed.wait()
            return
        self._closing = True
        try:
            with anyio.CancelScope(shield=True), anyio.move_on_after(self.retire_timeout + 5):
                sender, comm = self._sender, self._comm
                if sender is not None and comm is not None and not comm.closed:
                    try:
                        sender.send(p.Close(reason or "worker closing"))
                    except CommClosedError:
                        pass  # the scheduler is gone already
                    else:
                        with anyio.move_on_after(self.retire_timeout):
                            await self._scheduler_done.wait()
                    await sender.close()
                    await comm.aclose(reason or "worker closing")
                if self._peers is not None:
                    await self._peers.aclose()
                if self._executor is not None:
                    await anyio.to_thread.run_sync(self._executor.close)
                if self._profiler is not None:
                    self._profiler.stop()
        finally:
            self._drop_store()
            self.closed.set()
            if self._tg is not None:
                self._tg.cancel_scope.cancel()

    async def _run(self, comm: Comm, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with listen(
            self.host, self.port, self._handle_peer, ssl_context=self.security.server_ssl_context()
        ) as listener:
            self.address = listener.address
            if listener.host in ("0.0.0.0", "::", ""):
                # Bound to every interface: advertise the one that reaches the
                # scheduler, which peers on the scheduler's network can reach too.
                _, local_host, _ = parse_address(comm.local)
                self.address = format_address(listener.scheme, local_host, listener.port)
            if not self.name:
                self.name = self.address
            self.machine = sc.WorkerMachine(self.address, self.nthreads, self.resources or None)
            self.data = make_store(self.memory_policy, self.local_directory)
            if self.memory_policy.monitored:
                self.memory_monitor = MemoryMonitor(self.memory_policy, self.data, self._set_paused)
            self._executor = TaskExecutor(self.nthreads, self.data, self.functions, self._push_many)
            if self.profile_interval:
                self._profiler = WorkerProfiler(self._executor.running, self.profile_interval)
                self._profiler.start()
            self._peers = PeerPool(name=self.address, security=self.security)
            self._serving = PeerServing(
                self.data, self._data_put, scheduler_id=self.scheduler_id, address=self.address,
                auth=self.security.secret,
            )
            encoder = p.FrameEncoder(p.WORKER_TO_SCHEDULER, max_messages=self._scheduler_max_messages)
            async with BatchedSender(comm, encoder.encode_frames) as sender:
                self._sender = sender
                sender.send(p.RegisterWorker(self.address, self.nthreads, self.memory_limit, self.resources, self.name))
                logger.info("worker %s (%s) connected to %s", self.address, self.name, self.scheduler_address)
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._consume)
                    tg.start_soon(self._heartbeats)
                    if self.memory_monitor is not None:
                        tg.start_soon(watch_memory, self.memory_monitor)
                    task_status.started()
                    try:
                        await self._read_scheduler(comm)
                    finally:
                        self._scheduler_done.set()
                    tg.cancel_scope.cancel()
        if not self._closing:
            logger.info("worker %s: the scheduler connection ended, shutting down", self.address)
            self._closing = True
            if self._executor is not None:
                await anyio.to_thread.run_sync(self._executor.close)
            if self._profiler is not None:
                self._profiler.stop()
            if self._peers is not None:
                await self._peers.aclose()
            self._drop_store()
            self.closed.set()

    def _drop_store(self) -> None:
        """Remove spilled files and the spill directory (the worker is done with its data)."""
        if isinstance(self.data, SpillableStore):
            self.data.close()

    async def _connect(self) -> Comm:
        hello = p.Hello(p.PROTOCOL_VERSION, "worker", self.name, auth=self.security.secret)
        comm, reply = await open_comm(
            self.scheduler_address, hello, timeout=self.connect_timeout, security=self.security
        )
        self.scheduler_id = reply.scheduler_id
        self._scheduler_max_messages = reply.max_messages
        if reply.heartbeat_interval > 0:
            self.heartbeat_interval = reply.heartbeat_interval
        self._comm = comm
        return comm

    # -- from the scheduler -----------------------------------------------------------

    async def _read_scheduler(self, comm: Comm) -> None:
        decoder = p.FrameDecoder(p.SCHEDULER_TO_WORKER)
        while True:
            try:
                frame = decoder.decode_frame(await comm.recv_frame())
            except p.ProtocolError as exc:
                logger.error("protocol error from the scheduler, disconnecting: %s", exc)
                await comm.aclose("protocol error")
                return
            except CommClosedError as exc:
                if not self._closing:
                    logger.warning("lost the scheduler connection: %s", exc.reason)
                return
            if self._scheduler_messages(frame.messages):
                # The scheduler said Close (it retired this worker, or it stops): hang
                # up, so that it sees the worker gone now, not at a heartbeat deadline.
                await comm.aclose("closed by the scheduler")
                return
            if frame.batch > self._frame_batch:
                self._frame_batch = frame.batch
            self._wake.set()

    def _scheduler_messages(self, messages: list[p.SchedulerToWorker]) -> bool:
        """Turn one frame's messages into machine events; True if the scheduler said goodbye."""
        events = self._events
        run_ids = self.run_ids
        for msg in messages:
            if isinstance(msg, p.Compute):
                run_ids[msg.key] = msg.run_id
                spec = (msg.function, msg.args, bool(msg.who_has), msg.call, msg.keys, msg.index)
                events.append(sc.ComputeTaskEvent(msg.key, spec, msg.priority, msg.who_has, msg.nbytes, msg.resources))
            elif isinstance(msg, p.FreeKeys):
                for key in msg.keys:
                    run_ids.pop(key, None)
                events.append(sc.FreeKeysEvent(msg.keys))
            elif isinstance(msg, p.DefineFunction):
                self.functions.define(msg.ref, p.payload_bytes(msg.function))
            elif isinstance(msg, p.StealRequest):
                self._steal_run_ids[msg.key] = msg.run_id
                events.append(sc.StealRequestEvent(msg.key))
            elif isinstance(msg, p.HeartbeatAck):
                sent = self._heartbeat_sent.pop(msg.seq, None)
                if sent is not None:
                    self.latency = time.monotonic() - sent
                if msg.interval > 0:
                    self.heartbeat_interval = msg.interval
            elif isinstance(msg, p.ForgetFunctions):
                self.functions.forget(msg.refs)
            elif isinstance(msg, p.GetProfile):
                self._send_profile(msg)
            elif isinstance(msg, p.AcquireReplicas):
                self._spawn(self._acquire, msg.who_has)
            else:  # Close
                logger.info("the scheduler closed the connection: %s", msg.reason)
                return True
        return False

    def _send_profile(self, msg: p.GetProfile) -> None:
        sender = self._sender
        if sender is None:
            return
        if self._profiler is not None:
            reply = self._profiler.answer(msg)
        else:  # not sampling: an empty tree, so the scheduler need not wait for a timeout
            reply = p.ProfileData(msg.request, msgspec.json.encode(CallTree().to_json()))
        with contextlib.suppress(CommClosedError):  # the scheduler is gone; _read_scheduler ends the worker
            sender.send(reply)

    # -- the machine ------------------------------------------------------------------

    def _set_paused(self, paused: bool) -> None:
        """The memory monitor paused or resumed this worker: tell the machine and the scheduler."""
        self._push(sc.PauseEvent() if paused else sc.UnpauseEvent())
        sender = self._sender
        if sender is not None:
            with contextlib.suppress(CommClosedError):  # the scheduler is gone; _read_scheduler ends the worker
                sender.send(p.WorkerStatus(paused))

    def _push_many(self, events: list[sc.WorkerEvent]) -> None:
        self._events.extend(events)
        self._wake.set()

    def _push(self, event: sc.WorkerEvent) -> None:
        self._events.append(event)
        self._wake.set()

    async def _consume(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            if self._events:
                self._step()

    def _step(self) -> None:
        machine = self.machine
        assert machine is not None
        events = self._events
        self._events = []
        batch = self._frame_batch
        self._measure(events)
        instructions = machine.handle_events(events)
        self.seen_batch = batch
        self._carry_out(instructions)

    def _measure(self, events: list[sc.WorkerEvent]) -> None:
        """Track task run times and size the machine's execution slots from them."""
        average = self.task_duration
        seen = False
        for ev in events:
            if isinstance(ev, sc.ExecuteSuccessEvent):
                duration = ev.stop - ev.start
                average = duration if average < 0 else average + _DURATION_WEIGHT * (duration - average)
                seen = True
        if not seen:
            return
        self.task_duration = average
        extra = min(MAX_PREFETCH, int(PREFETCH_SECONDS / max(average, 1e-6)))
        machine = self.machine
        assert machine is not None
        machine.nthreads = self.nthreads * (1 + extra)

    def _carry_out(self, instructions: list[sc.WorkerMachineInstruction]) -> None:
        sender = self._sender
        executor = self._executor
        assert sender is not None and executor is not None
        out: list[p.WorkerToScheduler] = []
        replicas: dict[str, int] = {}
        run_ids = self.run_ids
        for ins in instructions:
            if isinstance(ins, sc.Execute):
                executor.submit(ins.key, ins.run_spec)
            elif isinstance(ins, sc.TaskFinishedMsg):
                out.append(p.TaskFinished(
                    ins.key, ins.nbytes, max(0.0, ins.stop - ins.start), run_ids.get(ins.key, -1), max(0.0, ins.start)
                ))
            elif isinstance(ins, sc.ReleaseData):
                data = self.data
                if ins.key in data:
                    del data[ins.key]  # not pop(): a spilled value would be read back to be dropped
            elif isinstance(ins, sc.GatherDep):
                self._spawn(self._gather, ins.peer, ins.keys)
            elif isinstance(ins, sc.AddReplicaMsg):
                replicas[ins.key] = ins.nbytes
            elif isinstance(ins, sc.TaskErredMsg):
                exc = ins.exception if isinstance(ins.exception, bytes) else b""
                tb = ins.traceback if isinstance(ins.traceback, str) else ""
                out.append(p.TaskErred(
                    ins.key, exc, tb, run_ids.get(ins.key, -1), max(0.0, ins.start), max(0.0, ins.stop - ins.start)
                ))
            elif isinstance(ins, sc.MissingDep):
                out.append(p.MissingData(ins.key, ins.errant_worker, self.seen_batch))
            elif isinstance(ins, sc.StealResponseMsg):
                out.append(p.StealResponse(ins.key, ins.state, self._steal_run_ids.pop(ins.key, -1)))
            elif isinstance(ins, sc.RetryBusyWorkerLater):
                self._spawn(self._retry_later, ins.peer)
            else:
                logger.error("unknown worker instruction %r", ins)
        if replicas:
            out.append(p.ReplicasAdded(list(replicas), replicas, self.seen_batch))
        if out:
            with contextlib.suppress(CommClosedError):  # the scheduler is gone; _read_scheduler ends the worker
                sender.send_many(out)

    def _spawn(self, func: Any, *args: Any) -> None:
        if self._tg is not None:
            self._tg.start_soon(func, *args)

    # -- transfers ----------------------------------------------------------------------

    async def _gather(self, peer: str, keys: list[str]) -> None:
        """One GatherDep: fetch ``keys`` from ``peer``, store them, report to the machine."""
        pool = self._peers
        assert pool is not None
        try:
            reply = await fetch(pool, peer, keys)
        except (CommClosedError, OSError) as exc:
            logger.info("could not fetch %d keys from %s: %s", len(keys), peer, exc)
            self._push(sc.GatherDepFailureEvent(peer, keys))
            return
        except Exception:
            logger.exception("fetching %d keys from %s failed", len(keys), peer)
            self._push(sc.GatherDepFailureEvent(peer, keys))
            return
        if reply.busy:
            self._push(sc.GatherDepBusyEvent(peer, keys))
            return
        values = reply.values
        nbytes = {key: sizeof(value) for key, value in values.items()}
        data = self.data
        if isinstance(data, SpillableStore) and data.memory_bytes + sum(nbytes.values()) > data.target > 0:
            # Storing these spills others (pickling, writing files): not on the loop.
            await anyio.to_thread.run_sync(data.update, values)
        else:
            data.update(values)
        self._push(sc.GatherDepSuccessEvent(peer, nbytes))

    async def _retry_later(self, peer: str) -> None:
        await anyio.sleep(_BUSY_RETRY_DELAY)
        self._push(sc.RetryBusyWorkerEvent(peer))

    async def _acquire(self, who_has: dict[str, list[str]]) -> None:
        """Copy a retiring worker's results here (the scheduler's ``AcquireReplicas``) and report them."""
        by_peer: dict[str, list[str]] = {}
        for key, holders in who_has.items():
            if holders:
                by_peer.setdefault(holders[0], []).append(key)
        for peer, keys in by_peer.items():
            values = await self._fetch_patiently(peer, keys)
            if not values or self._sender is None:
                continue
            nbytes = self._data_put(values)
            try:
                self._sender.send(p.ReplicasAdded(list(nbytes), nbytes, max(self.seen_batch, self._frame_batch)))
            except CommClosedError:
                return

    async def _fetch_patiently(self, peer: str, keys: list[str]) -> dict[str, object]:
        """``keys`` from ``peer``, waiting while it is busy; {} if it cannot be reached."""
        pool = self._peers
        assert pool is not None
        delay = _BUSY_RETRY_DELAY
        for _ in range(_ACQUIRE_ATTEMPTS):
            try:
                reply = await fetch(pool, peer, keys)
            except Exception as exc:  # the retiring worker is gone: its retirement times out
                logger.info("could not copy %d keys from retiring %s: %s", len(keys), peer, exc)
                return {}
            if not reply.busy:
                return reply.values
            await anyio.sleep(delay)
            delay = min(1.0, 2 * delay)
        return {}

    def _data_put(self, values: dict[str, object]) -> dict[str, int]:
        """A peer (a client scattering) put values here."""
        nbytes = {key: sizeof(value) for key, value in values.items()}
        self.data.update(values)
        self._push(sc.DataPutEvent(nbytes))
        return nbytes

    async def _handle_peer(self, comm: Comm) -> None:
        if self._serving is None:  # not registered with the scheduler yet
            return
        await serve_peer(self._serving, comm)

    # -- heartbeats ---------------------------------------------------------------------

    async def _heartbeats(self) -> None:
        seq = 0
        cpu_then, wall_then = time.process_time(), time.monotonic()
        while True:
            await anyio.sleep(self.heartbeat_interval)
            cpu_now, wall_now = time.process_time(), time.monotonic()
            cpu = 100.0 * (cpu_now - cpu_then) / max(wall_now - wall_then, 1e-6)
            cpu_then, wall_then = cpu_now, wall_now
            machine, sender = self.machine, self._sender
            if machine is None or sender is None:
                continue
            seq += 1
            self._heartbeat_sent[seq] = time.monotonic()
            if len(self._heartbeat_sent) > 100:  # acks lost: keep the table bounded
                self._heartbeat_sent.pop(next(iter(self._heartbeat_sent)))
            data = self.data
            store = data if isinstance(data, SpillableStore) else None
            beat = p.Heartbeat(
                seq,
                self.latency,
                process_memory(),
                executing=len(machine.running),
                ready=machine.n_ready + machine.n_constrained,
                in_memory=len(self.data),
                nbytes_in_memory=machine.nbytes_in_memory,
                cpu=cpu,
                managed_bytes=store.memory_bytes if store is not None else machine.nbytes_in_memory,
                spilled_bytes=store.spilled_bytes if store is not None else 0,
            )
            try:
                sender.send(beat)
            except CommClosedError:
                return

    def info(self) -> dict[str, Any]:
        """A snapshot for logs and tests (O(1))."""
        machine = self.machine
        return {
            "address": self.address,
            "name": self.name,
            "nthreads": self.nthreads,
            "in_memory": len(self.data),
            "executed": machine.n_executed if machine else 0,
            "fetched": machine.n_fetched if machine else 0,
            "paused": machine.paused if machine else False,
            "spilled_bytes": self.data.spilled_bytes if isinstance(self.data, SpillableStore) else 0,
            "latency": self.latency,
        }
