"""dsched._comm and dsched._batched over real TCP on 127.0.0.1."""

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import msgspec
import pytest
from anyio.abc import ByteStream

from dsched._batched import BatchedSender
from dsched._comm import (
    HEADER,
    HEADER_SIZE,
    LARGE_PAYLOAD,
    Comm,
    CommClosedError,
    ConnectError,
    FrameTooLarge,
    Listener,
    connect,
    format_address,
    listen,
    parse_address,
)

pytestmark = pytest.mark.anyio

HOST = "127.0.0.1"
TIMEOUT = 5.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def echo(comm: Comm) -> None:
    while True:
        await comm.send_frame(await comm.recv_frame())


@asynccontextmanager
async def echo_server(**kwargs: Any) -> AsyncIterator[Listener]:
    async with listen(HOST, 0, echo, **kwargs) as listener:
        yield listener


class Collector:
    """A handler that decodes each frame as a msgpack list and keeps the batches."""

    def __init__(self, expected: int) -> None:
        self.batches: list[list[int]] = []
        self.count = 0
        self.expected = expected
        self.done = anyio.Event()
        self.error: BaseException | None = None
        self.decoder = msgspec.msgpack.Decoder(list[int])

    async def __call__(self, comm: Comm) -> None:
        try:
            while True:
                batch = self.decoder.decode(await comm.recv_frame())
                self.batches.append(batch)
                self.count += len(batch)
                if self.count >= self.expected:
                    self.done.set()
        except CommClosedError as exc:
            self.error = exc
            self.done.set()

    @property
    def messages(self) -> list[int]:
        return [m for batch in self.batches for m in batch]


def encode_ints(batch: list[int]) -> bytes:
    return msgspec.msgpack.encode(batch)


# -- addresses ---------------------------------------------------------------------------


def test_address_helpers() -> None:
    assert format_address("tcp", "127.0.0.1", 8786) == "tcp://127.0.0.1:8786"
    assert format_address("tls", "::1", 1) == "tls://[::1]:1"
    assert parse_address("tcp://127.0.0.1:8786") == ("tcp", "127.0.0.1", 8786)
    assert parse_address("tls://[::1]:1") == ("tls", "::1", 1)
    assert parse_address("example.org:99") == ("tcp", "example.org", 99)
    for bad in ("udp://a:1", "tcp://a", "tcp://:1", "tcp://a:b"):
        with pytest.raises(ValueError):
            parse_address(bad)


async def test_port_zero_gives_a_real_port() -> None:
    with anyio.fail_after(TIMEOUT):
        async with echo_server() as listener:
            assert listener.port > 0
            assert listener.host == HOST
            assert listener.address == f"tcp://{HOST}:{listener.port}"
            comm = await connect(HOST, listener.port)
            assert comm.peer == listener.address
            assert comm.local.startswith(f"tcp://{HOST}:")
            await comm.send_frame(b"hi")
            assert await comm.recv_frame() == b"hi"
            await comm.aclose()


# -- frames ------------------------------------------------------------------------------


async def test_round_trip_sizes() -> None:
    sizes = [0, 1, 100, LARGE_PAYLOAD, LARGE_PAYLOAD + 1, 10_000_000]
    with anyio.fail_after(TIMEOUT):
        async with echo_server() as listener:
            comm = await connect(HOST, listener.port)
            for size in sizes:
                payload = bytes(i % 251 for i in range(min(size, 1000))) * (size // 1000) + b"z" * (size % 1000)
                assert len(payload) == size
                await comm.send_frame(payload)
                got = await comm.recv_frame()
                assert type(got) is bytes
                assert got == payload
            assert comm.frames_sent == comm.frames_received == len(sizes)
            assert comm.bytes_sent == comm.bytes_received == sum(sizes)
            await comm.aclose()


async def test_many_frames_in_order_both_directions() -> None:
    # Sent back to back, many small frames arrive in one read and are cut apart;
    # a large frame among them goes through the chunk-list path.
    payloads = [i.to_bytes(4, "little") * (i % 7) for i in range(3000)]
    payloads[1500] = b"L" * (3 * LARGE_PAYLOAD + 5)
    received: list[bytes] = []

    async def reader(comm: Comm) -> None:
        for _ in payloads:
            received.append(await comm.recv_frame())

    with anyio.fail_after(TIMEOUT):
        async with echo_server() as listener:
            comm = await connect(HOST, listener.port)
            async with anyio.create_task_group() as tg:
                tg.start_soon(reader, comm)
                for payload in payloads:
                    await comm.send_frame(payload)
            assert received == payloads
            await comm.aclose()


async def test_header_layout_on_the_wire() -> None:
    """8-byte little-endian unsigned length, then the payload, nothing else."""
    got: list[bytes] = []

    async def handler(comm: Comm) -> None:
        got.append(await comm.recv_frame())
        got.append(await comm.recv_frame())
        await comm.send_frame(b"ok")

    with anyio.fail_after(TIMEOUT):
        async with listen(HOST, 0, handler) as listener:
            raw = await anyio.connect_tcp(HOST, listener.port)
            # Two frames, delivered in awkward pieces: half a header, then the rest.
            wire = (5).to_bytes(8, "little") + b"hello" + HEADER.pack(0)
            await raw.send(wire[:3])
            await anyio.sleep(0.01)
            await raw.send(wire[3:])
            reply = b""
            while len(reply) < HEADER_SIZE + 2:
                reply += await raw.receive()
            assert reply == (2).to_bytes(8, "little") + b"ok"
            assert got == [b"hello", b""]
            await raw.aclose()


async def test_recv_frame_is_cancellation_safe() -> None:
    """A recv_frame cancelled mid-frame loses nothing: the next call returns the whole frame."""
    server_comm: list[Comm] = []
    ready = anyio.Event()
    finished = anyio.Event()

    async def handler(comm: Comm) -> None:
        server_comm.append(comm)
        ready.set()
        await finished.wait()

    with anyio.fail_after(TIMEOUT):
        async with listen(HOST, 0, handler) as listener:
            raw = await anyio.connect_tcp(HOST, listener.port)
            await ready.wait()
            comm = server_comm[0]
            for size in (100, 4 * LARGE_PAYLOAD):
                payload = bytes(range(256)) * (size // 256) + b"!" * (size % 256)
                wire = HEADER.pack(size) + payload
                for cut in (4, HEADER_SIZE + size // 2):
                    await raw.send(wire[:cut])
                    with anyio.move_on_after(0.05) as scope:
                        await comm.recv_frame()
                    assert scope.cancelled_caught
                    await raw.send(wire[cut:])
                    assert await comm.recv_frame() == payload
            finished.set()
            await raw.aclose()


async def test_concurrent_receivers_are_refused() -> None:
    with anyio.fail_after(TIMEOUT):
        async with echo_server() as listener:
            comm = await connect(HOST, listener.port)
            async with anyio.create_task_group() as tg:
                tg.start_soon(comm.recv_frame)
                await anyio.sleep(0.01)
                with pytest.raises(RuntimeError, match="already receiving"):
                    await comm.recv_frame()
                tg.cancel_scope.cancel()
            await comm.aclose()


# -- closing and errors ------------------------------------------------------------------


async def test_aclose_is_idempotent_and_later_calls_raise() -> None:
    with anyio.fail_after(TIMEOUT):
        async with echo_server() as listener:
            comm = await connect(HOST, listener.port)
            assert not comm.closed
            await comm.aclose()
            await comm.aclose()
            assert comm.closed
            with pytest.raises(CommClosedError, match="closed locally"):
                await comm.send_frame(b"x")
            with pytest.raises(CommClosedError, match="closed locally"):
                await comm.recv_frame()


async def test_local_close_wakes_a_blocked_receiver() -> None:
    with anyio.fail_after(TIMEOUT):
        async with echo_server() as listener:
            comm = await connect(HOST, listener.port)
            errors: list[CommClosedError] = []

            async def receive() -> None:
                try:
                    await comm.recv_frame()
                except CommClosedError as exc:
                    errors.append(exc)

            async with anyio.create_task_group() as tg:
                tg.start_soon(receive)
                await anyio.sleep(0.01)
                await comm.aclose("shutting down")
            assert len(errors) == 1 and "shutting down" in errors[0].reason


async def test_peer_disconnect_raises_comm_closed() -> None:
    async def hang_up(comm: Comm) -> None:
        await comm.recv_frame()

    with anyio.fail_after(TIMEOUT):
        async with listen(HOST, 0, hang_up) as listener:
            comm = await connect(HOST, listener.port)
            await comm.send_frame(b"bye")
            with pytest.raises(CommClosedError, match="closed by peer|connection lost") as info:
                await comm.recv_frame()
            assert listener.address in info.value.reason
            assert comm.closed
            with pytest.raises(CommClosedError):
                await comm.send_frame(b"again")


async def test_send_to_a_vanished_peer_raises_comm_closed() -> None:
    async def hang_up(comm: Comm) -> None:
        pass

    with anyio.fail_after(TIMEOUT):
        async with listen(HOST, 0, hang_up) as listener:
            comm = await connect(HOST, listener.port)
            with pytest.raises(CommClosedError):
                for _ in range(10_000):  # the reset shows after a write or two
                    await comm.send_frame(b"x" * 1000)
                    await anyio.sleep(0.001)
            assert comm.closed


async def test_connect_refused_raises_connect_error() -> None:
    async with echo_server() as listener:
        port = listener.port
    with anyio.fail_after(TIMEOUT):
        with pytest.raises(ConnectError, match=f"could not connect to tcp://{HOST}:{port}"):
            await connect(HOST, port, timeout=2)
    assert issubclass(ConnectError, CommClosedError)


async def test_oversize_header_closes_and_listener_keeps_serving(caplog: pytest.LogCaptureFixture) -> None:
    errors: list[CommClosedError] = []

    async def handler(comm: Comm) -> None:
        try:
            while True:
                await comm.send_frame(await comm.recv_frame())
        except CommClosedError as exc:
            errors.append(exc)
            raise

    caplog.set_level(logging.DEBUG, logger="dsched.comm")
    with anyio.fail_after(TIMEOUT):
        async with listen(HOST, 0, handler, max_frame_size=1000) as listener:
            bad = await connect(HOST, listener.port)
            good = await connect(HOST, listener.port)
            await bad.send_frame(b"a" * 1000)  # exactly the limit is fine
            assert await bad.recv_frame() == b"a" * 1000
            await bad.send_frame(b"a" * 1001)
            with pytest.raises(CommClosedError):
                await bad.recv_frame()
            assert len(errors) == 1 and isinstance(errors[0], FrameTooLarge)
            assert "1001-byte frame" in errors[0].reason and "max_frame_size=1000" in errors[0].reason
            assert "announced a 1001-byte frame" in caplog.text
            # The listener and the other connection carry on.
            await good.send_frame(b"still here")
            assert await good.recv_frame() == b"still here"
            third = await connect(HOST, listener.port)
            await third.send_frame(b"new")
            assert await third.recv_frame() == b"new"
            for comm in (bad, good, third):
                await comm.aclose()


async def test_oversize_send_is_refused_without_writing() -> None:
    with anyio.fail_after(TIMEOUT):
        async with echo_server() as listener:
            comm = await connect(HOST, listener.port, max_frame_size=10)
            with pytest.raises(FrameTooLarge, match="refusing to send a 11-byte frame"):
                await comm.send_frame(b"x" * 11)
            assert comm.closed


async def test_garbage_and_half_headers_do_not_crash_the_listener(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="dsched.comm")
    with anyio.fail_after(TIMEOUT):
        async with echo_server() as listener:
            # An HTTP request: its first 8 bytes read as an absurd length.
            raw = await anyio.connect_tcp(HOST, listener.port)
            await raw.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                await raw.receive()
            await raw.aclose()
            # Half a header, then gone.
            raw = await anyio.connect_tcp(HOST, listener.port)
            await raw.send(b"\x05\x00\x00")
            await raw.aclose()
            # A header and half a payload, then gone.
            raw = await anyio.connect_tcp(HOST, listener.port)
            await raw.send(HEADER.pack(100) + b"x" * 50)
            await raw.aclose()
            # Connect and leave without a byte.
            raw = await anyio.connect_tcp(HOST, listener.port)
            await raw.aclose()
            comm = await connect(HOST, listener.port)
            await comm.send_frame(b"fine")
            assert await comm.recv_frame() == b"fine"
            await comm.aclose()
            assert listener.accepted == 5
            with anyio.fail_after(1):
                while listener.connections:
                    await anyio.sleep(0.01)
    assert "over max_frame_size" in caplog.text


async def test_handler_exception_is_logged_and_only_ends_its_connection(caplog: pytest.LogCaptureFixture) -> None:
    async def handler(comm: Comm) -> None:
        while True:
            payload = await comm.recv_frame()
            if payload == b"boom":
                raise ValueError("handler bug")
            await comm.send_frame(payload)

    with anyio.fail_after(TIMEOUT):
        async with listen(HOST, 0, handler) as listener:
            other = await connect(HOST, listener.port)
            comm = await connect(HOST, listener.port)
            await comm.send_frame(b"boom")
            with pytest.raises(CommClosedError):
                await comm.recv_frame()
            await other.send_frame(b"ok")
            assert await other.recv_frame() == b"ok"
            await other.aclose()
    assert "ValueError: handler bug" in caplog.text
    assert "failed; connection closed" in caplog.text


async def test_leaving_listen_closes_open_connections() -> None:
    with anyio.fail_after(TIMEOUT):
        async with echo_server() as listener:
            comm = await connect(HOST, listener.port)
            await comm.send_frame(b"x")
            await comm.recv_frame()
        with pytest.raises(CommClosedError):
            await comm.recv_frame()
        with pytest.raises(ConnectError):
            await connect(HOST, listener.port)


# -- BatchedSender -----------------------------------------------------------------------


async def test_batched_sender_coalesces_one_tick_into_one_frame() -> None:
    n = 10_000
    collector = Collector(n)
    with anyio.fail_after(TIMEOUT):
        async with listen(HOST, 0, collector) as listener:
            comm = await connect(HOST, listener.port)
            async with BatchedSender(comm, encode_ints) as sender:
                await anyio.sleep(0)  # let the sender's task start waiting
                for i in range(n):  # one loop tick: no await in between
                    sender.send(i)
                await collector.done.wait()
                assert sender.frames == 1 and sender.messages == n
            assert len(collector.batches) == 1
            assert collector.messages == list(range(n))
            assert comm.frames_sent == 1
            await comm.aclose()


async def test_batched_sender_preserves_order_across_frames() -> None:
    collector = Collector(2000)
    with anyio.fail_after(TIMEOUT):
        async with listen(HOST, 0, collector) as listener:
            comm = await connect(HOST, listener.port)
            async with BatchedSender(comm, encode_ints) as sender:
                i = 0
                for tick in range(40):
                    sender.send_many(range(i, i + tick))
                    i += tick
                    for _ in range(50 - tick):
                        sender.send(i)
                        i += 1
                    await anyio.sleep(0)
                    await anyio.sleep(0)
                assert i == 2000
                await collector.done.wait()
            assert collector.messages == list(range(2000))
            assert 10 < len(collector.batches) <= 40
            await comm.aclose()


async def test_batched_sender_interval_coalesces_across_ticks() -> None:
    collector = Collector(100)
    with anyio.fail_after(TIMEOUT):
        async with listen(HOST, 0, collector) as listener:
            comm = await connect(HOST, listener.port)
            async with BatchedSender(comm, encode_ints, interval=0.2) as sender:
                for i in range(100):
                    sender.send(i)
                    await anyio.sleep(0)
                await collector.done.wait()
            assert collector.messages == list(range(100))
            assert len(collector.batches) == 1
            await comm.aclose()


async def test_batched_sender_encode_may_split_a_batch_into_frames() -> None:
    collector = Collector(2500)

    def encode(batch: list[int]) -> list[bytes]:
        return [msgspec.msgpack.encode(batch[i : i + 1000]) for i in range(0, len(batch), 1000)]

    with anyio.fail_after(TIMEOUT):
        async with listen(HOST, 0, collector) as listener:
            comm = await connect(HOST, listener.port)
            async with BatchedSender(comm, encode) as sender:
                sender.send_many(range(2500))
                await collector.done.wait()
                assert sender.frames == 3 and sender.messages == 2500
            assert [len(b) for b in collector.batches] == [1000, 1000, 500]
            assert collector.messages == list(range(2500))
            await comm.aclose()


async def test_batched_sender_close_flushes() -> None:
    collector = Collector(500)
    with anyio.fail_after(TIMEOUT):
        async with listen(HOST, 0, collector) as listener:
            comm = await connect(HOST, listener.port)
            sender: BatchedSender[int] = BatchedSender(comm, encode_ints)
            async with anyio.create_task_group() as tg:
                tg.start_soon(sender.run)
                sender.send_many(range(250))
                await anyio.sleep(0)
                sender.send_many(range(250, 500))
                await sender.close()  # returns once the last frame is written
                await sender.close()
            await comm.aclose()
            await collector.done.wait()
            assert collector.messages == list(range(500))
            with pytest.raises(CommClosedError, match="is closed"):
                sender.send(1)


async def test_batched_sender_close_without_run_flushes_inline() -> None:
    collector = Collector(3)
    with anyio.fail_after(TIMEOUT):
        async with listen(HOST, 0, collector) as listener:
            comm = await connect(HOST, listener.port)
            sender: BatchedSender[int] = BatchedSender(comm, encode_ints)
            sender.send_many([1, 2, 3])
            await sender.close()
            await collector.done.wait()
            assert collector.messages == [1, 2, 3]
            await comm.aclose()


class GatedStream(ByteStream):
    """A byte stream whose writes block while ``gate`` is closed; keeps what was written."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.writes = 0
        self.gate_open = anyio.Event()

    async def send(self, item: bytes) -> None:
        self.writes += 1
        await self.gate_open.wait()
        self.written += item

    async def receive(self, max_bytes: int = 65536) -> bytes:
        await anyio.sleep_forever()
        raise AssertionError

    async def send_eof(self) -> None:
        pass

    async def aclose(self) -> None:
        pass

    def frames(self) -> list[bytes]:
        out, data = [], bytes(self.written)
        while data:
            (size,) = HEADER.unpack_from(data)
            out.append(data[HEADER_SIZE : HEADER_SIZE + size])
            data = data[HEADER_SIZE + size :]
        return out


async def test_batched_sender_backpressure_grows_frames_not_writes() -> None:
    """While a write is blocked, new messages wait and leave together in the next frame."""
    stream = GatedStream()
    comm = Comm(stream, peer="test://gated")
    assert comm.peer == "test://gated"

    def encode(batch: list[bytes]) -> bytes:
        return b"|".join(batch)

    with anyio.fail_after(TIMEOUT):
        async with BatchedSender(comm, encode) as sender:
            sender.send(b"first")
            await anyio.sleep(0.01)
            assert stream.writes == 1 and sender.frames == 0  # blocked in the write
            for i in range(100):
                sender.send(str(i).encode())
                await anyio.sleep(0)
            assert sender.queued == 100 and stream.writes == 1
            stream.gate_open.set()
        assert sender.frames == 2 and stream.writes == 2
        assert stream.frames() == [b"first", b"|".join(str(i).encode() for i in range(100))]


async def test_batched_sender_reports_peer_disconnect() -> None:
    async def hang_up(comm: Comm) -> None:
        pass

    errors: list[CommClosedError] = []
    with anyio.fail_after(TIMEOUT):
        async with listen(HOST, 0, hang_up) as listener:
            comm = await connect(HOST, listener.port)
            async with BatchedSender(comm, encode_ints, on_error=errors.append) as sender:
                with pytest.raises(CommClosedError):
                    for i in range(10_000):
                        sender.send(i)
                        await anyio.sleep(0.001)
            assert len(errors) == 1 and sender.error is errors[0]
            assert comm.closed


async def test_batched_sender_encode_failure_stops_it_and_closes_the_comm(caplog: pytest.LogCaptureFixture) -> None:
    def encode(batch: list[object]) -> bytes:
        return msgspec.msgpack.encode(batch)

    errors: list[CommClosedError] = []
    with anyio.fail_after(TIMEOUT):
        async with echo_server() as listener:
            comm = await connect(HOST, listener.port)
            async with BatchedSender(comm, encode, on_error=errors.append) as sender:
                sender.send(object())  # msgspec cannot encode this
                await anyio.sleep(0.01)
                with pytest.raises(CommClosedError, match="encoding a batch"):
                    sender.send(1)
            assert len(errors) == 1
            assert comm.closed
    assert "failed to encode a batch" in caplog.text


# -- TLS ---------------------------------------------------------------------------------


def _tls_contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(HOST, "localhost").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(client_ctx)
    return server_ctx, client_ctx


async def test_tls_round_trip_and_plain_client_rejected(caplog: pytest.LogCaptureFixture) -> None:
    server_ctx, client_ctx = _tls_contexts()
    caplog.set_level(logging.INFO, logger="dsched.comm")
    with anyio.fail_after(TIMEOUT):
        async with echo_server(ssl_context=server_ctx, handshake_timeout=2) as listener:
            assert listener.address.startswith("tls://")
            comm = await connect(HOST, listener.port, ssl_context=client_ctx)
            assert comm.peer == listener.address
            for payload in (b"", b"secret", b"s" * 3_000_000):
                await comm.send_frame(payload)
                assert await comm.recv_frame() == payload
            # A plain-TCP client speaking frames to a TLS listener is dropped, and logged.
            plain = await connect(HOST, listener.port)
            await plain.send_frame(b"hello?")
            with pytest.raises(CommClosedError):
                await plain.recv_frame()
            # A client that does not trust the server's CA cannot connect.
            with pytest.raises(ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await connect(HOST, listener.port, ssl_context=ssl.create_default_context())
            # The TLS connection still works.
            await comm.send_frame(b"after")
            assert await comm.recv_frame() == b"after"
            await comm.aclose()
    assert "TLS handshake" in caplog.text


async def test_tls_client_to_plain_listener_fails_cleanly() -> None:
    _, client_ctx = _tls_contexts()
    with anyio.fail_after(TIMEOUT):
        async with echo_server() as listener:
            with pytest.raises(ConnectError):
                await connect(HOST, listener.port, ssl_context=client_ctx, timeout=2)
            comm = await connect(HOST, listener.port)
            await comm.send_frame(b"ok")
            assert await comm.recv_frame() == b"ok"
            await comm.aclose()
