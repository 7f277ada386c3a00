"""A minimal client that asks a scheduler which workers it has.

A local cluster (and ``dsched local``) must know when its workers have
registered, and under which addresses, without depending on the full
:class:`~dsched._client.Client`: this speaks just the handshake and
``GetWorkers`` / ``WorkersReply``.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio

from dsched import _protocol as p
from dsched._handshake import open_comm
from dsched._comm import Comm, CommClosedError
from dsched._security import Security, security_for

__all__ = ["SchedulerProbe", "wait_for_workers"]


class SchedulerProbe:
    """``async with SchedulerProbe(address) as probe: await probe.workers()``."""

    def __init__(self, address: str, *, security: Security | None = None, timeout: float = 10.0) -> None:
        self.address = address
        self.security = security if security is not None else security_for(address)
        self.timeout = timeout
        self._comm: Comm | None = None
        self._encoder = p.FrameEncoder(p.CLIENT_TO_SCHEDULER)
        self._decoder = p.FrameDecoder(p.SCHEDULER_TO_CLIENT)
        self._request = 0

    async def __aenter__(self) -> SchedulerProbe:
        hello = p.Hello(p.PROTOCOL_VERSION, "client", "", auth=self.security.secret)
        self._comm, _ = await open_comm(self.address, hello, timeout=self.timeout, security=self.security)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        comm, self._comm = self._comm, None
        if comm is not None:
            try:
                await comm.send_frame(self._encoder.encode([p.Close("probe done")]))
            except CommClosedError:
                pass
            await comm.aclose("probe done")

    async def workers(self) -> list[p.WorkerInfo]:
        """The workers the scheduler knows now."""
        comm = self._comm
        if comm is None:
            raise RuntimeError("SchedulerProbe is not connected (use it as an async context manager)")
        self._request += 1
        request = self._request
        await comm.send_frame(self._encoder.encode([p.GetWorkers(request)]))
        with anyio.fail_after(self.timeout):
            while True:
                for msg in self._decoder.decode(await comm.recv_frame()):
                    if isinstance(msg, p.WorkersReply) and msg.request == request:
                        return list(msg.workers)
                    if isinstance(msg, p.Close):
                        raise CommClosedError(f"the scheduler closed the connection: {msg.reason}")


async def wait_for_workers(
    address: str,
    condition: Callable[[list[p.WorkerInfo]], bool],
    *,
    timeout: float,
    check: Callable[[], None] | None = None,
    poll_interval: float = 0.05,
    security: Security | None = None,
) -> list[p.WorkerInfo]:
    """Poll the scheduler until ``condition(workers)`` holds; return those workers.

    ``check()`` runs between polls and may raise to give up early (a child
    process died).  Raises ``TimeoutError`` after ``timeout`` seconds.
    """
    with anyio.fail_after(timeout):
        async with SchedulerProbe(address, security=security, timeout=timeout) as probe:
            while True:
                workers = await probe.workers()
                if condition(workers):
                    return workers
                if check is not None:
                    check()
                await anyio.sleep(poll_interval)
