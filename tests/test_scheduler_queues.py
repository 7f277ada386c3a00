"""The scheduler server's queues: one per client, one for the workers' events.

A high-level graph being expanded (a chunk per tick) holds up only the events
of the client that sent it; other clients and the workers' results go on.
Each test drives a real in-process scheduler and workers with raw protocol
messages (``BareClient``) and compares orderings, never durations.

To make an expansion last many ticks without a huge graph the servers here
have a small ``chunk_size``: a tick then takes at most that many events, so a
layer is expanded at most ``LAYER_CHUNK`` tasks per tick (instead of 10,000).
"""

from __future__ import annotations

import pickle

import anyio
import pytest

import sched_core as sc
from _client_helpers import add, inc
from dsched import _protocol as p
from dsched._scheduler_server import SchedulerServer
from dsched._serialize import Ref, dumps_function
from dsched._worker import Worker
from test_worker import BareClient

pytestmark = pytest.mark.anyio

LAYER_CHUNK = 2_000
BIG = 200_000  # 100 ticks or more to expand


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def one() -> int:
    return 1


def big_layer(name: str, n: int, *, wanted: list[str] | None = None, with_args: bool = False) -> p.SubmitLayers:
    """A Map layer of ``n`` partitions: ``one()``, or ``inc(i)`` with ``with_args``; the whole layer
    wanted unless ``wanted`` names keys."""
    func = inc if with_args else one
    args = [pickle.dumps((i,)) for i in range(n)] if with_args else None
    layer = p.MapLayerSpec(name, n, 0, args)
    if wanted is None:
        return p.SubmitLayers([dumps_function(func)], [layer], [], [(0, 0)], [], [name])
    return p.SubmitLayers([dumps_function(func)], [layer], [], [(0, 0)], wanted)


async def results_in_memory(client: BareClient, keys: list[str]) -> None:
    """Wait until every key is in memory; fail at once on a refusal or an error instead."""
    left = set(keys)
    while left:
        msg = await client.expect(object, lambda m: isinstance(m, (p.KeysInMemory, p.ClientError, p.KeyErred)))
        assert isinstance(msg, p.KeysInMemory), msg
        left.difference_update(msg.keys)


async def wait_known(server: SchedulerServer, key: str) -> None:
    with anyio.fail_after(30):
        while key not in server.state.tasks:
            await anyio.sleep(0)


async def test_another_client_is_served_while_a_big_layer_expands() -> None:
    async with SchedulerServer(chunk_size=LAYER_CHUNK) as s, Worker(s.address, nthreads=2), Worker(s.address):
        a = await BareClient.open(s.address)
        b = await BareClient.open(s.address)
        last = sc.layer_key("big", BIG - 1)
        await a.send(big_layer("big", BIG))
        await wait_known(s, sc.layer_key("big", 0))  # the expansion has begun
        await b.submit(b.task("b-small", inc, 41))
        await wait_known(s, "b-small")
        assert last not in s.state.tasks  # B's submission went in while A's graph was expanding
        await results_in_memory(b, ["b-small"])
        assert last not in s.state.tasks  # and its result came back meanwhile
        assert await b.fetch(["b-small"]) == {"b-small": 42}
        assert not any(isinstance(m, p.ClientError) for m in a.inbox + b.inbox)
        await b.aclose()
        await a.aclose()


async def test_first_results_of_a_big_layer_arrive_before_it_is_expanded() -> None:
    async with SchedulerServer(chunk_size=LAYER_CHUNK) as s, Worker(s.address, nthreads=2):
        a = await BareClient.open(s.address)
        first, last = sc.layer_key("big", 0), sc.layer_key("big", BIG - 1)
        await a.send(big_layer("big", BIG, with_args=True))
        done: set[str] = set()
        while first not in done:
            done.update((await a.expect(p.KeysInMemory)).keys)
        assert last not in s.state.tasks
        # A query right behind the graph (here: where is the first result?) is answered
        # now, not after the expansion: this is what a future's result() asks.
        assert await a.fetch([first]) == {first: 1}
        assert last not in s.state.tasks
        assert len(done) < BIG // 2
        await a.aclose()


async def test_a_clients_own_events_keep_their_order_behind_its_big_layer() -> None:
    n = 50_000  # expanded over 25 ticks or more
    async with SchedulerServer(chunk_size=LAYER_CHUNK) as s, Worker(s.address, nthreads=2):
        a = await BareClient.open(s.address)
        last, early = sc.layer_key("big", n - 1), sc.layer_key("big", 0)
        # In the same frame: a task on the last partition (expanded last of all).
        same_frame = a.task("after-last", inc, Ref(last))
        await a.send(
            big_layer("big", n, wanted=[last, early], with_args=True),
            p.SubmitGraph(list(a.functions), [same_frame], ["after-last"]),
        )
        await wait_known(s, early)
        assert last not in s.state.tasks
        # In a later frame, while the layer is still expanding: tasks on its first and last keys.
        later = [a.task("after-early", inc, Ref(early)), a.task("on-both", add, Ref(early), Ref(last))]
        await a.submit(*later)
        keys = ["after-last", "after-early", "on-both"]
        await results_in_memory(a, keys)
        assert await a.fetch(keys) == {"after-last": n + 1, "after-early": 2, "on-both": 1 + n}
        assert not any(isinstance(m, p.ClientError) for m in a.inbox)
        # The layer's keys that nobody needs any more are let go once it is expanded.
        with anyio.fail_after(10):
            while set(s.state.tasks) != {early, last, *keys}:
                await anyio.sleep(0.01)
        await a.aclose()


async def test_a_client_gone_during_its_expansion_leaves_nothing_behind() -> None:
    async with SchedulerServer(chunk_size=LAYER_CHUNK) as s, Worker(s.address, nthreads=2):
        a = await BareClient.open(s.address)
        await a.send(big_layer("big", 20_000))
        await wait_known(s, sc.layer_key("big", 0))
        await a.aclose()
        b = await BareClient.open(s.address)
        await b.submit(b.task("b-after", inc, 1))
        await results_in_memory(b, ["b-after"])
        with anyio.fail_after(10):
            while set(s.state.tasks) != {"b-after"} or len(s.state.clients) != 1:
                await anyio.sleep(0.01)
        await b.aclose()


async def test_a_query_behind_releases_is_answered_during_the_expansion() -> None:
    async with SchedulerServer(chunk_size=LAYER_CHUNK) as s, Worker(s.address, nthreads=2):
        a = await BareClient.open(s.address)
        first, last = sc.layer_key("big", 0), sc.layer_key("big", BIG - 1)
        # What a client sends when it drops old futures and asks for a new result.
        await a.send(big_layer("big", BIG, with_args=True), p.ReleaseKeys(["an-old-key"]))
        done: set[str] = set()
        while first not in done:
            done.update((await a.expect(p.KeysInMemory)).keys)
        await a.send(p.ReleaseKeys(["another-old-key"]))
        assert await a.fetch([first]) == {first: 1}
        assert last not in s.state.tasks
        await a.aclose()


async def test_the_expansion_stops_when_its_client_is_gone() -> None:
    async with SchedulerServer(chunk_size=LAYER_CHUNK) as s, Worker(s.address, nthreads=2):
        a = await BareClient.open(s.address)
        await a.send(big_layer("big", BIG))
        await wait_known(s, sc.layer_key("big", 0))
        await a.aclose()
        with anyio.fail_after(10):
            while s.state.tasks or len(s.state.clients) != 0:
                await anyio.sleep(0.01)
        assert s.state.n_tasks_finished < BIG // 2  # the rest was never expanded, let alone run
