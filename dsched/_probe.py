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

__all__ = ["SchedulerProbe", "wait_for_workers"]


class SchedulerProbe:
    """``async with SchedulerProbe(address) as probe: await probe.workers()``."""

    def __init__(self, address: str, *, auth: str = "", timeout: float = 10.0) -> None:
        self.address = address
        self.auth = auth
        self.timeout = timeout
        self._comm: Comm | None = None
        self._encoder = p.FrameEncoder(p.CLIENT_TO_SCHEDULER)
        self._decoder = p.FrameDecoder(p.SCHEDULER_TO_CLIENT)
        self._request = 0

    async def __aenter__(self) -> SchedulerProbe:
        hello = p.Hello(p.PROTOCOL_VERSION, "client", "", auth=self.auth)
        self._comm, _ = await open_comm(self.address, hello, timeout=self.timeout)
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
) -> list[p.WorkerInfo]:
    """Poll the scheduler until ``condition(workers)`` holds; return those workers.

    ``check()`` runs between polls and may raise to give up early (a child
    process died).  Raises ``TimeoutError`` after ``timeout`` seconds.
    """
    with anyio.fail_after(timeout):
        async with SchedulerProbe(address, timeout=timeout) as probe:
            while True:
                workers = await probe.workers()
                if condition(workers):
                    return workers
                if check is not None:
                    check()
                await anyio.sleep(poll_interval)
