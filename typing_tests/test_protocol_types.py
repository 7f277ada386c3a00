"""Static checks of the wire protocol's types (run by mypy, never executed).

The ``assert_type`` lines pin what decoding gives a caller; the ``type: ignore``
lines pin what the protocol refuses, and ``--warn-unused-ignores`` fails if a
refusal stops being one.
"""

from typing import assert_type

from msgspec import Raw

from dsched import _protocol as p


def decoding() -> None:
    payload = b""
    assert_type(p.FrameDecoder(p.CLIENT_TO_SCHEDULER).decode(payload), list[p.ClientToScheduler])
    assert_type(p.FrameDecoder(p.SCHEDULER_TO_CLIENT).decode(payload), list[p.SchedulerToClient])
    assert_type(p.FrameDecoder(p.WORKER_TO_SCHEDULER).decode(payload), list[p.WorkerToScheduler])
    assert_type(p.FrameDecoder(p.PEER, max_messages=10).decode(bytearray()), list[p.PeerMessage])
    frame = p.FrameDecoder(p.SCHEDULER_TO_WORKER).decode_frame(payload)
    assert_type(frame, p.Frame[p.SchedulerToWorker])
    assert_type(frame.batch, int)
    for message in frame.messages:
        if isinstance(message, p.Compute):
            assert_type(message.args, bytes | Raw)
            assert_type(message.function, int)
            assert_type(message.who_has, dict[str, list[str]])
            assert_type(message.resources, dict[str, float] | None)
            assert_type(p.payload_view(message.args), memoryview)
            assert_type(p.payload_bytes(message.args), bytes)
        elif isinstance(message, p.StealRequest):
            assert_type(message.run_id, int)
    assert_type(p.decode_hello(payload), p.Hello)
    assert_type(p.decode_reply(payload), p.Welcome | p.Refused)


def encoding() -> None:
    encoder = p.FrameEncoder(p.WORKER_TO_SCHEDULER)
    finished = [p.TaskFinished("x", 8, 0.1, 3)]  # a list of one message type is accepted
    assert_type(encoder.encode(finished), bytes)
    assert_type(encoder.encode_frames(finished, batch=-1), list[bytes])
    assert_type(encoder.encode_into(finished, bytearray(), offset=4), int)
    # A received payload (Raw) can be forwarded as it is.
    erred = p.TaskErred("x", Raw(b"\xc4\x00"), "traceback", 3)
    p.FrameEncoder(p.SCHEDULER_TO_CLIENT).encode([p.KeyErred("x", "x", erred.exception, erred.traceback)])
    assert_type(p.check_hello(p.Hello(p.PROTOCOL_VERSION, "worker", "w"), roles={"worker"}), p.Refused | None)


def refusals() -> None:
    # A message of another direction does not go into this channel's frames.
    p.FrameEncoder(p.CLIENT_TO_SCHEDULER).encode([p.TaskFinished("x", 8, 0.1, 3)])  # type: ignore[list-item]
    # Payloads are bytes, never str.
    p.Compute("x", 0, "args", 0, 1)  # type: ignore[arg-type]
    # Roles are a closed set.
    p.Hello(p.PROTOCOL_VERSION, "admin", "x")  # type: ignore[arg-type]
    # Messages are frozen.
    message = p.FreeKeys(["x"])
    message.keys = []  # type: ignore[misc]
    # A decoder is for one channel: its messages are not another channel's.
    worker_messages: list[p.WorkerToScheduler] = p.FrameDecoder(p.PEER).decode(b"")  # type: ignore[assignment]
