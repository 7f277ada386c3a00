"""High-level graphs end to end: a SubmitLayers expanded on the scheduler, run on real workers."""

from __future__ import annotations

import operator
import pickle
from typing import Any

import anyio
import pytest

import sched_core as sc

from dsched import _protocol as p
from dsched._scheduler_server import SchedulerServer
from dsched._serialize import dumps_function
from dsched._worker import Worker
from test_worker import BareClient

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def square(x: int) -> int:
    return x * x


def total(values: list[int]) -> int:
    return sum(values)


def layers_message(n: int, split_every: int = 4) -> p.SubmitLayers:
    functions = [dumps_function(f) for f in (square, operator.add, total)]
    maps = [
        p.MapLayerSpec("x", n, 0, [pickle.dumps((i,)) for i in range(n)]),  # x_i = i*i
        p.MapLayerSpec("ten", 1, 0, [pickle.dumps((10,))]),  # broadcast: 100
        p.MapLayerSpec("y", n, 1, None, ["x", "ten"], [n, 1]),  # y_i = i*i + 100
    ]
    reductions = [p.TreeReduceLayerSpec("s", "y", n, combine=2, aggregate=2, split_every=split_every)]
    order = [(0, 0), (0, 1), (0, 2), (1, 0)]
    return p.SubmitLayers(functions, maps, reductions, order, ["('s', 0)", "('y', 3)"])


async def test_layers_expand_and_run() -> None:
    n = 40
    async with SchedulerServer() as s, Worker(s.address), Worker(s.address, nthreads=2):
        c = await BareClient.open(s.address)
        await c.send(layers_message(n))
        await c.wait_done(["('s', 0)", "('y', 3)"])
        got = await c.fetch(["('s', 0)", "('y', 3)"])
        assert got == {"('s', 0)": sum(i * i + 100 for i in range(n)), "('y', 3)": 109}
        # Only what the client holds stays in memory: the holder's holds went with it
        # (intermediates stay known as "released", for lineage, like in Dask).
        def in_memory() -> set[str]:
            return {k for k, ts in s.state.tasks.items() if sc.state_name(ts.state) == "memory"}

        with anyio.fail_after(5):
            while in_memory() != {"('s', 0)", "('y', 3)"}:
                await anyio.sleep(0.01)
        await c.aclose()


async def test_big_layers_are_expanded_over_several_ticks_and_start_early(monkeypatch: pytest.MonkeyPatch) -> None:
    import dsched._scheduler_server as server_module

    n = 3000
    async with SchedulerServer(chunk_size=200) as s, Worker(s.address):
        c = await BareClient.open(s.address)
        started: list[int] = []
        original = server_module.route

        def spy(server: Any, instructions: list[Any]) -> None:
            if any(isinstance(i, sc.ComputeTask) for i in instructions):
                started.append(len(server.state.tasks))
            original(server, instructions)

        monkeypatch.setattr(server_module, "route", spy)
        await c.send(layers_message(n, split_every=8))
        await c.wait_done(["('s', 0)"])
        assert (await c.fetch(["('s', 0)"]))["('s', 0)"] == sum(i * i + 100 for i in range(n))
        # The first tasks were sent to the worker while most of the graph was not expanded yet.
        assert started and started[0] < n
        await c.aclose()


async def test_invalid_layers_are_refused_with_a_clear_error() -> None:
    async with SchedulerServer() as s, Worker(s.address):
        c = await BareClient.open(s.address)
        bad = p.SubmitLayers([dumps_function(square)], [p.MapLayerSpec("y", 2, 0, None, ["nope"], [2])], [], [(0, 0)], ["('y', 0)"])
        await c.send(bad)
        err = await c.expect(p.ClientError)
        assert err.kind == "invalid-layers" and "'nope'" in err.message
        # The scheduler keeps serving this client.
        await c.send(layers_message(4))
        await c.wait_done(["('s', 0)"])
        await c.aclose()


async def test_wanting_whole_layers_by_name() -> None:
    async with SchedulerServer() as s, Worker(s.address):
        c = await BareClient.open(s.address)
        msg = layers_message(6)
        by_name = p.SubmitLayers(msg.functions, msg.maps, msg.reductions, msg.order, [], ["y"])
        await c.send(by_name)
        keys = [f"('y', {i})" for i in range(6)]
        await c.wait_done(keys)
        assert await c.fetch(keys) == {k: i * i + 100 for i, k in enumerate(keys)}
        unknown = p.SubmitLayers(msg.functions, msg.maps, msg.reductions, msg.order, [], ["nope"])
        await c.send(unknown)
        err = await c.expect(p.ClientError)
        assert err.kind == "invalid-layers" and "'nope'" in err.message
        await c.aclose()


async def test_a_graph_expanding_beyond_the_limit_is_refused() -> None:
    async with SchedulerServer(max_layer_tasks=1000) as s, Worker(s.address):
        c = await BareClient.open(s.address)
        huge = p.SubmitLayers([dumps_function(square)], [p.MapLayerSpec("many", 10**12, 0)], [], [(0, 0)], [], ["many"])
        await c.send(huge)
        err = await c.expect(p.ClientError)
        assert err.kind == "limit-exceeded" and "1,000,000,000,000 tasks" in err.message
        assert "max_layer_tasks=1,000" in err.message and s.refused["max_layer_tasks"] == 1
        assert s.state.tasks == {}
        await c.send(layers_message(4))  # still served
        await c.wait_done(["('s', 0)"])
        await c.aclose()
