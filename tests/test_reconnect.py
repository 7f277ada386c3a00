"""A client that loses its scheduler: it fails fast, or (``reconnect_timeout``) reconnects, and then
its futures of keys the scheduler no longer knows say so (``FutureLostError``) instead of hanging."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import anyio
import pytest
from _client_helpers import gate, gated, inc, open_all_gates, wait_until

from dsched._client import Client
from dsched._client_errors import FutureLostError
from dsched._comm import parse_address
from dsched._scheduler_server import SchedulerServer
from dsched._worker import Worker

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@contextlib.asynccontextmanager
async def scheduler_with_worker(port: int = 0) -> AsyncIterator[SchedulerServer]:
    async with SchedulerServer(port=port) as server, Worker(server.address, nthreads=2):
        await wait_until(lambda: len(server.state.workers) == 1)
        yield server


async def test_after_a_scheduler_restart_old_futures_say_the_key_is_unknown() -> None:
    try:
        async with scheduler_with_worker() as first:
            _, _, port = parse_address(first.address)
            client = await Client(first.address, asynchronous=True, reconnect_timeout=30)
            done = client.submit(inc, 1)
            assert await done == 2
            pending = client.submit(gated, "reconnect-pending", 5, pure=False)
            await wait_until(lambda: pending.key in first.state.tasks)
        open_all_gates()
        # The scheduler is gone; a new one comes up at the same address.
        async with scheduler_with_worker(port) as second:
            with anyio.fail_after(20):
                while done.status != "lost" or pending.status != "lost":
                    await anyio.sleep(0.02)
            for future in (done, pending):
                error = await future.exception()
                assert isinstance(error, FutureLostError)
                assert future.key in str(error) and "no longer knows" in str(error)
            # The client goes on with the new scheduler.
            assert client.id in second.state.clients
            assert await client.submit(inc, 10) == 11
            await client.close()
    finally:
        open_all_gates()


async def test_reconnecting_after_a_dropped_connection_keeps_what_the_scheduler_still_has() -> None:
    try:
        async with scheduler_with_worker() as server:
            client = await Client(server.address, asynchronous=True, reconnect_timeout=30)
            keeper = await Client(server.address, asynchronous=True)
            shared = client.submit(inc, 41)
            also_held = keeper.submit(inc, 41)  # the same key, held by another client too
            own = client.submit(inc, 100)
            assert await shared == 42 and await also_held == 42 and await own == 101
            conn = server.clients[client.id]
            await conn.comm.aclose("a network hiccup")  # the scheduler drops the client
            with anyio.fail_after(20):
                while own.status != "lost":
                    await anyio.sleep(0.02)
            # Dropped, the client's holds went; what another client held is still there.
            assert shared.status == "finished" and await shared.result() == 42
            assert isinstance(await own.exception(), FutureLostError)
            assert await client.submit(inc, 1) == 2
            await keeper.close()
            await client.close()
    finally:
        open_all_gates()


async def test_without_reconnect_timeout_a_lost_scheduler_fails_futures_at_once() -> None:
    try:
        async with scheduler_with_worker() as server:
            client = await Client(server.address, asynchronous=True)
            pending = client.submit(gated, "no-reconnect", 1, pure=False)
            await wait_until(lambda: pending.key in server.state.tasks)
            await server.clients[client.id].comm.aclose("dropped")
            with anyio.fail_after(5):
                error = await pending.exception()
            assert "lost the connection" in str(error)
            await client.close()
    finally:
        gate("no-reconnect").set()
        open_all_gates()
