"""The scheduler's and the worker peer listener's limits: each refuses the offending
party only, with a message naming the limit and its value, counts the refusal, and
leaves everyone else served (dsched/_limits.py, docs/operations.md "Limits")."""

from __future__ import annotations

import functools
import operator
from typing import Any

import anyio
import pytest
from _client_helpers import inc, wait_until
from test_scheduler_server import Peer, fake_client, fake_worker, task

from dsched import _protocol as p
from dsched._client import Client
from dsched._client_errors import ClientDisconnectedError, GraphError
from dsched._comm import HEADER, Comm, CommClosedError, connect, listen, parse_address
from dsched._limits import HANDSHAKE_MAX_FRAME_SIZE, ConnectionLimiter, Limits, parse_limits
from dsched._scheduler_server import SchedulerServer
from dsched._worker import Worker
from dsched._worker_peers import PeerServing, serve_peer

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def _connect(address: str) -> Comm:
    _, host, port = parse_address(address)
    return await connect(host, port)


async def _hello(address: str, role: Any = "client", name: str = "") -> tuple[Comm, p.Welcome | p.Refused]:
    comm = await _connect(address)
    await comm.send_frame(p.encode_handshake(p.Hello(p.PROTOCOL_VERSION, role, name)))
    with anyio.fail_after(5):
        return comm, p.decode_reply(await comm.recv_frame())


async def _closed(comm: Comm) -> None:
    with pytest.raises(CommClosedError), anyio.fail_after(5):
        while True:
            await comm.recv_frame()


async def _still_served(server: SchedulerServer, client: Peer, worker: Peer, key: str) -> None:
    """A valid client's task still runs on a valid worker, end to end."""
    await client.send(p.SubmitGraph([b"fn"], [task(key, [])], [key]))
    (compute,) = await worker.expect(p.Compute)
    assert compute.key == key
    await worker.send(p.TaskFinished(key, 1, 0.0, compute.run_id))
    (done,) = await client.expect(p.KeysInMemory)
    assert done.keys == [key]


# -- messages per frame ------------------------------------------------------------------


async def test_a_frame_of_too_many_messages_is_refused_before_any_is_acted_on() -> None:
    async with SchedulerServer(limits=Limits(max_messages=10)) as server:
        good, w = await fake_client(server, "good"), await fake_worker(server, "tcp://w:1")
        comm, welcome = await _hello(server.address, name="flood")
        assert isinstance(welcome, p.Welcome) and welcome.max_messages == 10
        flood = Peer(comm, p.CLIENT_TO_SCHEDULER, p.SCHEDULER_TO_CLIENT)
        flood.enc = p.FrameEncoder(p.CLIENT_TO_SCHEDULER, max_messages=100)
        # The first message alone would define a task: none of them may be acted on.
        await flood.send(p.SubmitGraph([b"fn"], [task("flooded", [])], ["flooded"]), *[p.WantKeys([])] * 10)
        (goodbye,) = await flood.expect(p.Close)
        assert "max_messages=10" in goodbye.reason
        await _closed(comm)
        assert server.refused["max_messages"] == 1 and server.protocol_errors == 0
        await _still_served(server, good, w, "ok")
        assert "flooded" not in server.state.tasks


# -- frame size ----------------------------------------------------------------------------


async def test_an_oversized_frame_is_refused_unread_with_the_limit_named() -> None:
    async with SchedulerServer(max_frame_size=10_000) as server:
        good, w = await fake_client(server, "good"), await fake_worker(server, "tcp://w:1")
        comm, _ = await _hello(server.address, name="big")
        # Only the header: a receiver that allocated or waited for the payload would hang here.
        await comm._stream.send(HEADER.pack(10_001))
        with anyio.fail_after(5):
            (goodbye,) = p.FrameDecoder(p.SCHEDULER_TO_CLIENT).decode(await comm.recv_frame())
        assert isinstance(goodbye, p.Close) and "max_frame_size=10000" in goodbye.reason
        await _closed(comm)
        assert server.refused["max_frame_size"] == 1
        await _still_served(server, good, w, "ok")


async def test_a_handshake_frame_is_bounded_far_below_max_frame_size() -> None:
    async with SchedulerServer() as server:
        comm = await _connect(server.address)
        await comm._stream.send(HEADER.pack(HANDSHAKE_MAX_FRAME_SIZE + 1))
        with anyio.fail_after(5):
            refusal = p.decode_reply(await comm.recv_frame())
        assert isinstance(refusal, p.Refused) and str(HANDSHAKE_MAX_FRAME_SIZE) in refusal.reason
        await _closed(comm)
        assert server.refused["max_frame_size"] == 1


async def test_the_peer_listener_refuses_an_oversized_frame_too() -> None:
    serving = PeerServing({"x": 1}, lambda values: {}, scheduler_id="s", address="w")
    async with listen("127.0.0.1", 0, functools.partial(serve_peer, serving), max_frame_size=5_000) as listener:
        comm = await connect("127.0.0.1", listener.port)
        await comm.send_frame(p.encode_handshake(p.Hello(p.PROTOCOL_VERSION, "peer", "me")))
        assert isinstance(p.decode_reply(await comm.recv_frame()), p.Welcome)
        await comm._stream.send(HEADER.pack(5_001))
        with anyio.fail_after(5):
            (goodbye,) = p.FrameDecoder(p.PEER).decode(await comm.recv_frame())
        assert isinstance(goodbye, p.Close) and "max_frame_size=5000" in goodbye.reason
        await _closed(comm)
        assert serving.refused["max_frame_size"] == 1


# -- tasks per submission, key length -------------------------------------------------


async def test_a_graph_over_max_graph_tasks_is_refused_to_its_client_only() -> None:
    async with SchedulerServer(limits=Limits(max_graph_tasks=3)) as server:
        other, w = await fake_client(server, "other"), await fake_worker(server, "tcp://w:1")
        c = await fake_client(server, "big")
        await c.send(p.SubmitGraph([b"fn"], [task(f"t{i}", []) for i in range(4)], ["t3"]))
        (err,) = await c.expect(p.ClientError)
        assert err.kind == "limit-exceeded" and "max_graph_tasks=3" in err.message and err.keys == ["t3"]
        assert server.refused["max_graph_tasks"] == 1 and not server.state.tasks
        assert not other.inbox
        await c.send(p.Scattered(["tcp://w:1"], {f"s{i}": 8 for i in range(4)}))  # scattered keys count too
        (err,) = await c.expect(p.ClientError)
        assert "a scatter of 4 keys is over max_graph_tasks=3" in err.message and not server.state.tasks
        await _still_served(server, c, w, "small")  # the refused client itself is still served
        await _still_served(server, other, w, "other")


async def test_long_keys_are_refused_in_graphs_scatters_and_layer_names() -> None:
    async with SchedulerServer(limits=Limits(max_key_length=50)) as server:
        c, w = await fake_client(server, "c"), await fake_worker(server, "tcp://w:1")
        long_key = "k" * 51
        await c.send(p.SubmitGraph([b"fn"], [task("fine", []), task(long_key, ["fine"])], [long_key]))
        await c.send(p.Scattered(["tcp://w:1"], {long_key: 8}))
        await c.send(p.SubmitLayers([b"fn"], [p.MapLayerSpec("n" * 11, 2, 0)], [], [(0, 0)], [], ["n" * 11]))
        errors = await c.expect(p.ClientError, 3)
        assert all(e.kind == "limit-exceeded" and "max_key_length=50" in e.message for e in errors)
        assert "51 characters" in errors[0].message and "layer name" in errors[2].message
        assert server.refused["max_key_length"] == 3 and not server.state.tasks
        await _still_served(server, c, w, "k" * 50)


async def test_the_client_futures_of_a_refused_submission_get_the_error() -> None:
    limits = Limits(max_graph_tasks=3, max_key_length=20)
    async with SchedulerServer(limits=limits) as server, Worker(server.address, nthreads=1):
        async with Client(server.address, asynchronous=True) as client:
            dsk: dict[str, Any] = {"x0": 0, **{f"x{i}": (inc, f"x{i - 1}") for i in range(1, 4)}}
            with pytest.raises(GraphError, match="max_graph_tasks=3") as info:
                await client.get(dsk, ["x3"])
            assert info.value.kind == "limit-exceeded"
            with pytest.raises(GraphError, match="max_key_length=20"):
                await client.submit(inc, 1, key="y" * 21)
            assert await client.get({"a": 1, "b": (operator.add, "a", 1)}, "b") == 2


# -- names bounded in the schema -------------------------------------------------------


async def test_an_oversized_name_in_the_hello_is_refused() -> None:
    async with SchedulerServer() as server:
        comm, reply = await _hello(server.address, name="n" * (p.MAX_NAME_LENGTH + 1))
        assert isinstance(reply, p.Refused) and f"length <= {p.MAX_NAME_LENGTH}" in reply.reason
        await _closed(comm)
        assert server.protocol_errors == 1 and not server.clients


async def test_a_worker_with_an_oversized_address_is_dropped_with_the_reason() -> None:
    async with SchedulerServer() as server:
        comm, _ = await _hello(server.address, role="worker")
        bad = Peer(comm, p.WORKER_TO_SCHEDULER, p.SCHEDULER_TO_WORKER)
        await bad.send(p.RegisterWorker("tcp://" + "h" * p.MAX_NAME_LENGTH, 1))
        (goodbye,) = await bad.expect(p.Close)
        assert f"length <= {p.MAX_NAME_LENGTH}" in goodbye.reason
        await _closed(comm)
        assert not server.state.workers


# -- connections and handshakes per host ----------------------------------------------


async def test_connections_per_host_are_bounded_and_freed_on_close() -> None:
    async with SchedulerServer(limits=Limits(max_connections_per_loopback=3)) as server:
        comms = [(await _hello(server.address))[0] for _ in range(3)]
        comm, reply = await _hello(server.address)
        assert isinstance(reply, p.Refused) and "max_connections_per_loopback=3" in reply.reason
        await _closed(comm)
        assert server.refused["max_connections_per_loopback"] == 1
        await comms.pop().aclose()
        with anyio.fail_after(5):
            while server.connection_limiter.open_connections("127.0.0.1") > 2:
                await anyio.sleep(0.01)
        comm, reply = await _hello(server.address)
        assert isinstance(reply, p.Welcome)
        for c in [*comms, comm]:
            await c.aclose()


async def test_handshakes_in_progress_per_host_are_bounded() -> None:
    async with SchedulerServer(limits=Limits(max_handshakes_per_loopback=2)) as server:
        silent = [await _connect(server.address) for _ in range(2)]
        with anyio.fail_after(5):
            while server.connection_limiter.open_connections("127.0.0.1") < 2:
                await anyio.sleep(0.01)
        comm, reply = await _hello(server.address)
        assert isinstance(reply, p.Refused) and "max_handshakes_per_loopback=2" in reply.reason
        # The slow ones may still finish their handshakes, and then others may start.
        for s in silent:
            await s.send_frame(p.encode_handshake(p.Hello(p.PROTOCOL_VERSION, "client", "")))
            assert isinstance(p.decode_reply(await s.recv_frame()), p.Welcome)
        comm, reply = await _hello(server.address)
        assert isinstance(reply, p.Welcome)
        for c in [*silent, comm]:
            await c.aclose()


def test_default_limits_let_a_local_cluster_of_hundreds_connect_at_once() -> None:
    limiter = ConnectionLimiter(Limits())
    # 200 workers and 100 clients on one host, all shaking hands at once.
    assert all(limiter.admit("127.0.0.1") is None for _ in range(300))
    assert all(limiter.admit("::1") is None for _ in range(300))
    # A remote host gets a lower bound on handshakes in progress.
    results = [limiter.admit("10.0.0.7") for _ in range(Limits().max_handshakes_per_host + 1)]
    assert results[:-1] == [None] * Limits().max_handshakes_per_host
    assert results[-1] is not None and results[-1][0] == "max_handshakes_per_host"
    for _ in range(Limits().max_handshakes_per_host):
        limiter.handshake_done("10.0.0.7")
    limiter.release("10.0.0.7", handshaking=False)
    assert limiter.admit("10.0.0.7") is None and limiter.open_connections("10.0.0.7") == Limits().max_handshakes_per_host


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_key_length"):
        Limits(max_key_length=0)


async def test_the_peer_listener_bounds_connections_per_host() -> None:
    serving = PeerServing(
        {"x": 1}, lambda values: {}, scheduler_id="s", address="w", limits=Limits(max_connections_per_loopback=1)
    )
    async with listen("127.0.0.1", 0, functools.partial(serve_peer, serving)) as listener:
        first = await connect("127.0.0.1", listener.port)
        await first.send_frame(p.encode_handshake(p.Hello(p.PROTOCOL_VERSION, "peer", "a")))
        assert isinstance(p.decode_reply(await first.recv_frame()), p.Welcome)
        second = await connect("127.0.0.1", listener.port)
        await second.send_frame(p.encode_handshake(p.Hello(p.PROTOCOL_VERSION, "peer", "b")))
        with anyio.fail_after(5):
            reply = p.decode_reply(await second.recv_frame())
        assert isinstance(reply, p.Refused) and "max_connections_per_loopback=1" in reply.reason
        # The admitted peer is still served.
        await first.send_frame(p.FrameEncoder(p.PEER).encode([p.GetData(1, ["x"])]))
        (data,) = p.FrameDecoder(p.PEER).decode(await first.recv_frame())
        assert isinstance(data, p.DataReply) and list(data.data) == ["x"]
        await first.aclose()
        await second.aclose()


# -- handshake timeout ------------------------------------------------------------------


async def test_a_peer_silent_past_handshake_timeout_is_told_and_dropped() -> None:
    async with SchedulerServer(handshake_timeout=0.2) as server:
        good = await fake_client(server, "good")
        silent = await _connect(server.address)
        with anyio.fail_after(5):
            refusal = p.decode_reply(await silent.recv_frame())
        assert isinstance(refusal, p.Refused) and "handshake_timeout=0.2s" in refusal.reason
        await _closed(silent)
        # A worker that shakes hands but never registers is dropped the same way.
        comm, _ = await _hello(server.address, role="worker")
        with anyio.fail_after(5):
            (goodbye,) = p.FrameDecoder(p.SCHEDULER_TO_WORKER).decode(await comm.recv_frame())
        assert isinstance(goodbye, p.Close) and "handshake_timeout=0.2s" in goodbye.reason
        await _closed(comm)
        assert server.refused["handshake_timeout"] == 2
        assert server.connection_limiter.open_connections("127.0.0.1") == 1  # only the good client
        await good.send(p.GetWorkers(7))
        (reply,) = await good.expect(p.WorkersReply)
        assert reply.request == 7


async def test_the_peer_listener_drops_a_silent_peer() -> None:
    serving = PeerServing({}, lambda values: {}, scheduler_id="s", address="w", handshake_timeout=0.2)
    async with listen("127.0.0.1", 0, functools.partial(serve_peer, serving)) as listener:
        comm = await connect("127.0.0.1", listener.port)
        with anyio.fail_after(5):
            refusal = p.decode_reply(await comm.recv_frame())
        assert isinstance(refusal, p.Refused) and "handshake_timeout=0.2s" in refusal.reason
        await _closed(comm)
        assert serving.refused["handshake_timeout"] == 1


async def test_refusals_show_in_the_status() -> None:
    async with SchedulerServer(limits=Limits(max_graph_tasks=1)) as server:
        c = await fake_client(server, "c")
        await c.send(p.SubmitGraph([b"fn"], [task("a", []), task("b", [])], ["a"]))
        await c.expect(p.ClientError)
        from dsched._dashboard_source import SchedulerSource, status

        assert status(server)["refused"] == {"max_graph_tasks": 1}
        metrics = {m.name: m for m in SchedulerSource(server).metrics()}
        assert metrics["dsched_refused_total"].samples == [({"limit": "max_graph_tasks"}, 1.0)]


def test_limits_parse_from_name_value_pairs() -> None:
    limits, server = parse_limits(["max_key_length=1024", "max-frame-size=64MiB", "handshake_timeout=2.5"])
    assert limits == Limits(max_key_length=1024)
    assert server == {"max_frame_size": 64 * 2**20, "handshake_timeout": 2.5}
    for bad, why in [
        ("nope=1", "no such limit"), ("max_key_length", "NAME=VALUE"), ("max_key_length=0", "positive"),
        ("max_frame_size=lots", "not a size"), ("max_layer_tasks=-1", "positive"), ("handshake_timeout=0", "positive"),
    ]:
        with pytest.raises(ValueError, match=why):
            parse_limits([bad])


async def test_workers_and_clients_keep_to_a_lower_max_messages() -> None:
    # The Welcome says max_messages: dsched's workers and clients split their batches to fit.
    async with SchedulerServer(limits=Limits(max_messages=5)) as server, Worker(server.address, nthreads=2):
        async with Client(server.address, asynchronous=True) as client:
            futures = [client.submit(inc, i) for i in range(60)]
            with anyio.fail_after(30):  # a worker dropped for a frame too many would leave these waiting
                assert await client.gather(futures) == [i + 1 for i in range(60)]
        assert not server.refused and server.protocol_errors == 0


async def test_a_client_dropped_for_a_limit_is_told_which() -> None:
    async with SchedulerServer(max_frame_size=10_000) as server, Worker(server.address, nthreads=1):
        async with Client(server.address, asynchronous=True) as client:
            future = client.submit(len, b"x" * 20_000)  # one frame over the scheduler's max_frame_size
            with pytest.raises(ClientDisconnectedError, match="max_frame_size=10000"), anyio.fail_after(10):
                await future
        assert server.refused["max_frame_size"] == 1


def test_the_scheduler_command_refuses_a_bad_limit() -> None:
    from typer.testing import CliRunner

    from dsched._cli import app

    result = CliRunner().invoke(app, ["scheduler", "--limit", "max_keys=3"], terminal_width=200)
    assert result.exit_code == 2 and "no such limit" in result.output


async def test_the_scheduler_command_applies_its_limits(tmp_path: Any) -> None:
    import json

    from dsched._cli_scheduler import serve_scheduler

    path = tmp_path / "scheduler.json"
    async with anyio.create_task_group() as tg:
        tg.start_soon(
            functools.partial(serve_scheduler, limits=["max_messages=7", "max_frame_size=1MiB"]),
            "127.0.0.1", 0, path, None, None,
        )
        with anyio.fail_after(10):
            while not path.exists():
                await anyio.sleep(0.01)
        address = json.loads(path.read_text())["address"]
        comm, welcome = await _hello(address)
        assert isinstance(welcome, p.Welcome) and welcome.max_messages == 7
        await comm._stream.send(HEADER.pack(2**20 + 1))
        with anyio.fail_after(5):
            (goodbye,) = p.FrameDecoder(p.SCHEDULER_TO_CLIENT).decode(await comm.recv_frame())
        assert isinstance(goodbye, p.Close) and f"max_frame_size={2**20}" in goodbye.reason
        await comm.aclose()
        tg.cancel_scope.cancel()


async def test_a_flood_of_connections_over_the_limit_is_refused_without_piling_up() -> None:
    async with SchedulerServer(limits=Limits(max_connections_per_loopback=1)) as server:
        good = await fake_client(server, "good")
        flood = [await _connect(server.address) for _ in range(100)]  # silent: no Hello
        with anyio.fail_after(10):
            replies = [p.decode_reply(await comm.recv_frame()) for comm in flood]
        assert all(isinstance(r, p.Refused) and "max_connections_per_loopback=1" in r.reason for r in replies)
        assert server.refused["max_connections_per_loopback"] == 100
        await wait_until(lambda: server._lingering == 0)
        await good.send(p.GetWorkers(1))
        (reply,) = await good.expect(p.WorkersReply)
        assert reply.request == 1 and server.connection_limiter.open_connections("127.0.0.1") == 1
        for comm in flood:
            await comm.aclose()


async def test_three_hundred_connections_at_once_on_loopback_are_let_in_by_default() -> None:
    # 200 workers and 100 clients of a local cluster, all shaking hands at once.
    async with SchedulerServer() as server:
        comms: list[Comm] = []

        async def shake(name: str) -> None:
            comm = await _connect(server.address)
            comms.append(comm)
            await comm.send_frame(p.encode_handshake(p.Hello(p.PROTOCOL_VERSION, "client", name)))
            assert isinstance(p.decode_reply(await comm.recv_frame()), p.Welcome)

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for i in range(300):
                    tg.start_soon(shake, f"c{i}")
        assert not server.refused and server.connection_limiter.open_connections("127.0.0.1") == 300
        for comm in comms:
            await comm.aclose()


async def test_tls_handshakes_in_progress_per_host_are_bounded() -> None:
    # The TLS handshake comes before the protocol's: a flood of them is bounded too.
    import ssl

    from dsched._limits import RefusalCounts, TlsHandshakeGate

    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(client_ctx)
    refused = RefusalCounts()
    gate = TlsHandshakeGate(Limits(max_handshakes_per_loopback=2), refused)

    async def echo(comm: Comm) -> None:
        await comm.send_frame(await comm.recv_frame())

    async with listen("127.0.0.1", 0, echo, ssl_context=server_ctx, tls_gate=gate) as listener:
        silent = [await anyio.connect_tcp("127.0.0.1", listener.port) for _ in range(2)]  # no ClientHello
        await wait_until(lambda: gate._hosts.get("127.0.0.1") == 2)
        third = await anyio.connect_tcp("127.0.0.1", listener.port)
        with anyio.fail_after(5):  # closed at once, before any TLS
            with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                await third.receive()
        assert refused == {"max_handshakes_per_loopback": 1}
        for s in [*silent, third]:
            await s.aclose()
        await wait_until(lambda: "127.0.0.1" not in gate._hosts)
        comm = await connect("127.0.0.1", listener.port, ssl_context=client_ctx)  # then TLS goes on as before
        await comm.send_frame(b"hi")
        assert await comm.recv_frame() == b"hi"
        await comm.aclose()
