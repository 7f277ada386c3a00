"""The asynchronous Client in the test's event loop, against a real scheduler and workers
(and, for gather's retries, a fake worker that speaks the protocol directly)."""

from __future__ import annotations

import contextlib
import gc
import operator
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from _client_helpers import add, fail, gate, gated, inc, open_all_gates, total, wait_until

from dsched import _protocol as p
from dsched._as_completed import FIRST_COMPLETED, as_completed, wait
from dsched._client import Client
from dsched._client_errors import ClientDisconnectedError, FutureCancelledError, GraphError
from dsched._comm import Comm, connect, listen, parse_address
from dsched._future import Future
from dsched._scheduler_server import SchedulerServer
from dsched._serialize import dumps_value
from dsched._worker import Worker

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@contextlib.asynccontextmanager
async def cluster(n_workers: int = 2, nthreads: int = 2) -> AsyncIterator[tuple[SchedulerServer, list[Worker]]]:
    try:
        async with SchedulerServer() as server, contextlib.AsyncExitStack() as stack:
            workers = [
                await stack.enter_async_context(Worker(server.address, nthreads=nthreads)) for _ in range(n_workers)
            ]
            await wait_until(lambda: len(server.state.workers) == n_workers)
            yield server, workers
    finally:
        open_all_gates()


async def test_async_client_basics() -> None:
    async with cluster() as (server, _), Client(server.address, asynchronous=True) as client:
        assert client.status == "running" and client.id in server.state.clients
        future = client.submit(inc, 1)
        assert await future == 2
        assert await future.result() == 2
        assert await future.exception() is None
        futures = client.map(add, range(50), y=1)
        assert await client.gather(futures) == list(range(1, 51))
        assert await client.gather({"a": futures[0], "b": [futures[1]]}) == {"a": 1, "b": [2]}
        assert await client.submit(total, futures) == sum(range(1, 51))
        [x] = await client.scatter([10])
        assert await client.submit(inc, x) == 11
        dsk = {"x": 1, "y": (inc, "x"), "z": (operator.add, "y", (inc, 10))}
        assert await client.get(dsk, ["z", "y"]) == [13, 2]
        with pytest.raises(GraphError):
            await client.get({"a": (inc, "b"), "b": (inc, "a")}, "a")
        info = await client.scheduler_info()
        assert len(info["workers"]) == 2
        assert sum((await client.nthreads()).values()) == 4
        await client.wait_for_workers(2, timeout=5)


async def test_async_errors_cancel_and_callbacks() -> None:
    async with cluster() as (server, _), Client(server.address, asynchronous=True) as client:
        erred = client.submit(fail, "async boom")
        with pytest.raises(ValueError, match="async boom"):
            await erred
        assert isinstance(await erred.exception(), ValueError)
        blocked = client.submit(gated, "async-cancel", 1, pure=False)
        await client.cancel([blocked])
        assert blocked.cancelled()
        with pytest.raises(FutureCancelledError):
            await blocked
        gate("async-cancel").set()
        seen: list[str] = []
        done = anyio.Event()
        later = client.submit(inc, 99)

        def on_done(f: Future) -> None:
            seen.append(f.status)
            done.set()

        later.add_done_callback(on_done)
        with anyio.fail_after(5):
            await done.wait()
        assert seen == ["finished"]


async def test_async_as_completed_and_wait() -> None:
    async with cluster() as (server, _), Client(server.address, asynchronous=True) as client:
        slow = client.submit(gated, "async-slow", "slow", pure=False)
        fast = client.submit(inc, 0)
        done, not_done = await wait([slow, fast], return_when=FIRST_COMPLETED)
        assert done == {fast} and not_done == {slow}
        order = []
        seq = as_completed([slow, fast])
        async for future in seq:
            order.append(future)
            if future is fast:
                gate("async-slow").set()
        assert order == [fast, slow]
        pairs = [pair async for pair in as_completed(client.map(inc, range(3)), with_results=True)]
        assert sorted(result for _, result in pairs) == [1, 2, 3]


async def test_awaited_client_close_and_forget() -> None:
    async with cluster() as (server, _):
        client = await Client(server.address, asynchronous=True, name="awaited")
        assert client.id == "awaited"
        future = client.submit(inc, 5)
        assert await future == 6
        key = future.key
        del future
        gc.collect()
        await wait_until(lambda: key not in server.state.tasks)
        pending = client.submit(gated, "async-close", 0, pure=False)
        await client.close()
        await client.close()
        assert client.status == "closed" and pending.cancelled()
        await wait_until(lambda: not server.state.clients and not server.clients)


async def test_lost_scheduler_fails_pending_futures() -> None:
    async with cluster(n_workers=1) as (server, _):
        client = await Client(server.address, asynchronous=True)
        pending = client.submit(gated, "async-lost", 0, pure=False)
        await wait_until(lambda: pending.key in server.state.tasks)
        for conn in list(server.clients.values()):
            await conn.comm.aclose("the scheduler dropped the client")
        with pytest.raises(ClientDisconnectedError):
            await pending
        with pytest.raises(ClientDisconnectedError):
            client.submit(inc, 1)
        await client.close()
        gate("async-lost").set()


class FakePeer:
    """A worker's data service that answers ``GetData`` from a script: Busy, missing, then the data."""

    def __init__(self, replies: list[str], value: Any) -> None:
        self.replies = replies
        self.value = value
        self.requests: list[list[str]] = []

    async def handle(self, comm: Comm) -> None:
        hello = p.decode_hello(await comm.recv_frame())
        assert hello.role == "peer"
        await comm.send_frame(p.encode_handshake(p.Welcome(p.PROTOCOL_VERSION, "fake")))
        encoder, decoder = p.FrameEncoder(p.PEER), p.FrameDecoder(p.PEER)
        while True:
            (msg,) = decoder.decode(await comm.recv_frame())
            assert isinstance(msg, p.GetData)
            self.requests.append(list(msg.keys))
            script = self.replies.pop(0) if self.replies else "data"
            reply: p.PeerMessage
            if script == "busy":
                reply = p.Busy(msg.request)
            elif script == "missing":
                reply = p.DataReply(msg.request, {}, list(msg.keys))
            else:
                reply = p.DataReply(msg.request, {k: dumps_value(self.value) for k in msg.keys})
            await comm.send_frame(encoder.encode([reply]))


async def test_gather_retries_busy_and_missing_workers() -> None:
    peer = FakePeer(["busy", "missing"], value={"answer": 42})
    async with SchedulerServer() as server, listen("127.0.0.1", 0, peer.handle) as data_service:
        _, host, port = parse_address(server.address)
        comm = await connect(host, port)
        await comm.send_frame(p.encode_handshake(p.Hello(p.PROTOCOL_VERSION, "worker", "fake")))
        assert isinstance(p.decode_reply(await comm.recv_frame()), p.Welcome)
        to_scheduler = p.FrameEncoder(p.WORKER_TO_SCHEDULER)
        from_scheduler = p.FrameDecoder(p.SCHEDULER_TO_WORKER)
        await comm.send_frame(to_scheduler.encode([p.RegisterWorker(data_service.address, 1)]))
        await wait_until(lambda: data_service.address in server.state.workers)
        async with Client(server.address, asynchronous=True) as client:
            future = client.submit(inc, 1)
            with anyio.fail_after(5):
                while True:
                    computes = [m for m in from_scheduler.decode(await comm.recv_frame()) if isinstance(m, p.Compute)]
                    if computes:
                        break
            (compute,) = computes
            assert compute.key == future.key
            await comm.send_frame(to_scheduler.encode([p.TaskFinished(compute.key, 8, 0.001, compute.run_id)]))
            with anyio.fail_after(5):
                assert await future == {"answer": 42}
            assert peer.requests == [[future.key]] * 3  # busy, missing, then served
        await comm.aclose()
