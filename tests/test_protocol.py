"""The wire protocol: message round trips, frames, limits, garbage and the handshake."""

from __future__ import annotations

import gc
import pickle
import random
from typing import Any

import msgspec
import msgspec.inspect as mi
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dsched._messages as messages_module
from dsched._protocol import (
    CLIENT_TO_SCHEDULER,
    MAX_MESSAGES,
    PEER,
    PROTOCOL_VERSION,
    SCHEDULER_TO_CLIENT,
    SCHEDULER_TO_WORKER,
    WORKER_TO_SCHEDULER,
    Channel,
    Close,
    Compute,
    DataReply,
    DefineFunction,
    FrameDecoder,
    FrameEncoder,
    FreeKeys,
    GraphTask,
    Hello,
    KeyErred,
    ProtocolError,
    SchedulerToWorker,
    Refused,
    StealRequest,
    SubmitGraph,
    SubmitLayers,
    TaskErred,
    TaskFinished,
    Welcome,
    check_hello,
    decode_hello,
    decode_reply,
    encode_handshake,
    payload_bytes,
    payload_view,
)

CHANNELS: list[Channel[Any]] = [
    CLIENT_TO_SCHEDULER, SCHEDULER_TO_CLIENT, WORKER_TO_SCHEDULER, SCHEDULER_TO_WORKER, PEER
]
TEXT = st.text(max_size=12)


def union_members(channel: Channel[Any]) -> tuple[type[msgspec.Struct], ...]:
    return tuple(t.cls for t in mi.type_info(channel.message_type).types)  # type: ignore[attr-defined]


def message_classes() -> list[type[msgspec.Struct]]:
    """Every tagged message class the protocol defines."""
    found = []
    for name in messages_module.__all__:
        obj = getattr(messages_module, name)
        if isinstance(obj, type) and issubclass(obj, msgspec.Struct) and obj.__struct_config__.tag is not None:
            found.append(obj)
    return found


# --- strategies built from the message definitions ------------------------------------


def strategy_for(t: mi.Type) -> st.SearchStrategy[Any]:
    if isinstance(t, mi.StrType):
        return TEXT
    if isinstance(t, mi.BoolType):
        return st.booleans()
    if isinstance(t, mi.IntType):
        low = t.ge if t.ge is not None else -(2**63)
        high = t.le if t.le is not None else 2**63 - 1
        return st.integers(min_value=low, max_value=high)
    if isinstance(t, mi.FloatType):
        if t.ge is not None:
            return st.floats(min_value=t.ge, allow_nan=False)
        return st.floats(allow_nan=False)
    if isinstance(t, (mi.RawType, mi.BytesType)):  # an opaque payload, or plain bytes
        return st.binary(max_size=300)
    if isinstance(t, mi.NoneType):
        return st.none()
    if isinstance(t, mi.ListType):
        return st.lists(strategy_for(t.item_type), max_size=4)
    if isinstance(t, mi.DictType):
        return st.dictionaries(strategy_for(t.key_type), strategy_for(t.value_type), max_size=4)
    if isinstance(t, mi.UnionType):
        return st.one_of([strategy_for(member) for member in t.types])
    if isinstance(t, mi.StructType):
        return struct_strategy(t.cls)
    if isinstance(t, mi.TupleType):
        return st.tuples(*[strategy_for(item) for item in t.item_types])
    raise NotImplementedError(t)


def struct_strategy(cls: type[msgspec.Struct]) -> st.SearchStrategy[Any]:
    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType)
    fields = {f.name: strategy_for(f.type) for f in info.fields}
    if cls is SubmitGraph:
        return st.builds(
            lambda functions, tasks, wanted: SubmitGraph(
                functions, [msgspec.structs.replace(t, function=t.function % len(functions)) for t in tasks], wanted
            ),
            st.lists(st.binary(max_size=50), min_size=1, max_size=3),
            fields["tasks"],
            fields["wanted"],
        )
    if cls is SubmitLayers:
        return st.builds(_valid_layers, st.lists(st.binary(max_size=50), min_size=1, max_size=3), fields["maps"], fields["reductions"], fields["wanted"])
    return st.builds(cls, **fields)


def _valid_layers(functions: list[bytes], maps: list[Any], reductions: list[Any], wanted: list[str]) -> SubmitLayers:
    """A SubmitLayers whose function indices and layer order are in range."""
    n = len(functions)
    maps = [msgspec.structs.replace(m, function=m.function % n) for m in maps]
    reductions = [
        msgspec.structs.replace(r, combine=r.combine % n, aggregate=r.aggregate % n, chunk=min(r.chunk, n - 1))
        for r in reductions
    ]
    order = [(0, i) for i in range(len(maps))] + [(1, j) for j in range(len(reductions))]
    return SubmitLayers(functions, maps, reductions, order, wanted)


def plain(value: Any) -> Any:
    """``value`` with every received payload (Raw) turned back into bytes."""
    if isinstance(value, msgspec.Raw):
        return payload_bytes(value)
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, msgspec.Struct):
        changes = {f: plain(getattr(value, f)) for f in value.__struct_fields__}
        return msgspec.structs.replace(value, **changes)
    return value


def channel_messages(channel: Channel[Any]) -> st.SearchStrategy[list[Any]]:
    return st.lists(st.one_of([struct_strategy(cls) for cls in union_members(channel)]), max_size=6)


# --- the catalogue -------------------------------------------------------------------


def test_tags_are_unique_and_every_message_travels_somewhere() -> None:
    classes = message_classes()
    tags = [cls.__struct_config__.tag for cls in classes]
    assert len(tags) == len(set(tags))
    carried = {cls for channel in CHANNELS for cls in union_members(channel)}
    assert set(classes) == carried


def test_messages_are_array_like_frozen_and_not_tracked_by_the_gc() -> None:
    for cls in message_classes() + [GraphTask]:
        config = cls.__struct_config__
        assert config.array_like and config.frozen and not config.gc, cls
    decoded = FrameDecoder(WORKER_TO_SCHEDULER).decode(
        FrameEncoder(WORKER_TO_SCHEDULER).encode([TaskFinished("x", 8, 0.5, 3)])
    )[0]
    assert isinstance(decoded, TaskFinished) and not gc.is_tracked(decoded)
    with pytest.raises(AttributeError):
        decoded.key = "y"  # type: ignore[misc]


@pytest.mark.parametrize("channel", CHANNELS, ids=lambda c: c.name)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_round_trip_of_every_message(channel: Channel[Any], data: st.DataObject) -> None:
    encoder, decoder = FrameEncoder(channel), FrameDecoder(channel)
    for cls in union_members(channel):
        message = data.draw(struct_strategy(cls), label=cls.__name__)
        payload = encoder.encode([message])
        (decoded,) = decoder.decode(payload)
        assert type(decoded) is cls
        assert plain(decoded) == message
        assert encoder.encode([decoded]) == payload  # received payloads re-encode verbatim


@pytest.mark.parametrize("channel", CHANNELS, ids=lambda c: c.name)
@settings(max_examples=100, deadline=None)
@given(data=st.data(), batch=st.integers(min_value=-1, max_value=2**40))
def test_round_trip_of_batches(channel: Channel[Any], data: st.DataObject, batch: int) -> None:
    batch_messages = data.draw(channel_messages(channel))
    encoder, decoder = FrameEncoder(channel), FrameDecoder(channel)
    payload = encoder.encode(batch_messages, batch=batch)
    frame = decoder.decode_frame(payload)
    assert frame.batch == batch
    assert plain(frame.messages) == batch_messages
    buffer = bytearray(b"\xff" * 10)
    length = encoder.encode_into(batch_messages, buffer, offset=4, batch=batch)
    assert length == len(payload) and buffer[:4] == b"\xff" * 4 and bytes(buffer[4:]) == payload


# --- scheduler -> worker frames carry the batch number --------------------------------


def test_scheduler_to_worker_frames_carry_the_batch_number() -> None:
    encoder, decoder = FrameEncoder(SCHEDULER_TO_WORKER), FrameDecoder(SCHEDULER_TO_WORKER)
    batch_messages: list[SchedulerToWorker] = [FreeKeys(["a"]), StealRequest("b", 4)]
    frame = decoder.decode_frame(encoder.encode(batch_messages, batch=1234))
    assert frame.batch == 1234 and frame.messages == batch_messages
    assert decoder.decode_frame(encoder.encode([])).batch == -1
    assert decoder.decode(encoder.encode(batch_messages, batch=9)) == batch_messages


def test_a_long_batch_is_split_into_frames_and_only_the_last_carries_its_number() -> None:
    encoder = FrameEncoder(SCHEDULER_TO_WORKER, max_messages=3)
    decoder = FrameDecoder(SCHEDULER_TO_WORKER, max_messages=3)
    batch_messages = [FreeKeys([str(i)]) for i in range(8)]
    with pytest.raises(ValueError, match="encode_frames"):
        encoder.encode(batch_messages)
    frames = [decoder.decode_frame(p) for p in encoder.encode_frames(batch_messages, batch=77)]
    assert [len(f.messages) for f in frames] == [3, 3, 2]
    # A worker that carried out only the first frames has not seen all of batch 77.
    assert [f.batch for f in frames] == [-1, -1, 77]
    assert [m for f in frames for m in f.messages] == batch_messages
    assert len(encoder.encode_frames([], batch=1)) == 1


# --- opaque payloads -----------------------------------------------------------------


def test_the_scheduler_forwards_function_and_args_without_decoding_them() -> None:
    function, args = pickle.dumps(len), pickle.dumps(("x" * 1000,))
    submit = SubmitGraph([function], [GraphTask("k", [], 0, args)], ["k"])
    (received,) = FrameDecoder(CLIENT_TO_SCHEDULER).decode(FrameEncoder(CLIENT_TO_SCHEDULER).encode([submit]))
    assert isinstance(received, SubmitGraph)
    task = received.tasks[0]
    assert isinstance(task.args, msgspec.Raw) and isinstance(received.functions[0], msgspec.Raw)
    # The scheduler passes the Raw values on as they are.
    out: list[SchedulerToWorker] = [DefineFunction(0, received.functions[0]), Compute("k", 0, task.args, 0, 1)]
    define, compute = FrameDecoder(SCHEDULER_TO_WORKER).decode(FrameEncoder(SCHEDULER_TO_WORKER).encode(out))
    assert isinstance(define, DefineFunction) and isinstance(compute, Compute)
    assert pickle.loads(payload_view(define.function)) is len
    assert pickle.loads(payload_view(compute.args)) == ("x" * 1000,)


@pytest.mark.parametrize("size", [0, 1, 255, 256, 65535, 65536, 100_000])
def test_payload_views_at_every_bin_size(size: int) -> None:
    value = bytes(range(256)) * (size // 256) + bytes(size % 256)
    encoder, decoder = FrameEncoder(PEER), FrameDecoder(PEER)
    (reply,) = decoder.decode(encoder.encode([DataReply(1, {"k": value}, ["gone"])]))
    assert isinstance(reply, DataReply)
    view = payload_view(reply.data["k"])
    assert view.readonly and view == value and payload_bytes(reply.data["k"]) == value
    assert payload_view(value) == value and payload_bytes(value) is value


@pytest.mark.parametrize("raw", [b"", b"\x01", b"\xa3abc", b"\xc4\x05ab", b"\xc5\x00", b"\xc4\x01ab", b"\x92\x01\x02"])
def test_a_payload_that_is_not_a_bin_is_refused_when_used(raw: bytes) -> None:
    with pytest.raises(ProtocolError, match="not a msgpack bin"):
        payload_view(msgspec.Raw(raw))


def test_a_payload_that_is_not_a_bin_still_decodes_as_part_of_its_frame() -> None:
    # One bad task must not cost the connection: the frame decodes, using the payload fails.
    frame = msgspec.msgpack.encode((-1, [[42, "k", 7, "tb", 1]]))
    (erred,) = FrameDecoder(WORKER_TO_SCHEDULER).decode(frame)
    assert isinstance(erred, TaskErred)
    with pytest.raises(ProtocolError):
        payload_bytes(erred.exception)


def test_a_mutable_input_buffer_is_copied_before_payloads_point_into_it() -> None:
    encoded = bytearray(FrameEncoder(SCHEDULER_TO_CLIENT).encode([KeyErred("k", "k", b"exc", "tb")]))
    (erred,) = FrameDecoder(SCHEDULER_TO_CLIENT).decode(encoded)
    encoded[:] = bytes(len(encoded))
    assert isinstance(erred, KeyErred) and payload_bytes(erred.exception) == b"exc"


# --- a big graph pickles its function once ---------------------------------------------


def graph(n: int, function: bytes) -> SubmitGraph:
    tasks = [GraphTask(f"inc-{i}", [], 0, pickle.dumps((i,))) for i in range(n)]
    return SubmitGraph([function], tasks, [t.key for t in tasks])


def test_a_100000_task_graph_carries_its_shared_function_once() -> None:
    function = b"<pickled function>" + bytes(range(256)) * 40  # ~10 kB, easy to find
    encoder = FrameEncoder(CLIENT_TO_SCHEDULER)
    overhead = {}
    for n in (1_000, 10_000, 100_000):
        submit = graph(n, function)
        own = sum(2 * len(t.key) + len(t.args) for t in submit.tasks)  # key (task and wanted) and args
        payload = encoder.encode([submit])
        overhead[n] = (len(payload) - len(function) - own) / n
    assert payload.count(b"<pickled function>") == 1
    # Beyond its own key and args, each task costs the same dozen bytes of framing at any size.
    assert all(11 <= per_task <= 14 for per_task in overhead.values()), overhead
    assert max(overhead.values()) - min(overhead.values()) < 0.1, overhead
    (received,) = FrameDecoder(CLIENT_TO_SCHEDULER).decode(payload)
    assert isinstance(received, SubmitGraph) and len(received.tasks) == 100_000
    assert payload_bytes(received.functions[0]) == function
    assert pickle.loads(payload_view(received.tasks[99_999].args)) == (99_999,)


def test_a_task_naming_a_function_outside_the_table_is_refused() -> None:
    frame = msgspec.msgpack.encode((-1, [[10, [b"f"], [["a", [], 1, b"x"]], ["a"]]]))
    with pytest.raises(ProtocolError, match="function index 1 is out of range"):
        FrameDecoder(CLIENT_TO_SCHEDULER).decode(frame)
    with pytest.raises(ValueError):
        SubmitGraph([], [GraphTask("a", [], 0, b"x")], ["a"])


# --- garbage ------------------------------------------------------------------------


def assert_decodes_or_refuses(channel: Channel[Any], payload: bytes) -> None:
    try:
        frame = FrameDecoder(channel).decode_frame(payload)
    except ProtocolError as exc:
        text = str(exc)
        assert text.isascii() and text.isprintable() and len(text) < 300, text
    else:
        assert isinstance(frame.batch, int) and isinstance(frame.messages, list)


DECODERS = {channel.name: FrameDecoder(channel) for channel in CHANNELS}


@settings(max_examples=3000, deadline=None)
@given(payload=st.binary(max_size=200), channel=st.sampled_from(CHANNELS))
def test_random_bytes_raise_protocol_error(payload: bytes, channel: Channel[Any]) -> None:
    assert_decodes_or_refuses(channel, payload)


# Generating nested values with hypothesis strategies costs milliseconds per example;
# these tests draw a seed instead and build many values from it with a plain Random,
# so that thousands of frames are tried in a few seconds.

TAGS = [cls.__struct_config__.tag for cls in message_classes()]
ATOMS: list[Any] = [0, 1, -1, 127, 128, 255, 256, 2**31, 2**63 - 1, -(2**63), 2**64 - 1, 0.0, -0.0, 1.5,
                    float("nan"), float("inf"), float("-inf"), True, False, None, "", "k", "\x00", "\u202e\x1b[31m",
                    b"", b"\x00\xff", [], {}]


def random_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return rng.choice(ATOMS)
    if kind == 1:
        return rng.randrange(-(2**63), 2**64)
    if kind == 2:
        return rng.choice(TAGS) if rng.random() < 0.5 else rng.random() * 10 ** rng.randrange(-5, 20)
    if kind == 3:
        chars = (rng.choice([rng.randrange(32, 127), rng.randrange(0xD800)]) for _ in range(rng.randrange(6)))
        return "".join(map(chr, chars))
    if kind == 4:
        return rng.randbytes(rng.randrange(8))
    if kind == 5:
        return rng.choice(["x", "y", -1, 0])
    if kind == 6:
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(5))]
    if kind == 7:
        keys = [k for k in ATOMS if not isinstance(k, (list, dict))] + ["key", "a\x00b"]
        return {rng.choice(keys): random_value(rng, depth + 1) for _ in range(rng.randrange(3))}
    return [rng.choice(TAGS), *(random_value(rng, depth + 1) for _ in range(rng.randrange(8)))]


def random_instance(rng: random.Random, t: Any) -> Any:
    """A random valid value of a msgspec type (a message class, or a field's inspected type)."""
    if isinstance(t, type):
        t = mi.type_info(t)
    if isinstance(t, mi.StructType):
        values = {f.name: random_instance(rng, f.type) for f in t.fields}
        if t.cls is SubmitGraph:
            values["functions"].append(b"f")
            n = len(values["functions"])
            values["tasks"] = [msgspec.structs.replace(task, function=task.function % n) for task in values["tasks"]]
        if t.cls is SubmitLayers:
            return _valid_layers([*values["functions"], b"f"], values["maps"], values["reductions"], values["wanted"])
        if t.cls is Compute:
            values["call"] = values["call"] % 3
        return t.cls(**values)
    if isinstance(t, mi.StrType):
        return rng.choice(["", "k", "inc-1", "tcp://10.0.0.1:9000", "\u00e9\u4e00"])
    if isinstance(t, mi.BoolType):
        return rng.random() < 0.5
    if isinstance(t, mi.IntType):
        low = t.ge if t.ge is not None else -(2**63)
        high = t.le if t.le is not None else 2**63 - 1
        return rng.choice([v for v in (0, 1, 2, 7, 2**40, 2**63 - 1, -1, -(2**63)) if low <= v <= high])
    if isinstance(t, mi.FloatType):
        return rng.choice([0.0, 0.25, 1e9])
    if isinstance(t, (mi.RawType, mi.BytesType)):
        return rng.randbytes(rng.choice([0, 3, 300]))
    if isinstance(t, mi.NoneType):
        return None
    if isinstance(t, mi.ListType):
        return [random_instance(rng, t.item_type) for _ in range(rng.randrange(3))]
    if isinstance(t, mi.DictType):
        return {random_instance(rng, t.key_type): random_instance(rng, t.value_type) for _ in range(rng.randrange(3))}
    if isinstance(t, mi.UnionType):
        return random_instance(rng, rng.choice(t.types))
    if isinstance(t, mi.TupleType):
        return tuple(random_instance(rng, item) for item in t.item_types)
    raise NotImplementedError(t)


def random_frame(rng: random.Random, channel: Channel[Any]) -> bytes:
    """A frame of messages of the right tags, with a field broken or shifted now and then."""
    as_lists = []
    for _ in range(rng.randrange(4)):
        cls = rng.choice(union_members(channel))
        fields = msgspec.msgpack.decode(msgspec.msgpack.encode(random_instance(rng, cls)))
        action = rng.randrange(5)
        if action == 0:
            fields[rng.randrange(len(fields))] = random_value(rng)
        elif action == 1:
            del fields[rng.randrange(len(fields)) :]
        elif action == 2:
            fields.insert(rng.randrange(len(fields) + 1), random_value(rng))
        elif action == 3:
            fields[0] = rng.choice(TAGS)
        as_lists.append(fields)
    batch = rng.choice([-1, 5, 2**64 - 1]) if rng.random() < 0.9 else random_value(rng)
    return msgspec.msgpack.encode((batch, as_lists) if rng.random() < 0.95 else [batch, as_lists, 1])


@settings(max_examples=400, deadline=None)
@given(seed=st.integers(0, 2**32), channel=st.sampled_from(CHANNELS))
def test_msgpack_of_the_wrong_shape_raises_protocol_error(seed: int, channel: Channel[Any]) -> None:
    rng = random.Random(seed)
    for _ in range(10):
        assert_decodes_or_refuses(channel, random_frame(rng, channel))


@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 2**32), channel=st.sampled_from(CHANNELS))
def test_any_msgpack_value_raises_protocol_error(seed: int, channel: Channel[Any]) -> None:
    rng = random.Random(seed)
    for _ in range(10):
        value = random_value(rng)
        assert_decodes_or_refuses(channel, msgspec.msgpack.encode(value))
        assert_decodes_or_refuses(channel, msgspec.msgpack.encode([rng.choice([-1, 0, 1]), [value]]))


@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 2**32), channel=st.sampled_from(CHANNELS))
def test_corrupted_frames_raise_protocol_error(seed: int, channel: Channel[Any]) -> None:
    rng = random.Random(seed)
    batch_messages = [random_instance(rng, rng.choice(union_members(channel))) for _ in range(3)]
    valid = FrameEncoder(channel).encode(batch_messages, batch=5)
    for _ in range(10):
        payload = bytearray(valid)
        for _ in range(rng.randrange(1, 4)):
            payload[rng.randrange(len(payload))] = rng.randrange(256)
        assert_decodes_or_refuses(channel, bytes(payload))


@pytest.mark.parametrize("channel", CHANNELS, ids=lambda c: c.name)
def test_every_truncation_of_a_frame_raises_protocol_error(channel: Channel[Any]) -> None:
    rng = random.Random(1)
    batch_messages = [random_instance(rng, cls) for cls in union_members(channel)]
    payload = FrameEncoder(channel).encode(batch_messages, batch=3)
    decoder = FrameDecoder(channel)
    assert plain(decoder.decode(payload)) == batch_messages
    for end in range(len(payload)):
        with pytest.raises(ProtocolError):
            decoder.decode(payload[:end])


def test_deeply_nested_values_raise_protocol_error() -> None:
    # A Raw payload skips any value, however nested: that must not escape as RecursionError.
    nested = b"\x91" * 200_000 + b"\x00"
    frame = b"\x92\xff\x91\x95\x2a\xa1k" + nested + b"\xa0\x00"
    with pytest.raises(ProtocolError, match="nested too deeply"):
        FrameDecoder(WORKER_TO_SCHEDULER).decode(frame)


def test_too_many_messages_are_refused_before_they_are_built() -> None:
    decoder = FrameDecoder(SCHEDULER_TO_WORKER, max_messages=10)
    with pytest.raises(ProtocolError, match="more than max_messages=10 messages") as info:
        decoder.decode(FrameEncoder(SCHEDULER_TO_WORKER).encode([Close()] * 11))
    assert info.value.limit == "max_messages" and info.value.value == 10  # type: ignore[attr-defined]
    # An array header that claims 4 billion messages fails at once.
    with pytest.raises(ProtocolError):
        FrameDecoder(SCHEDULER_TO_WORKER).decode(b"\x92\x00\xdd\xff\xff\xff\xff")
    assert MAX_MESSAGES == FrameDecoder(PEER).max_messages
    with pytest.raises(ValueError):
        FrameDecoder(PEER, max_messages=0)


def test_unknown_tags_and_messages_of_another_direction_are_refused() -> None:
    to_worker = FrameEncoder(SCHEDULER_TO_WORKER).encode([FreeKeys(["a"])])
    with pytest.raises(ProtocolError, match="invalid client->scheduler frame: Invalid value 33"):
        FrameDecoder(CLIENT_TO_SCHEDULER).decode(to_worker)
    with pytest.raises(ProtocolError, match="Invalid value 99"):
        FrameDecoder(PEER).decode(msgspec.msgpack.encode((-1, [[99]])))


def test_protocol_errors_are_safe_to_log() -> None:
    hostile = "\x1b[31m\u202e" + "A" * 10_000
    with pytest.raises(ProtocolError) as info:
        decode_hello(msgspec.msgpack.encode({"op": "hello", "protocol": PROTOCOL_VERSION, "role": hostile, "name": ""}))
    text = str(info.value)
    assert text.isascii() and text.isprintable() and len(text) < 300
    assert "\\x1b" in text and info.value.__cause__ is None


# --- handshake -----------------------------------------------------------------------


def test_hello_round_trip_and_checks() -> None:
    hello = Hello(PROTOCOL_VERSION, "worker", "w-1", address="tcp://10.0.0.1:4000", auth="s3cret")
    received = decode_hello(encode_handshake(hello))
    assert received == hello
    assert "s3cret" not in repr(received)
    assert check_hello(received, roles={"worker", "client"}, auth="s3cret") is None
    assert check_hello(received, roles={"worker"}) is None  # no token required
    refused = check_hello(received, roles={"worker"}, auth="other")
    assert refused == Refused("authentication failed")
    refused = check_hello(received, roles={"peer"})
    assert refused is not None and "role 'worker'" in refused.reason
    old = Hello(PROTOCOL_VERSION + 1, "client", "c")
    refused = check_hello(decode_hello(encode_handshake(old)), roles={"client"})
    assert refused is not None
    assert f"protocol version {PROTOCOL_VERSION + 1} is not supported" in refused.reason


def test_a_hello_of_another_version_is_a_version_mismatch_even_if_it_does_not_decode() -> None:
    future = {"op": "hello", "protocol": 7, "role": 3, "name": ["changed"], "extra": {"x": 1}}
    expected = f"protocol version 7 is not supported: this side speaks version {PROTOCOL_VERSION}"
    with pytest.raises(ProtocolError, match=expected):
        decode_hello(msgspec.msgpack.encode(future))
    # Unknown fields of a newer Hello of the same shape are ignored.
    newer = {"op": "hello", "protocol": PROTOCOL_VERSION, "role": "peer", "name": "n", "zone": "eu"}
    assert decode_hello(msgspec.msgpack.encode(newer)).role == "peer"


@pytest.mark.parametrize(
    "payload",
    [b"", b"\xc1", msgspec.msgpack.encode([1, "client", "x"]), msgspec.msgpack.encode({"op": "welcome"}),
     msgspec.msgpack.encode({"op": "hello", "protocol": PROTOCOL_VERSION, "role": "admin", "name": "x"})],
)
def test_garbage_instead_of_a_hello_raises_protocol_error(payload: bytes) -> None:
    with pytest.raises(ProtocolError, match="invalid hello"):
        decode_hello(payload)


@settings(max_examples=300, deadline=None)
@given(payload=st.binary(max_size=60), seed=st.integers(0, 2**32))
def test_random_handshakes_raise_protocol_error(payload: bytes, seed: int) -> None:
    rng = random.Random(seed)
    fields = {"op": rng.choice(["hello", "welcome", "refused", 3]), "protocol": rng.choice([PROTOCOL_VERSION, 0, "1"])}
    for name in ("role", "name", "address", "auth", "scheduler_id", "reason", "max_messages", "x"):
        if rng.random() < 0.6:
            fields[name] = rng.choice(["client", "worker", "peer"]) if rng.random() < 0.5 else random_value(rng)
    for candidate in (payload, msgspec.msgpack.encode(fields), msgspec.msgpack.encode(random_value(rng))):
        for decode in (decode_hello, decode_reply):
            try:
                decode(candidate)
            except ProtocolError as exc:
                assert str(exc).isascii() and str(exc).isprintable()


def test_replies() -> None:
    welcome = Welcome(PROTOCOL_VERSION, "scheduler-1", name="s", max_messages=5000, heartbeat_interval=0.5)
    assert decode_reply(encode_handshake(welcome)) == welcome
    assert decode_reply(encode_handshake(Refused("go away"))) == Refused("go away")
    with pytest.raises(ProtocolError, match="protocol version 2 is not supported"):
        decode_reply(encode_handshake(Welcome(2, "scheduler-1")))
    with pytest.raises(ProtocolError, match="protocol version 9 is not supported"):
        decode_reply(msgspec.msgpack.encode({"op": "welcome", "protocol": 9, "scheduler_id": 5}))
    with pytest.raises(ProtocolError, match="invalid handshake reply"):
        decode_reply(encode_handshake(Hello(PROTOCOL_VERSION, "client", "c")))
