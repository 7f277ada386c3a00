"""The scheduler server's side of retiring workers (the plan itself is the core's: ``sched_core._retire``).

A retirement starts when a worker says ``Close`` (``Worker.close()``, SIGTERM
or SIGINT of ``dsched worker``) or a client sends ``RetireWorkers``.  The
server feeds ``RetireWorker`` to the core, keeps the worker's connection open
while its only copies move (the core's ``AcquireReplicas``, sent to the
receiving workers), and on the core's ``CloseWorker`` tells the worker
``Close``; the worker exits and its removal is an expected one.  A retirement
that has not finished after its timeout (a transfer failed, a peer hung) is
closed all the same: what only that worker held is then recomputed like any
lost result.  A client's ``RetireWorkers`` is answered once every worker it
named is gone (or at its deadline, with those that are).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

import sched_core as sc
from dsched import _protocol as p
from dsched._scheduler_routes import ClientConn, WorkerConn, send_quietly

if TYPE_CHECKING:
    from dsched._scheduler_server import SchedulerServer

__all__ = ["DEFAULT_RETIRE_TIMEOUT", "Retirements"]

logger = logging.getLogger("dsched.scheduler")

DEFAULT_RETIRE_TIMEOUT: Final = 60.0
# A client's request is answered this long after its timeout even if a worker
# closed for the timeout has not disconnected yet.
_REPLY_GRACE: Final = 5.0


class _Request:
    __slots__ = ("client", "deadline", "pending", "request", "retired")

    def __init__(self, client: ClientConn, request: int, pending: set[str], deadline: float) -> None:
        self.client = client
        self.request = request
        self.pending = pending
        self.retired: list[str] = []
        self.deadline = deadline


class Retirements:
    """Workers being retired and the clients waiting for them."""

    def __init__(self, server: SchedulerServer, timeout: float = DEFAULT_RETIRE_TIMEOUT) -> None:
        self.server = server
        self.timeout = timeout
        self.requests: list[_Request] = []
        self.n_forced = 0  # retirements closed by their timeout

    def start(self, conn: WorkerConn, timeout: float | None = None) -> sc.RetireWorker | None:
        """Begin retiring ``conn``'s worker: the event for the core, or None if it is retiring already
        (then only an earlier deadline counts)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        if conn.retire_deadline > 0.0:
            conn.retire_deadline = min(conn.retire_deadline, deadline)
            return None
        conn.retire_deadline = deadline
        logger.info("retiring worker %s", conn.address)
        return sc.RetireWorker(conn.address)

    def request(self, client: ClientConn, msg: p.RetireWorkers) -> None:
        """A client's ``RetireWorkers``: start each named worker's retirement, answer when all are gone."""
        addresses: set[str] = set()
        events: list[sc.SchedulerEvent] = []
        for name in msg.workers:
            address = self._resolve(name)
            if address is not None:
                addresses.add(address)
                event = self.start(self.server.workers[address], msg.timeout)
                if event is not None:
                    events.append(event)
        self.server.push_from_workers(events)
        if not addresses:
            send_quietly(client.sender, p.RetireWorkersReply(msg.request, []))
            return
        deadline = time.monotonic() + msg.timeout + _REPLY_GRACE
        self.requests.append(_Request(client, msg.request, addresses, deadline))

    def _resolve(self, name: str) -> str | None:
        workers = self.server.workers
        if name in workers:
            return name
        ws = self.server.state.aliases.get(name)
        if ws is not None and ws.address in workers:
            return ws.address
        return None

    def close_worker(self, address: str, reason: str) -> None:
        """The core's ``CloseWorker``: the worker may go."""
        conn = self.server.workers.get(address)
        if conn is None or conn.closing:
            return
        conn.closing = True
        send_quietly(conn.sender, p.Close(reason))

    def worker_gone(self, address: str) -> None:
        if not self.requests:
            return
        for req in self.requests:
            if address in req.pending:
                req.pending.discard(address)
                req.retired.append(address)
        self._answer(lambda req: not req.pending)

    def check_deadlines(self, now: float) -> None:
        """Close retirements past their timeout; answer requests past theirs."""
        for conn in list(self.server.workers.values()):
            if 0.0 < conn.retire_deadline < now and not conn.closing:
                self.n_forced += 1
                logger.warning("worker %s did not finish retiring in time: closing it anyway", conn.address)
                self.close_worker(conn.address, "retirement timed out")
        if self.requests:
            self._answer(lambda req: not req.pending or req.deadline < now)

    def _answer(self, ready: Callable[[_Request], bool]) -> None:
        keep: list[_Request] = []
        for req in self.requests:
            if ready(req):
                send_quietly(req.client.sender, p.RetireWorkersReply(req.request, sorted(req.retired)))
            else:
                keep.append(req)
        self.requests = keep
