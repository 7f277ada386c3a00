"""The scheduler server over real TCP on loopback, with fake workers and clients
that speak the protocol directly."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

import sched_core as sc
from dsched import _protocol as p
from dsched._comm import Comm, CommClosedError, connect, parse_address
from dsched._scheduler_server import SchedulerServer

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def _open(address: str, role: Any, name: str = "", protocol: int = p.PROTOCOL_VERSION) -> tuple[Comm, Any]:
    _, host, port = parse_address(address)
    comm = await connect(host, port)
    await comm.send_frame(p.encode_handshake(p.Hello(protocol, role, name)))
    reply = p.decode_reply(await comm.recv_frame())
    return comm, reply


class Peer:
    def __init__(self, comm: Comm, send: Any, recv: Any) -> None:
        self.comm = comm
        self.enc = p.FrameEncoder(send)
        self.dec = p.FrameDecoder(recv)
        self.inbox: list[Any] = []

    async def send(self, *msgs: Any) -> None:
        await self.comm.send_frame(self.enc.encode(list(msgs)))

    async def expect(self, kind: type, n: int = 1, timeout: float = 5.0) -> list[Any]:
        """Wait until ``n`` messages of ``kind`` arrived; return (and remove) them."""
        with anyio.fail_after(timeout):
            while sum(isinstance(m, kind) for m in self.inbox) < n:
                self.inbox.extend(self.dec.decode(await self.comm.recv_frame()))
        got = [m for m in self.inbox if isinstance(m, kind)][:n]
        for m in got:
            self.inbox.remove(m)
        return got


async def fake_worker(server: SchedulerServer, address: str, nthreads: int = 1) -> Peer:
    comm, reply = await _open(server.address, "worker")
    assert isinstance(reply, p.Welcome)
    w = Peer(comm, p.WORKER_TO_SCHEDULER, p.SCHEDULER_TO_WORKER)
    await w.send(p.RegisterWorker(address, nthreads))
    with anyio.fail_after(5):
        while address not in server.state.workers:
            await anyio.sleep(0.01)
    return w


async def fake_client(server: SchedulerServer, name: str) -> Peer:
    comm, reply = await _open(server.address, "client", name)
    assert isinstance(reply, p.Welcome)
    return Peer(comm, p.CLIENT_TO_SCHEDULER, p.SCHEDULER_TO_CLIENT)


def task(key: str, deps: list[str], fn: int = 0) -> p.GraphTask:
    return p.GraphTask(key, deps, fn, b"args-" + key.encode())


async def test_handshake_accept_and_refuse() -> None:
    async with SchedulerServer() as server:
        assert server.address.startswith("tcp://127.0.0.1:")
        comm, reply = await _open(server.address, "client", "c1")
        assert isinstance(reply, p.Welcome) and reply.scheduler_id == server.scheduler_id
        assert reply.client_id == "c1"
        await comm.aclose()
        # A client without a name is given one, and told which.
        comm, reply = await _open(server.address, "client", "")
        assert isinstance(reply, p.Welcome) and reply.client_id.startswith("client-")
        with anyio.fail_after(5):
            while reply.client_id not in server.state.clients:
                await anyio.sleep(0.01)
        await comm.aclose()
        comm, reply = await _open(server.address, "client", "c2", protocol=99)
        assert isinstance(reply, p.Refused) and "version" in reply.reason
        with pytest.raises(CommClosedError):
            await comm.recv_frame()
        comm, reply = await _open(server.address, "peer")
        assert isinstance(reply, p.Refused)


async def test_graph_with_shared_function() -> None:
    async with SchedulerServer() as server:
        w = await fake_worker(server, "tcp://w1:1")
        assert "tcp://w1:1" in server.state.workers
        c = await fake_client(server, "c1")
        graph = p.SubmitGraph([b"fn-inc"], [task("a", []), task("b", ["a"]), task("c", ["b"])], ["c"])
        await c.send(graph)
        for key in "abc":
            (compute,) = await w.expect(p.Compute)
            assert compute.key == key and compute.function == 0
            assert p.payload_bytes(compute.args) == b"args-" + key.encode()
            await w.send(p.TaskFinished(key, 8, 0.001, compute.run_id))
        (done,) = await c.expect(p.KeysInMemory)
        assert done.keys == ["c"]
        defines = [m for m in w.inbox if isinstance(m, p.DefineFunction)]
        assert len(defines) == 1 and p.payload_bytes(defines[0].function) == b"fn-inc"
        assert len(server.functions.functions) == 1
        # An identical resubmission dedups; a different definition is refused.
        await c.send(p.SubmitGraph([b"fn-inc"], [task("c", ["b"])], ["c"]))
        await c.send(p.SubmitGraph([b"fn-other"], [task("c", ["b"])], ["c"]))
        (err,) = await c.expect(p.ClientError)
        assert err.kind == "conflicting-definition"


async def test_task_error_reaches_client() -> None:
    async with SchedulerServer() as server:
        w = await fake_worker(server, "tcp://w1:1")
        c = await fake_client(server, "c1")
        await c.send(p.SubmitGraph([b"fn"], [task("x", [])], ["x"]))
        (compute,) = await w.expect(p.Compute)
        await w.send(p.TaskErred("x", b"pickled-exc", "Traceback: boom", compute.run_id))
        (erred,) = await c.expect(p.KeyErred)
        assert erred.key == "x" and erred.traceback == "Traceback: boom"
        assert p.payload_bytes(erred.exception) == b"pickled-exc"


async def test_cycle_refused_other_client_continues() -> None:
    async with SchedulerServer() as server:
        w = await fake_worker(server, "tcp://w1:1")
        bad = await fake_client(server, "bad")
        good = await fake_client(server, "good")
        await bad.send(p.SubmitGraph([b"fn"], [task("p", ["q"]), task("q", ["p"])], ["p"]))
        await good.send(p.SubmitGraph([b"fn"], [task("y", [])], ["y"]))
        (err,) = await bad.expect(p.ClientError)
        assert err.kind == "cycle"
        (compute,) = await w.expect(p.Compute)
        await w.send(p.TaskFinished("y", 8, 0.001, compute.run_id))
        (done,) = await good.expect(p.KeysInMemory)
        assert done.keys == ["y"] and not good.inbox


async def test_garbage_closes_only_that_connection() -> None:
    async with SchedulerServer() as server:
        c = await fake_client(server, "c1")
        _, host, port = parse_address(server.address)
        for garbage in (b"\x05\x00\x00\x00\x00\x00\x00\x00hello", b"\xff" * 64):
            async with await anyio.connect_tcp(host, port) as raw:
                await raw.send(garbage)
                with anyio.fail_after(5):
                    try:
                        while await raw.receive():
                            pass
                    except (anyio.EndOfStream, anyio.BrokenResourceError):
                        pass
        # garbage after a valid handshake
        bad = await fake_client(server, "bad")
        await bad.comm.send_frame(b"\x93\x01\x02\x03 not a frame")
        (goodbye,) = await bad.expect(p.Close)  # the reason, then the connection closes
        assert "invalid client->scheduler frame" in goodbye.reason
        with pytest.raises(CommClosedError), anyio.fail_after(5):
            await bad.comm.recv_frame()
        assert server.refused["max_frame_size"] == 1  # the 0xff... header, during the handshake
        assert server.protocol_errors >= 2
        with anyio.fail_after(5):
            while "bad" in server.state.clients:
                await anyio.sleep(0.01)
        w = await fake_worker(server, "tcp://w1:1")
        await c.send(p.SubmitGraph([b"fn"], [task("z", [])], ["z"]))
        (compute,) = await w.expect(p.Compute)
        await w.send(p.TaskFinished("z", 1, 0.0, compute.run_id))
        await c.expect(p.KeysInMemory)


async def test_worker_lost_mid_task_recomputes_elsewhere() -> None:
    async with SchedulerServer() as server:
        w1 = await fake_worker(server, "tcp://w1:1")
        c = await fake_client(server, "c1")
        await c.send(p.SubmitGraph([b"fn"], [task("t", [])], ["t"]))
        (compute,) = await w1.expect(p.Compute)
        await w1.comm.aclose()
        with anyio.fail_after(5):
            while "tcp://w1:1" in server.state.workers:
                await anyio.sleep(0.01)
        w2 = await fake_worker(server, "tcp://w2:1")
        (again,) = await w2.expect(p.Compute)
        assert again.key == "t" and again.run_id != compute.run_id
        (define,) = await w2.expect(p.DefineFunction)
        await w2.send(p.TaskFinished("t", 1, 0.0, again.run_id))
        (done,) = await c.expect(p.KeysInMemory)
        assert done.keys == ["t"]


async def test_missed_heartbeats_remove_worker() -> None:
    async with SchedulerServer(heartbeat_interval=0.02, heartbeat_timeout=0.3) as server:
        w = await fake_worker(server, "tcp://w1:1")
        quiet = await fake_worker(server, "tcp://w2:1")
        for seq in range(12):
            await w.send(p.Heartbeat(seq, 0.001, 1000))
            await anyio.sleep(0.05)
        await w.expect(p.HeartbeatAck, n=12)
        assert "tcp://w2:1" not in server.state.workers
        assert "tcp://w1:1" in server.state.workers
        with pytest.raises(CommClosedError), anyio.fail_after(5):
            await quiet.comm.recv_frame()


async def test_worker_close_is_expected_and_client_disconnect_releases() -> None:
    async with SchedulerServer() as server:
        w = await fake_worker(server, "tcp://w1:1")
        c = await fake_client(server, "c1")
        await c.send(p.SubmitGraph([b"fn"], [task("k", [])], ["k"]))
        (compute,) = await w.expect(p.Compute)
        await w.send(p.TaskFinished("k", 1, 0.0, compute.run_id))
        await c.expect(p.KeysInMemory)
        await c.send(p.Close("bye"))
        (free,) = await w.expect(p.FreeKeys)
        assert free.keys == ["k"]
        with anyio.fail_after(5):
            while server.state.tasks or "c1" in server.state.clients:
                await anyio.sleep(0.01)
        # A worker's Close starts its retirement; holding nothing only it has,
        # it is let go at once (the scheduler's Close), and hangs up.
        await w.send(p.Close("retiring"))
        await w.expect(p.Close)
        await w.comm.aclose()
        with anyio.fail_after(5):
            while server.state.workers:
                await anyio.sleep(0.01)


async def test_large_graph_fed_in_chunks() -> None:
    async with SchedulerServer(chunk_size=3) as server:
        w = await fake_worker(server, "tcp://w1:1", nthreads=4)
        c = await fake_client(server, "c1")
        keys = [f"k{i}" for i in range(8)]
        tasks = [task(k, [keys[i - 1]] if i else []) for i, k in enumerate(keys)]
        batch_before = server.state.batch
        await c.send(p.SubmitGraph([b"fn"], tasks, keys[-1:]))
        for key in keys:
            (compute,) = await w.expect(p.Compute)
            assert compute.key == key
            await w.send(p.TaskFinished(key, 1, 0.0, compute.run_id))
        (done,) = await c.expect(p.KeysInMemory)
        assert done.keys == ["k7"]
        assert server.state.batch - batch_before >= 3


async def test_big_releases_and_a_big_holder_leaving_are_spread_over_events(monkeypatch: pytest.MonkeyPatch) -> None:
    import dsched._scheduler_routes as routes
    import dsched._scheduler_server as server_module

    monkeypatch.setattr(routes, "KEYS_PER_EVENT", 10)
    monkeypatch.setattr(server_module, "KEYS_PER_EVENT", 10)
    async with SchedulerServer(chunk_size=25) as server:
        largest: list[int] = []
        state = server.state

        class Spy:
            """The core, its batches looked at first (a compiled core's methods cannot be replaced)."""

            def __getattr__(self, name: str) -> Any:
                return getattr(state, name)

            def handle_events(self, events: list[Any]) -> Any:
                # The keys a batch lets go of: one event's and the whole batch's stay bounded.
                sizes = [len(e.keys) for e in events if isinstance(e, sc.ClientReleasesKeys)]
                largest.append(sum(sizes))
                assert all(n <= 10 for n in sizes)
                return state.handle_events(events)

        server.state = Spy()  # type: ignore[assignment]
        c = await fake_client(server, "c1")
        keys = [f"k{i}" for i in range(100)]
        await c.send(p.SubmitGraph([b"fn"], [task(k, []) for k in keys], keys))
        await c.send(p.ReleaseKeys(keys[:50]))
        with anyio.fail_after(5):
            while len(server.state.tasks) != 50:
                await anyio.sleep(0.01)
        await c.send(p.Close("bye"))  # holding 50 keys: released 10 at a time, then removed
        with anyio.fail_after(5):
            while server.state.tasks or "c1" in server.state.clients:
                await anyio.sleep(0.01)
        assert max(largest) <= 30 and sum(largest) == 100


async def test_gc_modes() -> None:
    import gc

    assert gc.isenabled()
    threshold = gc.get_threshold()
    async with SchedulerServer():
        assert not gc.isenabled()  # a scheduler process: the core breaks its own cycles
    assert gc.isenabled()
    async with SchedulerServer(gc_mode="relaxed"):
        assert gc.isenabled() and gc.get_threshold()[0] >= 50_000  # a user's process: less often
        async with SchedulerServer(gc_mode="relaxed"):
            pass
        assert gc.get_threshold()[0] >= 50_000  # the outer server still runs
    assert gc.get_threshold() == threshold
    async with SchedulerServer(gc_mode="default"):
        assert gc.isenabled() and gc.get_threshold() == threshold


def test_in_process_cluster_keeps_the_users_gc_on() -> None:
    import gc

    from dsched import LocalCluster

    threshold = gc.get_threshold()
    with LocalCluster(n_workers=1, processes=False):
        assert gc.isenabled()
    assert gc.get_threshold() == threshold
