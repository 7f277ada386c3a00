"""Coverage-guided fuzzing of the frame decoders and the handshake with atheris.

Not part of the test run (pytest collects only ``test_*.py``): run it by hand,
for as long as you like, after ``pip install atheris`` (the ``fuzz`` extra)::

    python tests/fuzz/atheris_protocol.py -runs=1000000
    python tests/fuzz/atheris_protocol.py --seed-corpus corpus/   # valid frames to start from
    python tests/fuzz/atheris_protocol.py -max_total_time=600 corpus/

The first input byte picks what is fed the rest: one of the five frame
decoders, or the handshake (``decode_hello`` + ``check_hello``, and
``decode_reply``).  Every input must decode or raise ``ProtocolError``; anything
else is a crash, which atheris reports with the input that caused it (saved as
``crash-*``; replay it with ``python tests/fuzz/atheris_protocol.py crash-...``).
dsched's Python code is instrumented for coverage; msgspec's C decoder is not,
so atheris steers by the Python paths (error handling, validation hooks).
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from dsched import _protocol as p

CHANNELS = [p.CLIENT_TO_SCHEDULER, p.SCHEDULER_TO_CLIENT, p.WORKER_TO_SCHEDULER, p.SCHEDULER_TO_WORKER, p.PEER]
DECODERS = [p.FrameDecoder(channel) for channel in CHANNELS]
ENCODERS = [p.FrameEncoder(channel, max_messages=10**9) for channel in CHANNELS]


def one_input(data: bytes) -> None:
    if not data:
        return
    which, payload = data[0] % (len(CHANNELS) + 1), data[1:]
    if which == len(CHANNELS):
        try:
            hello = p.decode_hello(payload)
        except p.ProtocolError:
            pass
        else:
            refusal = p.check_hello(hello, roles=("client", "worker"), auth="s3cret")
            assert refusal is None or isinstance(refusal, p.Refused)
        try:
            p.decode_reply(payload)
        except p.ProtocolError:
            pass
        return
    try:
        frame = DECODERS[which].decode_frame(payload)
    except p.ProtocolError as exc:
        assert str(exc).isascii()
        return
    ENCODERS[which].encode(frame.messages)  # whatever decodes can be sent on


def write_seed_corpus(directory: str) -> None:
    """Valid frames of every message of every direction, and handshakes, one file each."""
    import pathlib

    sys.path.insert(0, str(pathlib.Path(__file__).parent.parent))  # tests/, for test_protocol's generator
    import random

    from test_protocol import random_instance, union_members

    out = pathlib.Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(1)
    for i, channel in enumerate(CHANNELS):
        for cls in union_members(channel):
            frame = ENCODERS[i].encode([random_instance(rng, cls)])
            (out / f"{i}-{cls.__name__}").write_bytes(bytes([i]) + frame)
    hello = p.encode_handshake(p.Hello(p.PROTOCOL_VERSION, "client", "c", "tcp://h:1", "s3cret"))
    (out / "hello").write_bytes(bytes([len(CHANNELS)]) + hello)


def main() -> None:
    if sys.argv[1:2] == ["--seed-corpus"]:
        write_seed_corpus(sys.argv[2])
        return
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
