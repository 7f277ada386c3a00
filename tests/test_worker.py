"""The worker process's runtime, in-process over real TCP: a SchedulerServer, Workers,
and a bare client speaking the protocol (so these tests do not depend on the Client)."""

from __future__ import annotations

import operator
import os
from collections.abc import Callable
from typing import Any

import anyio
import pytest

from dsched import _protocol as p
from dsched._comm import Comm, CommClosedError, connect, parse_address
from dsched._scheduler_server import SchedulerServer
from dsched._security import Security
from dsched._serialize import Ref, dumps_args, dumps_function, dumps_value, loads_exception
from dsched._worker import Worker
from dsched._peer_pool import PeerPool
from dsched._worker_peers import fetch

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def inc(x: int) -> int:
    return x + 1


def fail(x: int) -> int:
    raise ValueError(f"bad value {x}")


class BareClient:
    """The client's side of the protocol, by hand."""

    def __init__(self, comm: Comm) -> None:
        self.comm = comm
        self.enc = p.FrameEncoder(p.CLIENT_TO_SCHEDULER)
        self.dec = p.FrameDecoder(p.SCHEDULER_TO_CLIENT)
        self.inbox: list[Any] = []
        self.functions: list[bytes] = []
        self.peers = PeerPool(name="test-client")

    @classmethod
    async def open(cls, address: str) -> BareClient:
        _, host, port = parse_address(address)
        comm = await connect(host, port)
        await comm.send_frame(p.encode_handshake(p.Hello(p.PROTOCOL_VERSION, "client", "")))
        assert isinstance(p.decode_reply(await comm.recv_frame()), p.Welcome)
        return cls(comm)

    async def send(self, *msgs: Any) -> None:
        await self.comm.send_frame(self.enc.encode(list(msgs)))

    def task(self, key: str, func: Callable[..., Any], *args: Any) -> p.GraphTask:
        fn = dumps_function(func)
        if fn not in self.functions:
            self.functions.append(fn)
        payload, deps = dumps_args(args)
        return p.GraphTask(key, deps, self.functions.index(fn), payload)

    async def submit(self, *tasks: p.GraphTask, wanted: list[str] | None = None) -> None:
        keys = [t.key for t in tasks] if wanted is None else wanted
        await self.send(p.SubmitGraph(list(self.functions), list(tasks), keys))

    async def expect(self, kind: type, pred: Callable[[Any], bool] = lambda m: True, timeout: float = 10) -> Any:
        with anyio.fail_after(timeout):
            while True:
                for m in self.inbox:
                    if isinstance(m, kind) and pred(m):
                        self.inbox.remove(m)
                        return m
                self.inbox.extend(self.dec.decode(await self.comm.recv_frame()))

    async def wait_done(self, keys: list[str]) -> None:
        left = set(keys)
        while left:
            msg = await self.expect(p.KeysInMemory)
            left.difference_update(msg.keys)

    async def fetch(self, keys: list[str]) -> dict[str, object]:
        await self.send(p.WhoHas(1, keys))
        reply = await self.expect(p.WhoHasReply)
        out: dict[str, object] = {}
        for key, holders in reply.who_has.items():
            got = await fetch(self.peers, holders[0], [key])
            out.update(got.values)
        return out

    async def aclose(self) -> None:
        await self.peers.aclose()
        await self.comm.aclose()


async def test_independent_tasks_and_dependencies_across_workers() -> None:
    async with SchedulerServer() as s, Worker(s.address) as w1, Worker(s.address, nthreads=2) as w2:
        c = await BareClient.open(s.address)
        leaves = [c.task(f"inc-{i}", inc, i) for i in range(200)]
        total = c.task("sum", lambda *xs: sum(xs), *[Ref(t.key) for t in leaves])
        await c.submit(*leaves, total, wanted=["sum", "inc-7"])
        await c.wait_done(["sum", "inc-7"])
        assert await c.fetch(["sum", "inc-7"]) == {"sum": sum(range(1, 201)), "inc-7": 8}
        # Both workers ran leaves, so the sum needed a transfer between them.
        assert w1.machine is not None and w2.machine is not None
        assert w1.machine.n_executed > 0 and w2.machine.n_executed > 0
        assert w1.machine.n_fetched + w2.machine.n_fetched > 0
        await c.aclose()


async def test_task_error_carries_exception_and_traceback() -> None:
    async with SchedulerServer() as s, Worker(s.address):
        c = await BareClient.open(s.address)
        await c.submit(c.task("bad", fail, 3))
        err = await c.expect(p.KeyErred)
        assert err.key == "bad" and err.blamed_key == "bad"
        exc = loads_exception(p.payload_view(err.exception), err.traceback)
        assert isinstance(exc, ValueError) and str(exc) == "bad value 3"
        assert "in fail" in err.traceback and "ValueError: bad value 3" in err.traceback
        assert any("Remote traceback" in note for note in exc.__notes__)
        await c.aclose()


async def test_function_that_does_not_unpickle_is_the_tasks_error() -> None:
    async with SchedulerServer() as s, Worker(s.address):
        c = await BareClient.open(s.address)
        payload, _ = dumps_args((1,))
        task = p.GraphTask("t", [], 0, payload)
        await c.send(p.SubmitGraph([b"not a pickle"], [task], ["t"]))
        err = await c.expect(p.KeyErred)
        assert err.key == "t" and "UnpicklingError" in err.traceback
        # The worker keeps serving.
        await c.submit(c.task("ok", inc, 1))
        await c.wait_done(["ok"])
        await c.aclose()


async def test_released_keys_leave_the_workers_memory() -> None:
    async with SchedulerServer() as s, Worker(s.address) as w:
        c = await BareClient.open(s.address)
        a = c.task("a", inc, 1)
        b = c.task("b", operator.mul, Ref("a"), 10)
        await c.submit(a, b, wanted=["b"])
        await c.wait_done(["b"])
        assert await c.fetch(["b"]) == {"b": 20}
        assert "a" not in w.data  # an intermediate nobody wants is dropped
        await c.send(p.ReleaseKeys(["b"]))
        with anyio.fail_after(5):
            while w.data or w.run_ids:
                await anyio.sleep(0.01)
        assert s.state.tasks == {}
        await c.aclose()


async def test_scattered_data_feeds_a_task() -> None:
    async with SchedulerServer() as s, Worker(s.address) as w:
        c = await BareClient.open(s.address)
        nbytes = await c.peers.put_data(w.address, {"x": dumps_value([1, 2, 3])})
        assert nbytes["x"] > 0 and w.data["x"] == [1, 2, 3]
        await c.send(p.Scattered([w.address], nbytes))
        await c.submit(c.task("total", sum, Ref("x")), wanted=["total"])
        await c.wait_done(["total"])
        assert await c.fetch(["total", "x"]) == {"total": 6, "x": [1, 2, 3]}
        assert w.machine is not None and w.machine.state_of("x") == "memory"
        await c.aclose()


async def test_worker_reports_to_the_scheduler_and_heartbeats() -> None:
    async with SchedulerServer(heartbeat_interval=0.05) as s, Worker(s.address, name="alpha", nthreads=3) as w:
        with anyio.fail_after(5):
            while w.address not in s.state.workers:
                await anyio.sleep(0.01)
        ws = s.state.workers[w.address]
        assert ws.name == "alpha" and ws.nthreads == 3
        with anyio.fail_after(5):
            while w.latency == 0.0:
                await anyio.sleep(0.01)
        assert 0 < w.latency < 1.0


async def test_worker_exits_when_the_scheduler_goes_away() -> None:
    served = anyio.Event()
    async with anyio.create_task_group() as tg:
        async with SchedulerServer() as s:
            worker = Worker(s.address)

            async def run() -> None:
                await worker.serve_forever()
                served.set()

            tg.start_soon(run)
            with anyio.fail_after(5):
                while worker.address not in s.state.workers:
                    await anyio.sleep(0.01)
        with anyio.fail_after(5):
            await served.wait()
    assert worker.closed.is_set()


async def test_worker_retires_with_close() -> None:
    async with SchedulerServer() as s:
        async with Worker(s.address) as w:
            with anyio.fail_after(5):
                while w.address not in s.state.workers:
                    await anyio.sleep(0.01)
        with anyio.fail_after(5):
            while s.state.workers:
                await anyio.sleep(0.01)


async def test_refused_worker_raises() -> None:
    async with SchedulerServer(security=Security(secret="secret")) as s:
        with pytest.raises(Exception, match="refused"):
            async with Worker(s.address, security=Security(secret="wrong")):
                pass


async def test_garbage_from_a_peer_closes_only_that_connection() -> None:
    async with SchedulerServer() as s, Worker(s.address) as w:
        _, host, port = parse_address(w.address)
        bad = await connect(host, port)
        await bad.send_frame(b"\x00garbage")
        with anyio.fail_after(5):
            refusal = p.decode_reply(await bad.recv_frame())  # why, then the connection closes
            assert isinstance(refusal, p.Refused) and "invalid hello" in refusal.reason
            with pytest.raises(CommClosedError):
                await bad.recv_frame()
        c = await BareClient.open(s.address)
        await c.submit(c.task("x", inc, 41))
        await c.wait_done(["x"])
        assert await c.fetch(["x"]) == {"x": 42}
        await c.aclose()


async def test_short_tasks_get_extra_execution_slots() -> None:
    async with SchedulerServer() as s, Worker(s.address) as w:
        c = await BareClient.open(s.address)
        tasks = [c.task(f"t-{i}", inc, i) for i in range(2000)]
        await c.submit(*tasks)
        await c.wait_done([t.key for t in tasks])
        assert w.machine is not None
        assert 0 <= w.task_duration < 0.002
        assert w.machine.nthreads > w.nthreads  # prefetching short tasks
        assert w._sender is not None and w._sender.messages > 2 * w._sender.frames  # batched reports
        await c.aclose()


def test_process_memory_is_positive_on_linux() -> None:
    from dsched._worker import process_memory

    if os.path.exists("/proc/self/statm"):
        assert process_memory() > 1_000_000
    else:
        assert process_memory() == 0


async def test_unreachable_scheduler_raises_connect_error() -> None:
    from dsched._comm import ConnectError

    async with SchedulerServer() as s:
        address = s.address
    with pytest.raises(ConnectError, match="could not connect"):
        async with Worker(address, connect_timeout=2):
            pass


async def test_port_in_use_raises_plain_oserror() -> None:
    async with SchedulerServer() as s, Worker(s.address) as w:
        _, _, port = parse_address(w.address)
        with pytest.raises(OSError):
            async with Worker(s.address, port=port):
                pass


async def test_idle_scheduler_forgets_functions_here_and_on_workers() -> None:
    async with SchedulerServer(tick_interval=0.05) as s, Worker(s.address) as w:
        c = await BareClient.open(s.address)
        await c.submit(c.task("x", inc, 1))
        await c.wait_done(["x"])
        assert s.functions.functions and w.functions.pickled
        await c.send(p.ReleaseKeys(["x"]))
        with anyio.fail_after(5):
            while s.functions.functions or w.functions.pickled:
                await anyio.sleep(0.05)
        # A new submission defines its function afresh.
        await c.submit(c.task("y", inc, 2))
        await c.wait_done(["y"])
        assert await c.fetch(["y"]) == {"y": 3}
        await c.aclose()


async def test_extreme_user_priorities_do_not_break_the_wire() -> None:
    async with SchedulerServer() as s, Worker(s.address) as w:
        c = await BareClient.open(s.address)
        urgent = c.task("urgent", inc, 1)
        later = c.task("later", inc, 2)
        urgent = p.GraphTask(urgent.key, [], urgent.function, urgent.args, priority=2**63 - 1)
        later = p.GraphTask(later.key, [], later.function, later.args, priority=-(2**63))
        await c.submit(urgent, later)
        await c.wait_done(["urgent", "later"])
        assert await c.fetch(["urgent", "later"]) == {"urgent": 2, "later": 3}
        assert w.address in s.workers  # the worker was not disconnected
        await c.aclose()


async def test_worker_on_all_interfaces_advertises_a_reachable_address() -> None:
    # Every interface: peers must authenticate (or the worker be told insecure=True).
    async with SchedulerServer() as s, Worker(s.address, host="0.0.0.0", insecure=True) as w:
        assert w.address.startswith("tcp://127.0.0.1:")
        c = await BareClient.open(s.address)
        await c.submit(c.task("x", inc, 1))
        await c.wait_done(["x"])
        assert await c.fetch(["x"]) == {"x": 2}
        await c.aclose()


def make_lock() -> object:
    import threading

    return threading.Lock()


def is_locked(lock: Any) -> bool:
    return bool(lock.locked())


async def test_a_value_that_cannot_be_pickled_fails_its_remote_dependent() -> None:
    async with SchedulerServer() as s, Worker(s.address) as w1, Worker(s.address) as w2:
        with anyio.fail_after(5):
            while len(s.state.workers) < 2:
                await anyio.sleep(0.01)
        c = await BareClient.open(s.address)
        lock = c.task("lock", make_lock)
        lock = p.GraphTask(lock.key, [], lock.function, lock.args, workers=[w1.address])
        use = c.task("use", is_locked, Ref("lock"))
        use = p.GraphTask(use.key, use.dependencies, use.function, use.args, workers=[w2.address])
        await c.submit(lock, use, wanted=["use"])
        err = await c.expect(p.KeyErred)
        assert err.key == "use"
        exc = loads_exception(p.payload_view(err.exception), err.traceback)
        assert type(exc).__name__ == "SerializationError"
        assert "'lock'" in str(exc) and "cannot be pickled" in str(exc)
        await c.aclose()
