"""Reading stacks: a walk that stops at the thread's anchor gives what a full walk gives."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from types import FrameType

from dsched._stacks import FrameId, StackReader

ME = threading.get_ident()


def full_walk(frame: FrameType | None) -> list[FrameId]:
    stack = []
    while frame is not None:
        code = frame.f_code
        stack.append((code.co_filename, code.co_firstlineno, code.co_name))
        frame = frame.f_back
    return stack[::-1]


def here() -> FrameType:
    return sys._getframe(1)


def leaf_a(reader: StackReader) -> tuple[list[FrameId], list[FrameId]]:
    frame = here()
    return reader.stack(ME, frame), full_walk(frame)


def leaf_b(reader: StackReader) -> tuple[list[FrameId], list[FrameId]]:
    return middle(reader)


def middle(reader: StackReader) -> tuple[list[FrameId], list[FrameId]]:
    frame = here()
    return reader.stack(ME, frame), full_walk(frame)


def long_running(reader: StackReader, rounds: int) -> list[bool]:
    """Samples taken under this frame, leaves changing; whether each used an anchor at the time."""
    anchored = []
    for i in range(rounds):
        anchored.append(ME in reader._anchors)
        got, want = (leaf_a if i % 2 else leaf_b)(reader)
        assert got == want
    return anchored


def test_the_anchor_settles_on_a_lasting_frame_and_stacks_stay_exact() -> None:
    reader = StackReader()
    anchored = long_running(reader, 20)
    assert all(anchored[1:])  # from the second sample on, a walk has an anchor to stop at
    anchor = reader._anchors[ME].frame
    # Settled on a frame still running: this test's own, or one above it.
    assert anchor.f_code.co_name not in ("leaf_a", "leaf_b", "middle", "here")


def test_after_the_anchors_call_returns_the_walk_is_still_exact() -> None:
    reader = StackReader()
    long_running(reader, 5)  # anchored inside long_running, whose frame is gone after this
    for _ in range(5):
        got, want = leaf_a(reader)
        assert got == want


def generator(reader: StackReader) -> Iterator[tuple[list[FrameId], list[FrameId]]]:
    while True:
        frame = here()
        yield reader.stack(ME, frame), full_walk(frame)


def resume_from_one(gen: Iterator[tuple[list[FrameId], list[FrameId]]]) -> tuple[list[FrameId], list[FrameId]]:
    return next(gen)


def resume_from_another(gen: Iterator[tuple[list[FrameId], list[FrameId]]]) -> tuple[list[FrameId], list[FrameId]]:
    return next(gen)


def test_a_generator_resumed_from_other_callers_is_never_an_anchor() -> None:
    reader = StackReader()
    gen = generator(reader)
    for i in range(10):
        got, want = (resume_from_one if i % 2 else resume_from_another)(gen)
        assert got == want
        anchor = reader._anchors.get(ME)
        assert anchor is None or anchor.frame.f_code.co_name != "generator"


def test_threads_no_longer_wanted_lose_their_anchors() -> None:
    reader = StackReader()
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        ident = thread.ident or 0
        for _ in range(3):
            stacks, seen = reader.collect({ident: "parked"}, skip=ME)
            assert [label for label, _ in stacks] == ["parked"] and seen >= 2
            assert stacks[0][1][-1][2] == "wait"  # the thread's target, bootstrap trimmed
            assert stacks[0][1][0][2] == "wait"
        assert set(reader._anchors) == {ident}
        assert reader.collect({}, skip=ME) == ([], 0)
        assert reader._anchors == {}
        reader.collect({ident: "parked"}, skip=ME)
        reader.forget()
        assert reader._anchors == {}
    finally:
        stop.set()
        thread.join()
