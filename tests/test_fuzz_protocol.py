"""Fuzzing the frame reader, the frame decoders of every direction and the handshake.

Every input either decodes to valid messages or raises the protocol's one error
type (``ProtocolError``; ``CommClosedError`` for the byte stream of a ``Comm``):
never another exception, never a hang, never an allocation beyond the input's
size.  The bulk runs at the function level in seeded loops over mutators (fast,
reproducible: a failure prints the seed and the input); hypothesis adds
structured inputs; the end-to-end part throws generated garbage at a live
scheduler and at a worker's peer listener while a valid client computes.

Inputs tried per run: the constants below (``TOTAL_INPUTS`` sums them), quoted in
the closing note of issue 6.
"""

from __future__ import annotations

import logging
import os
import random
import tracemalloc
from collections.abc import Callable
from typing import Any, Final

import anyio
import msgspec
import pytest
from _client_helpers import inc, wait_until
from hypothesis import given, settings
from hypothesis import strategies as st
from test_protocol import CHANNELS, TAGS, random_frame, random_instance, random_value, union_members

import sched_core as sc
from dsched import _protocol as p
from dsched._client import Client
from dsched._comm import HEADER, Comm, CommClosedError, connect, parse_address
from dsched._scheduler_server import SchedulerServer
from dsched._worker import Worker

# Per run: mutated frames x 5 directions, mutated handshakes (each decoded as a Hello
# and as a reply), byte streams read by a Comm, hypothesis examples, live connections.
FRAME_INPUTS: Final = 100_000
HANDSHAKE_INPUTS: Final = 20_000
STREAM_INPUTS: Final = 5_000
HUGE_LENGTH_INPUTS: Final = 2_000
HYPOTHESIS_EXAMPLES: Final = 300  # per hypothesis test below (3 tests; structured, so slower per input)
LIVE_GARBAGE_CONNECTIONS: Final = 240
TOTAL_INPUTS: Final = (
    FRAME_INPUTS + HANDSHAKE_INPUTS + STREAM_INPUTS + HUGE_LENGTH_INPUTS + 3 * HYPOTHESIS_EXAMPLES
    + LIVE_GARBAGE_CONNECTIONS
)
# Another seed tries other inputs: DSCHED_FUZZ_SEED=7 pytest tests/test_fuzz_*.py
SEED: Final = int(os.environ.get("DSCHED_FUZZ_SEED", "20261126"))

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# -- mutators ---------------------------------------------------------------------------

# msgpack headers that announce a huge (or absurd) length or value, for "length-field lies".
LIES: Final = [
    b"\xdd\xff\xff\xff\xff", b"\xdc\xff\xff", b"\xdf\xff\xff\xff\xff", b"\xde\xff\xff",
    b"\xdb\xff\xff\xff\xff", b"\xda\xff\xff", b"\xc6\xff\xff\xff\xff", b"\xc5\xff\xff",
    b"\xcf\xff\xff\xff\xff\xff\xff\xff\xff", b"\xd3\x80\x00\x00\x00\x00\x00\x00\x00",
    b"\xcb\x7f\xf8\x00\x00\x00\x00\x00\x00", b"\xc1", b"\xc9\xff\xff\xff\xff\x01", b"\xd8\x01",
    b"\x9f", b"\x8f", b"\xbf", b"\xdd\x00\x00\x00\x00",
]


def mutate(rng: random.Random, data: bytes, corpus: list[bytes]) -> bytes:
    """One random mutation (sometimes several) of ``data``."""
    buf = bytearray(data)
    kind = rng.randrange(11)
    n = len(buf)
    if kind == 0 and n:  # bit flips
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(n)
            buf[i] ^= 1 << rng.randrange(8)
    elif kind == 1:  # truncation
        del buf[rng.randint(0, n) :]
    elif kind == 2:  # random bytes inserted
        i = rng.randint(0, n)
        buf[i:i] = rng.randbytes(rng.randint(1, 16))
    elif kind == 3 and n:  # a slice deleted
        i = rng.randrange(n)
        del buf[i : i + rng.randint(1, 16)]
    elif kind == 4 and n:  # a slice duplicated
        i = rng.randrange(n)
        buf[i:i] = buf[i : i + rng.randint(1, 32)]
    elif kind == 5:  # a length field that lies
        i = rng.randint(0, n)
        lie = rng.choice(LIES)
        buf[i : i + (len(lie) if rng.random() < 0.5 else 0)] = lie
    elif kind == 6:  # two inputs spliced
        other = rng.choice(corpus)
        buf = buf[: rng.randint(0, n)] + other[rng.randint(0, len(other)) :]
    elif kind == 7:  # deep nesting
        i = rng.randint(0, n)
        buf[i:i] = rng.choice([b"\x91", b"\x81\xa1k"]) * rng.choice([64, 1_000, 50_000])
    elif kind == 8:  # random bytes
        buf = bytearray(rng.randbytes(rng.randint(0, 64)))
    elif kind == 9:  # one byte set to an interesting value
        if n:
            buf[rng.randrange(n)] = rng.choice([0x00, 0x7F, 0x80, 0xC0, 0xC1, 0xFF, 0x90, 0xDC, 0xDD])
    else:  # several mutations
        out = bytes(buf)
        for _ in range(rng.randint(2, 4)):
            out = mutate(rng, out, corpus)
        return out
    return bytes(buf)


def frame_corpus(rng: random.Random, channel: p.Channel[Any]) -> list[bytes]:
    """Valid frames of ``channel`` (every message type), and frames of the wrong shape."""
    encoder = p.FrameEncoder(channel)
    members = union_members(channel)
    corpus = [encoder.encode([random_instance(rng, cls)], batch=rng.choice([-1, 3])) for cls in members]
    for _ in range(30):
        corpus.append(encoder.encode([random_instance(rng, rng.choice(members)) for _ in range(rng.randint(0, 4))]))
        corpus.append(random_frame(rng, channel))
    return corpus


def handshake_corpus(rng: random.Random) -> list[bytes]:
    hellos: list[p.Hello] = [
        p.Hello(version, role, name, address, auth)
        for version in (p.PROTOCOL_VERSION, 0, 2, -1, 2**63 - 1)
        for role in ("client", "worker", "peer")
        for name, address, auth in (("", "", ""), ("c-1", "tcp://10.0.0.1:8786", "s3cret"), ("\u00e9" * 30, "x", "y" * 64))
    ]
    replies: list[p.Welcome | p.Refused] = [
        p.Welcome(p.PROTOCOL_VERSION, "scheduler-1", "tcp://127.0.0.1:1", 10, 0.5, "client-1"),
        p.Welcome(7, "s"),
        p.Refused("authentication failed"),
    ]
    corpus = [p.encode_handshake(m) for m in [*hellos, *replies]]
    for _ in range(20):  # maps of the right tag with random fields
        fields = {rng.choice(["op", "protocol", "role", "name", "address", "auth", "x"]): random_value(rng) for _ in range(5)}
        corpus.append(msgspec.msgpack.encode({"op": rng.choice(["hello", "welcome", "refused", "?"]), **fields}))
    return corpus


# -- checks -----------------------------------------------------------------------------


def check_frame(decoder: p.FrameDecoder[Any], encoder: p.FrameEncoder[Any], members: tuple[type, ...], data: bytes) -> bool:
    """Decode one input: a valid frame (re-encodable, messages of the channel) or ProtocolError."""
    try:
        frame = decoder.decode_frame(data)
    except p.ProtocolError as exc:
        text = str(exc)
        assert text.isascii() and text.isprintable() and len(text) < 300, text
        return False
    assert isinstance(frame.batch, int)
    assert all(isinstance(m, members) for m in frame.messages)
    encoder.encode(frame.messages)  # whatever decodes can be sent on
    return True


def check_handshake(data: bytes) -> None:
    try:
        hello = p.decode_hello(data)
    except p.ProtocolError as exc:
        assert str(exc).isascii()
    else:
        refusal = p.check_hello(hello, roles=("client", "worker"), auth="s3cret")
        assert refusal is None or isinstance(refusal, p.Refused)
        if hello.protocol != p.PROTOCOL_VERSION:
            assert refusal is not None and "version" in refusal.reason
        repr(hello)
    try:
        reply = p.decode_reply(data)
    except p.ProtocolError as exc:
        assert str(exc).isascii()
    else:
        assert isinstance(reply, (p.Welcome, p.Refused))


def run_mutations(n: int, corpus: list[bytes], check: Callable[[bytes], object], seed: int) -> None:
    rng = random.Random(seed)
    for i in range(n):
        data = mutate(rng, rng.choice(corpus), corpus)
        try:
            check(data)
        except Exception as exc:  # name the input that broke it, to reproduce
            raise AssertionError(f"input #{i} (seed {seed}) broke the decoder: {data[:200]!r}") from exc


# -- function level: the bulk -------------------------------------------------------------


@pytest.mark.parametrize("channel", CHANNELS, ids=lambda c: c.name)
def test_mutated_frames_decode_or_raise_protocol_error(channel: p.Channel[Any]) -> None:
    rng = random.Random(SEED)
    corpus = frame_corpus(rng, channel)
    decoder = p.FrameDecoder(channel)
    encoder = p.FrameEncoder(channel, max_messages=10**9)
    members = union_members(channel)
    decoded = [0]

    def check(data: bytes) -> None:
        decoded[0] += check_frame(decoder, encoder, members, data)

    run_mutations(FRAME_INPUTS // len(CHANNELS), corpus, check, SEED + CHANNELS.index(channel))
    # The mutations keep enough of the structure that some still decode.
    assert 0 < decoded[0] < FRAME_INPUTS // len(CHANNELS)


def test_mutated_handshakes_decode_or_raise_protocol_error() -> None:
    rng = random.Random(SEED)
    corpus = handshake_corpus(rng)
    run_mutations(HANDSHAKE_INPUTS, corpus, check_handshake, SEED)


def test_huge_declared_lengths_allocate_nothing_of_that_size() -> None:
    rng = random.Random(SEED)
    decoders = [(p.FrameDecoder(c), union_members(c)) for c in CHANNELS]
    corpus = [e for c in CHANNELS for e in frame_corpus(rng, c)[:5]]
    tracemalloc.start()
    try:
        for _ in range(HUGE_LENGTH_INPUTS):
            base = rng.choice(corpus)
            i = rng.randint(0, len(base))
            data = base[:i] + rng.choice(LIES[:9]) + base[i:]
            for decoder, members in decoders:
                check_frame(decoder, p.FrameEncoder(decoder.channel, max_messages=10**9), members, data)
            check_handshake(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 32 * 1024 * 1024  # a 4 GiB claim in a 1 KiB input never becomes an allocation


# -- the byte stream: Comm.recv_frame ---------------------------------------------------


class ChunkedStream(anyio.abc.ByteStream):
    """Hands out ``data`` in random chunks, then end of stream."""

    def __init__(self, data: bytes, rng: random.Random) -> None:
        self.data = data
        self.rng = rng
        self.pos = 0

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if self.pos >= len(self.data):
            raise anyio.EndOfStream
        n = min(max_bytes, self.rng.choice([1, 3, 8, 100, 4096, 1 << 20]))
        chunk = self.data[self.pos : self.pos + n]
        self.pos += len(chunk)
        return chunk

    async def send(self, item: bytes) -> None:
        pass

    async def send_eof(self) -> None:
        pass

    async def aclose(self) -> None:
        self.pos = len(self.data)


async def test_mutated_byte_streams_yield_frames_or_comm_closed() -> None:
    rng = random.Random(SEED)
    frames = [f for c in CHANNELS for f in frame_corpus(rng, c)[:20]]
    streams = [b"".join(HEADER.pack(len(f)) + f for f in rng.sample(frames, 3)) for _ in range(50)]
    decoders = [(p.FrameDecoder(c), p.FrameEncoder(c, max_messages=10**9), union_members(c)) for c in CHANNELS]
    for i in range(STREAM_INPUTS):
        data = mutate(rng, rng.choice(streams), streams)
        comm = Comm(ChunkedStream(data, rng), peer="fuzz", max_frame_size=4096)
        received = 0
        with anyio.fail_after(5):  # a hang guard: every stream ends
            try:
                while True:
                    payload = await comm.recv_frame()
                    received += len(payload) + HEADER.size
                    for decoder, encoder, members in decoders:
                        check_frame(decoder, encoder, members, payload)
            except CommClosedError:
                pass
        assert received <= len(data), f"stream #{i} yielded more than it held"
        assert comm.closed


# -- hypothesis: structured inputs -------------------------------------------------------

MSGPACK = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=20)
    | st.binary(max_size=20) | st.sampled_from(TAGS),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
DECODERS = {c.name: (p.FrameDecoder(c), p.FrameEncoder(c, max_messages=10**9), union_members(c)) for c in CHANNELS}


@settings(max_examples=HYPOTHESIS_EXAMPLES, deadline=None)
@given(
    channel=st.sampled_from(CHANNELS),
    batch=MSGPACK,
    messages=st.lists(st.tuples(st.sampled_from(TAGS), st.lists(MSGPACK, max_size=8)), max_size=4),
)
def test_valid_msgpack_of_wrong_types_raises_protocol_error(channel: p.Channel[Any], batch: Any, messages: Any) -> None:
    data = msgspec.msgpack.encode([batch, [[tag, *fields] for tag, fields in messages]])
    decoder, encoder, members = DECODERS[channel.name]
    check_frame(decoder, encoder, members, data)


@settings(max_examples=HYPOTHESIS_EXAMPLES, deadline=None)
@given(
    protocol=st.integers(-(2**63), 2**63 - 1) | st.sampled_from([p.PROTOCOL_VERSION]) | MSGPACK,
    role=st.sampled_from(["client", "worker", "peer", "", "CLIENT", "admin"]) | MSGPACK,
    name=st.text(max_size=30) | st.sampled_from(["n" * p.MAX_NAME_LENGTH, "n" * (p.MAX_NAME_LENGTH + 1)]),
    auth=st.sampled_from(["", "s3cret", "wrong", "a" * p.MAX_AUTH_LENGTH, "a" * (p.MAX_AUTH_LENGTH + 1)]),
    extra=st.dictionaries(st.text(max_size=6), MSGPACK, max_size=3),
)
def test_generated_hellos_are_welcomed_only_when_right(protocol: Any, role: Any, name: str, auth: str, extra: Any) -> None:
    data = msgspec.msgpack.encode({**extra, "op": "hello", "protocol": protocol, "role": role, "name": name, "auth": auth})
    try:
        hello = p.decode_hello(data)
    except p.ProtocolError as exc:
        assert str(exc).isascii()
        return
    refusal = p.check_hello(hello, roles=("client", "worker"), auth="s3cret")
    right = hello.protocol == p.PROTOCOL_VERSION and hello.role in ("client", "worker") and hello.auth == "s3cret"
    assert (refusal is None) == right, (hello, refusal)
    assert len(hello.name) <= p.MAX_NAME_LENGTH


@settings(max_examples=HYPOTHESIS_EXAMPLES, deadline=None)
@given(data=st.binary(max_size=400), channel=st.sampled_from(CHANNELS))
def test_random_bytes_decode_or_raise_protocol_error(data: bytes, channel: p.Channel[Any]) -> None:
    decoder, encoder, members = DECODERS[channel.name]
    check_frame(decoder, encoder, members, data)
    check_handshake(data)


# -- end to end: a live scheduler and a worker's peer listener -----------------------------


async def _throw(address: str, rng: random.Random, corpora: dict[str, list[bytes]]) -> None:
    """One connection of generated garbage: raw bytes, a mutated handshake, or a valid
    handshake followed by mutated frames; then read (briefly) whatever comes back."""
    _, host, port = parse_address(address)
    try:
        comm = await connect(host, port, timeout=5)
    except CommClosedError:
        return
    kind = rng.randrange(6)
    try:
        with anyio.move_on_after(0.3):
            if kind == 0:
                await comm._stream.send(rng.randbytes(rng.randint(1, 300)))
            elif kind == 1:
                hs = corpora["handshake"]
                await comm.send_frame(mutate(rng, rng.choice(hs), hs))
            elif kind == 2:
                await comm._stream.send(HEADER.pack(rng.choice([2**63, 2**40, 70_000])))
            elif kind == 3:
                pass  # silent: the handshake timeout drops it
            else:
                role = rng.choice(["client", "worker", "peer"])
                await comm.send_frame(p.encode_handshake(p.Hello(p.PROTOCOL_VERSION, role, f"garbage-{rng.random()}")))  # type: ignore[arg-type]
                corpus = corpora[role]
                for _ in range(rng.randint(1, 4)):
                    await comm.send_frame(mutate(rng, rng.choice(corpus), corpus))
            while True:
                await comm.recv_frame()
    except CommClosedError:
        pass
    finally:
        await comm.aclose()


async def test_a_live_cluster_serves_a_valid_client_through_generated_garbage(caplog: pytest.LogCaptureFixture) -> None:
    rng = random.Random(SEED)
    corpora = {
        "handshake": handshake_corpus(rng),
        "client": frame_corpus(rng, p.CLIENT_TO_SCHEDULER),
        "worker": frame_corpus(rng, p.WORKER_TO_SCHEDULER),
        "peer": frame_corpus(rng, p.PEER),
    }
    async with SchedulerServer(handshake_timeout=0.2) as server, Worker(server.address, nthreads=2) as worker:
        async with Client(server.address, asynchronous=True) as client:
            thrown = 0
            for round_ in range(LIVE_GARBAGE_CONNECTIONS // 20):
                futures = client.map(inc, range(round_ * 10, round_ * 10 + 10))
                async with anyio.create_task_group() as tg:
                    for _ in range(20):
                        target = server.address if rng.random() < 0.75 else worker.address
                        tg.start_soon(_throw, target, random.Random(rng.random()), corpora)
                        thrown += 1
                # Correct results, fetched from the worker (as a peer) through the garbage.
                assert await client.gather(futures) == [inc(i) for i in range(round_ * 10, round_ * 10 + 10)]
            assert thrown == LIVE_GARBAGE_CONNECTIONS
            # Only the valid parties remain, and only the valid client's tasks.
            await wait_until(lambda: set(server.clients) == {client.id})
            await wait_until(lambda: set(server.state.workers) == {worker.address})
            for ts in server.state.tasks.values():
                assert {cs.client_id for cs in ts.who_wants or []} <= {client.id}, ts
            sc.validate_state(server.state)
            assert server.protocol_errors > 0 and sum(server.refused.values()) > 0
            assert await client.submit(inc, 41) == 42
    # Garbage is refused, never an unexpected exception (a handler that failed logs an ERROR).
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR][:5]


async def test_a_peer_putting_a_value_that_does_not_unpickle_is_told_and_dropped() -> None:
    # Found by the live garbage test (DSCHED_FUZZ_SEED=11): the unpickling error escaped
    # the peer handler, which dropped the connection without a word and logged an ERROR.
    import functools

    from dsched._comm import listen
    from dsched._worker_peers import PeerServing, serve_peer

    stored: dict[str, object] = {}

    def on_put(values: dict[str, object]) -> dict[str, int]:
        stored.update(values)
        return {key: 1 for key in values}

    serving = PeerServing(stored, on_put, scheduler_id="s", address="w")
    async with listen("127.0.0.1", 0, functools.partial(serve_peer, serving)) as listener:
        attempts: list[tuple[p.PeerMessage, str]] = [
            (p.PutData(1, {"x": b"\x80\x05not a pickle", "y": b"\x80\x05K\x01."}), "PutData 1: a value does not unpickle"),
            (p.DataReply(2, {}), "unexpected DataReply"),
        ]
        for bad, why in attempts:
            comm = await connect("127.0.0.1", listener.port)
            await comm.send_frame(p.encode_handshake(p.Hello(p.PROTOCOL_VERSION, "peer", "me")))
            assert isinstance(p.decode_reply(await comm.recv_frame()), p.Welcome)
            await comm.send_frame(p.FrameEncoder(p.PEER).encode([bad]))
            with anyio.fail_after(5):
                (goodbye,) = p.FrameDecoder(p.PEER).decode(await comm.recv_frame())
            assert isinstance(goodbye, p.Close) and why in goodbye.reason
            with pytest.raises(CommClosedError), anyio.fail_after(5):
                await comm.recv_frame()
        assert stored == {} and serving.protocol_errors == 2
        # A valid put still works.
        comm = await connect("127.0.0.1", listener.port)
        await comm.send_frame(p.encode_handshake(p.Hello(p.PROTOCOL_VERSION, "peer", "ok")))
        p.decode_reply(await comm.recv_frame())
        await comm.send_frame(p.FrameEncoder(p.PEER).encode([p.PutData(3, {"y": b"\x80\x05K\x01."})]))
        (reply,) = p.FrameDecoder(p.PEER).decode(await comm.recv_frame())
        assert isinstance(reply, p.PutDataReply) and stored == {"y": 1}
        await comm.aclose()
