"""A client's event-loop side: the scheduler connection, requests, gather and scatter I/O.

Everything here runs on the client's event loop (the caller's loop for an
asynchronous client, a daemon thread's loop for a synchronous one), except
:meth:`SchedulerLink.wake`, which any thread may call.

Outgoing: the caller's thread appends to the :class:`ClientState` outbox and
calls ``wake()``, which schedules one ``flush`` per loop tick (a flag and one
``call_soon_threadsafe``, not one per message); ``flush`` drains the outbox
into the :class:`~dsched._batched.BatchedSender`, which writes one frame.

Incoming: one task reads frames; answers to ``WhoHas``/``GetWorkers`` go to the
waiting request, everything else to ``ClientState.handle`` in one call per frame.

Gather: wait until the keys are done (one counter and one event per call),
ask the scheduler who holds them, then fetch from the workers as a peer, one
``GetData`` per worker (split every ``GET_DATA_CHUNK`` keys), all workers at
once.  Keys no worker had (a worker died, the scheduler is recomputing) are
asked about again after a short backoff, until their state changes.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any, Final

import anyio
from msgspec import Raw

from dsched import _protocol as p
from dsched._handshake import open_comm
from dsched._batched import BatchedSender
from dsched._client_errors import ClientDisconnectedError
from dsched._peer_pool import PeerPool
from dsched._security import Security
from dsched._client_state import ClientState, CountWaiter, run_notifications
from dsched._comm import Comm, CommClosedError, ConnectError
from dsched._future import FINISHED, KeyState

__all__ = ["DiagnosticsError", "SchedulerLink"]

logger = logging.getLogger("dsched.client")

GET_DATA_CHUNK: Final = 10_000
# A gather fetches keys as they finish, in batches of at least this many (a
# smaller gather waits for all its keys and fetches once: fewer round trips).
MIN_PIPELINED_FETCH: Final = 1_000
FIRST_RETRY: Final = 0.005
MAX_RETRY: Final = 0.25
WORKER_POLL: Final = 0.05


# Answers to a request of this client (matched by ``request``), not news about keys.
_REPLIES: Final = frozenset({p.WhoHasReply, p.WorkersReply, p.DiagnosticsReply, p.RetireWorkersReply})

class DiagnosticsError(RuntimeError):
    """The scheduler could not answer a diagnostic request (the message says why)."""


class _Reply:
    __slots__ = ("error", "event", "value")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.value: p.SchedulerToClient | None = None
        self.error: BaseException | None = None


class _Collector:
    """Collects the finished keys of one gather; wakes it every ``batch`` keys, at the end, or on an error."""

    __slots__ = ("batch", "errored", "event", "ready", "remaining", "stop_on_error")

    def __init__(self, remaining: int, stop_on_error: bool, batch: int) -> None:
        self.remaining = remaining
        self.stop_on_error = stop_on_error
        self.batch = batch
        self.errored = False
        self.ready: list[KeyState] = []
        self.event = anyio.Event()
        if remaining <= 0:
            self.event.set()

    def key_done(self, state: KeyState) -> None:
        self.remaining -= 1
        if state.status == FINISHED:
            self.ready.append(state)
        else:
            self.errored = True
        if self.remaining <= 0 or len(self.ready) >= self.batch or (self.errored and self.stop_on_error):
            self.event.set()


class SchedulerLink:
    """The connection to the scheduler and the coroutines built on it."""

    def __init__(
        self,
        state: ClientState,
        *,
        name: str = "",
        security: Security | None = None,
        timeout: float = 10.0,
        reconnect_timeout: float = 0.0,
    ) -> None:
        self.state = state
        self.address = ""
        # Seconds to keep trying to reach the scheduler again after losing it (0: give up at once).
        self.reconnect_timeout = reconnect_timeout
        self.name = name
        self.security = security if security is not None else Security()
        self.timeout = timeout
        self.welcome: p.Welcome | None = None
        self.comm: Comm | None = None
        self.sender: BatchedSender[p.ClientToScheduler] | None = None
        self.peers = PeerPool(name=name, security=self.security, timeout=timeout)
        self.closing = False
        self.lost: BaseException | None = None
        self.loop_thread_id = -1
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake_pending = False
        self._replies: dict[int, _Reply] = {}
        self._request = 0
        self._runner: asyncio.Task[None] | None = None
        self._scatter_start = 0
        self._goodbye = ""  # the reason in the scheduler's Close, if it sent one

    # -- connecting and closing --------------------------------------------------------

    def use_security(self, security: Security) -> None:
        """Connect with ``security`` (a cluster's, known once it started); before :meth:`open`."""
        self.security = security
        self.peers.security = security

    async def open(self, address: str) -> p.Welcome:
        """Connect, shake hands, start reading and sending.  Raises ``ConnectError`` if refused."""
        hello = p.Hello(p.PROTOCOL_VERSION, "client", self.name, auth=self.security.secret)
        comm, reply = await open_comm(address, hello, timeout=self.timeout, security=self.security)
        self.address = address
        sender = self._connected(comm, reply)
        self._loop = asyncio.get_running_loop()
        self.loop_thread_id = threading.get_ident()
        self._runner = asyncio.get_running_loop().create_task(self._serve(comm, sender))
        self.flush()  # anything submitted before the connection was up
        return reply

    def _connected(self, comm: Comm, reply: p.Welcome) -> BatchedSender[p.ClientToScheduler]:
        self.welcome = reply
        self.comm = comm
        self.peers.name = reply.client_id
        encoder = p.FrameEncoder(p.CLIENT_TO_SCHEDULER, max_messages=reply.max_messages)
        sender = self.sender = BatchedSender(comm, encoder.encode_frames)
        return sender

    async def _serve(self, comm: Comm, sender: BatchedSender[p.ClientToScheduler]) -> None:
        while True:
            async with anyio.create_task_group() as tg:
                tg.start_soon(sender.run)
                reason = await self._receive(comm)
                tg.cancel_scope.cancel()
            if self.closing or self.reconnect_timeout <= 0 or not await self._reconnect(reason):
                self._connection_ended(reason)
                return
            assert self.comm is not None and self.sender is not None
            comm, sender = self.comm, self.sender

    async def _reconnect(self, reason: str) -> bool:
        """Reach the scheduler again (same client id) within ``reconnect_timeout``; ask for every held key.

        Meanwhile submissions wait in the outbox and questions fail.  The
        scheduler answers the held keys it knows with their state; the others
        end as ``FutureLostError`` (see ``ClientState._refused``).
        """
        self.sender = None  # submissions wait in the outbox, not in a dead connection's buffer
        self._fail_replies(ClientDisconnectedError(f"lost the connection to the scheduler: {reason}"))
        logger.warning(
            "lost the connection to the scheduler (%s): reconnecting for up to %ss", reason, self.reconnect_timeout
        )
        client_id = self.welcome.client_id if self.welcome is not None else self.name
        hello = p.Hello(p.PROTOCOL_VERSION, "client", client_id, auth=self.security.secret)
        deadline = time.monotonic() + self.reconnect_timeout
        delay = 0.05
        while not self.closing:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                comm, reply = await open_comm(
                    self.address, hello, timeout=min(self.timeout, left), security=self.security
                )
            except (ConnectError, CommClosedError, OSError, TimeoutError) as exc:
                # Not up yet, or it still holds the old connection under this id.
                logger.debug("reconnecting to %s: %s", self.address, exc)
                await anyio.sleep(min(delay, max(left, 0.0)))
                delay = min(1.0, 2 * delay)
                continue
            sender = self._connected(comm, reply)
            logger.warning("reconnected to the scheduler %s at %s", reply.scheduler_id, self.address)
            held = self.state.held_keys()
            if held:
                sender.send(p.WantKeys(held))
            self.flush()
            return True
        return False

    async def _receive(self, comm: Comm) -> str:
        decoder = p.FrameDecoder(p.SCHEDULER_TO_CLIENT)
        self._goodbye = ""
        try:
            while True:
                self._dispatch(decoder.decode(await comm.recv_frame()))
        except CommClosedError as exc:
            # The scheduler's own words (say, which limit this client went over) come first.
            return f"{self._goodbye} ({exc.reason})" if self._goodbye else exc.reason
        except p.ProtocolError as exc:
            logger.error("the scheduler sent a frame that does not decode: %s", exc)
            await comm.aclose("protocol error")
            return str(exc)

    def _dispatch(self, messages: list[p.SchedulerToClient]) -> None:
        news: list[p.SchedulerToClient] = []
        for msg in messages:
            kind = type(msg)
            if kind in _REPLIES:
                slot = self._replies.get(msg.request)  # type: ignore[union-attr]
                if slot is not None:
                    slot.value = msg
                    slot.event.set()
            elif kind is p.Close:
                self._goodbye = msg.reason  # type: ignore[union-attr]
                logger.info("the scheduler is closing: %s", self._goodbye)
            else:
                news.append(msg)
        if news:
            run_notifications(self.state.handle(news))

    def _connection_ended(self, reason: str) -> None:
        if self.closing:
            return
        error = ClientDisconnectedError(f"lost the connection to the scheduler: {reason}")
        self.lost = error
        logger.warning("%s", error)
        run_notifications(self.state.fail_all(error, cancelled=False))
        self._fail_replies(error)

    def _fail_replies(self, error: BaseException) -> None:
        for slot in self._replies.values():
            slot.error = error
            slot.event.set()

    async def close(self) -> None:
        """Flush, say ``Close``, close the connections; pending futures become cancelled.  Idempotent."""
        if self.closing:
            return
        self.closing = True
        sender, comm = self.sender, self.comm
        with anyio.CancelScope(shield=True):
            if sender is not None and comm is not None and not comm.closed:
                self.flush()
                try:
                    sender.send(p.Close("client closing"))
                except CommClosedError:
                    pass
                with anyio.move_on_after(self.timeout):
                    await sender.close()
                await comm.aclose("client closed")
            if self._runner is not None:
                self._runner.cancel()
                try:
                    await self._runner
                except asyncio.CancelledError:
                    pass
            await self.peers.aclose()
        error = ClientDisconnectedError("the client was closed")
        run_notifications(self.state.fail_all(error, cancelled=True))
        self._fail_replies(error)

    def check_open(self) -> None:
        if self.lost is not None:
            raise self.lost
        if self.closing or self.sender is None:
            raise ClientDisconnectedError("the client is not connected")

    # -- sending -----------------------------------------------------------------------

    def wake(self) -> None:
        """Have the loop send what is queued, soon.  Safe from any thread (and from ``__del__``)."""
        loop = self._loop
        if not self._wake_pending and loop is not None:
            self._wake_pending = True
            try:
                loop.call_soon_threadsafe(self.flush)
            except RuntimeError:  # the loop is closed: nothing to send to anyway
                pass

    def flush(self) -> None:
        """Move the outbox (and releases) to the sender (loop thread)."""
        self._wake_pending = False
        if self.sender is None:
            return  # not connected (yet, or again): the outbox keeps the messages
        messages = self.state.drain()
        if messages:
            try:
                self.sender.send_many(messages)
            except CommClosedError:
                pass  # the receiver reports the lost connection

    async def _ask(self, make: Callable[[int], p.ClientToScheduler]) -> p.SchedulerToClient:
        self.check_open()
        assert self.sender is not None
        self._request += 1
        request = self._request
        slot = self._replies[request] = _Reply()
        try:
            self.flush()  # the question must see everything sent before it
            self.sender.send(make(request))
            await slot.event.wait()
        finally:
            del self._replies[request]
        if slot.error is not None:
            raise slot.error
        assert slot.value is not None
        return slot.value

    async def who_has(self, keys: list[str]) -> dict[str, list[str]]:
        reply = await self._ask(lambda request: p.WhoHas(request, keys))
        assert isinstance(reply, p.WhoHasReply)
        return reply.who_has

    async def retire_workers(self, workers: list[str], timeout: float) -> list[str]:
        reply = await self._ask(lambda request: p.RetireWorkers(request, workers, timeout))
        assert isinstance(reply, p.RetireWorkersReply)
        return reply.retired

    async def get_workers(self) -> list[p.WorkerInfo]:
        reply = await self._ask(p.GetWorkers)
        assert isinstance(reply, p.WorkersReply)
        return reply.workers

    async def diagnostics(self, op: str, params: dict[str, str | float | bool | None]) -> bytes:
        """Ask the scheduler for a diagnostic; its payload, or ``DiagnosticsError``."""
        reply = await self._ask(lambda request: p.Diagnostics(request, op, params))
        assert isinstance(reply, p.DiagnosticsReply)
        if reply.error:
            raise DiagnosticsError(reply.error)
        return reply.payload

    async def wait_for_workers(self, n_workers: int, timeout: float | None) -> list[p.WorkerInfo]:
        with anyio.fail_after(timeout):
            while True:
                workers = await self.get_workers()
                if len(workers) >= n_workers:
                    return workers
                await anyio.sleep(WORKER_POLL)

    # -- waiting -----------------------------------------------------------------------

    async def wait_done(self, states: list[KeyState], count: int | None = None, stop_on_error: bool = False) -> None:
        """Wait until ``count`` (default: all) of ``states`` are done, or one errs with ``stop_on_error``."""
        unique = list(dict.fromkeys(states))
        needed = len(unique) if count is None else min(count, len(unique))
        if needed <= 0:
            return
        waiter = CountWaiter(needed, stop_on_error)
        for state in self.state.watch(unique, waiter):  # registered on the pending ones
            waiter.key_done(state)
        await waiter.event.wait()

    async def gather_raw(self, states: list[KeyState], stop_on_error: bool, timeout: float | None) -> dict[str, Raw]:
        """The pickled values of ``states`` once they are done (erred ones are left out).

        Keys are fetched in batches as they finish, while the others still
        compute.  With ``stop_on_error``, returns nothing as soon as one key
        erred (the caller raises its error).
        """
        unique = list(dict.fromkeys(states))
        batch = max(MIN_PIPELINED_FETCH, min(GET_DATA_CHUNK, len(unique) // 8))
        collector = _Collector(len(unique), stop_on_error, batch)
        for state in self.state.watch(unique, collector):  # registered on the pending ones
            collector.key_done(state)
        data: dict[str, Raw] = {}
        failures: list[Exception] = []
        with anyio.fail_after(timeout):
            async with anyio.create_task_group() as tg:
                while not failures:
                    await collector.event.wait()
                    collector.event = anyio.Event()
                    if collector.errored and stop_on_error:
                        tg.cancel_scope.cancel()
                        return {}
                    ready, collector.ready = collector.ready, []
                    if ready:
                        tg.start_soon(self._fetch_into, ready, data, failures, collector)
                    if collector.remaining <= 0:
                        break
        if failures:
            raise failures[0]  # as itself, not wrapped in an exception group
        return data

    async def _fetch_into(
        self, states: list[KeyState], data: dict[str, Raw], failures: list[Exception], collector: _Collector
    ) -> None:
        try:
            data.update(await self.fetch(states))
        except Exception as exc:
            failures.append(exc)
            collector.event.set()  # wake the gather to stop

    async def fetch(self, states: list[KeyState]) -> dict[str, Raw]:
        """The pickled values of finished keys, from whichever workers hold them."""
        data: dict[str, Raw] = {}
        todo = states
        delay = FIRST_RETRY
        while todo:
            self.check_open()
            who_has = await self.who_has([s.key for s in todo])
            per_worker: dict[str, list[str]] = {}
            retry: list[str] = []
            for state in todo:
                holders = who_has.get(state.key)
                if not holders:
                    retry.append(state.key)
                    continue
                worker = holders[0] if len(holders) == 1 else random.choice(holders)
                keys = per_worker.get(worker)
                if keys is None:
                    per_worker[worker] = [state.key]
                else:
                    keys.append(state.key)
            if per_worker:
                async with anyio.create_task_group() as tg:
                    for worker, keys in per_worker.items():
                        for i in range(0, len(keys), GET_DATA_CHUNK):
                            tg.start_soon(self._fetch_from, worker, keys[i : i + GET_DATA_CHUNK], data, retry)
            if not retry:
                break
            by_key = {s.key: s for s in todo}
            todo = [by_key[k] for k in retry if k in by_key and by_key[k].status == FINISHED]
            if todo:
                await anyio.sleep(delay)
                delay = min(delay * 2, MAX_RETRY)
        return data

    async def _fetch_from(self, worker: str, keys: list[str], data: dict[str, Raw], retry: list[str]) -> None:
        try:
            reply = await self.peers.get_data(worker, keys)
        except CommClosedError as exc:
            logger.info("could not fetch %d keys from %s: %s", len(keys), worker, exc.reason)
            retry.extend(keys)
            return
        if reply is None:  # busy
            retry.extend(keys)
            return
        data.update(reply.data)  # type: ignore[arg-type]
        if reply.missing:
            retry.extend(reply.missing)

    # -- scatter and cancel --------------------------------------------------------------

    async def scatter(
        self, payloads: dict[str, bytes], workers: list[str] | None, broadcast: bool
    ) -> dict[str, KeyState]:
        """Put values on workers (round robin, or all of them), then tell the scheduler."""
        with anyio.fail_after(self.timeout):
            while True:
                infos = await self.get_workers()
                targets = [w.address for w in infos if not workers or w.address in workers or w.name in workers]
                if targets:
                    break
                await anyio.sleep(WORKER_POLL)
        if broadcast:
            plan = {address: dict(payloads) for address in targets}
        else:
            plan = {}
            start = self._scatter_start
            for i, key in enumerate(payloads):
                address = targets[(start + i) % len(targets)]
                plan.setdefault(address, {})[key] = payloads[key]
            self._scatter_start = start + len(payloads)
        sizes: dict[str, dict[str, int]] = {}

        async def put(address: str, data: dict[str, bytes]) -> None:
            sizes[address] = await self.peers.put_data(address, data)

        async with anyio.create_task_group() as tg:
            for address, data in plan.items():
                tg.start_soon(put, address, data)
        held: dict[str, KeyState] = {}
        if broadcast:
            first = sizes[targets[0]]
            nbytes = {k: first.get(k, len(v)) for k, v in payloads.items()}
            states = self.state.scattered(nbytes, list(targets))
            held.update(zip(nbytes, states))
        else:
            for address, data in plan.items():
                got = sizes[address]
                nbytes = {k: got.get(k, len(v)) for k, v in data.items()}
                held.update(zip(nbytes, self.state.scattered(nbytes, [address])))
        if held:
            # The scheduler answers a query after everything sent before it: once this
            # returns it knows the data, as after Dask's scatter.
            await self.who_has([next(iter(held))])
        return held

    def cancel(self, states: list[KeyState], force: bool) -> None:
        run_notifications(self.state.cancel(states, force))
        self.flush()

