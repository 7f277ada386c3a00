"""EventRecorder writes a bounded, always-readable file; RecordingReader rejects anything else clearly."""

from __future__ import annotations

import logging
import struct
from pathlib import Path

import msgspec
import pytest

import sched_core as sc
from _replay_scenarios import failure_scenario, run_spec
from dsched._recording import (
    FORMAT_VERSION,
    MAGIC,
    BatchRecord,
    EndRecord,
    EventRecorder,
    Header,
    RecordingError,
    RecordingReader,
    _frame,
)
from dsched._recording_codec import DroppedPayload, decisions_digest, decode_events


def _records(path: Path) -> tuple[Header, list[BatchRecord], EndRecord | None, bool]:
    with RecordingReader(path) as reader:
        batches = list(reader)
        return reader.header, batches, reader.end, reader.truncated


def _big_graph(n: int, size: int) -> sc.GraphSubmitted:
    return sc.GraphSubmitted("c", [sc.TaskSpec(f"t-{i}", [], (0, b"x" * size + str(i).encode())) for i in range(n)], [])


def test_header_batches_and_end_describe_the_run(tmp_path: Path) -> None:
    path = tmp_path / "run.rec"
    cluster = failure_scenario(path)
    header, batches, end, truncated = _records(path)
    assert path.read_bytes().startswith(MAGIC)
    assert header.format == FORMAT_VERSION
    assert header.scheduler_id == "scheduler-test"
    assert header.compiled is sc.COMPILED
    assert (header.allowed_failures, header.max_queue_depth, header.bandwidth) == (
        1,
        cluster.state.max_queue_depth,
        cluster.state.bandwidth,
    )
    assert header.payloads and header.decisions
    assert [b.number for b in batches] == list(range(1, cluster.n_batches + 1))
    assert sum(b.n_instructions for b in batches) == len(cluster.history)
    assert end is not None and end.reason == "closed" and end.batches == len(batches)
    assert not truncated
    assert sorted(b.time for b in batches) == [b.time for b in batches]
    assert all(b.error is None for b in batches)


def test_the_recorded_events_are_the_events_fed(tmp_path: Path) -> None:
    path = tmp_path / "run.rec"
    recorder = EventRecorder(path)
    state = sc.SchedulerState()
    recorder.start(state)
    fed: list[sc.SchedulerEvent] = [sc.WorkerAdded("w", 2, 1000, {"GPU": 1.0}, "gpu-worker"), sc.ClientAdded("c")]
    recorder.write_batch(fed, state.handle_events(fed))
    task = sc.TaskSpec("k", [], run_spec(7, "args"), priority=3, workers=["gpu-worker"])
    graph: list[sc.SchedulerEvent] = [sc.GraphSubmitted("c", [task], ["k"])]
    out = state.handle_events(graph)
    recorder.write_batch(graph, out)
    recorder.close()
    _, batches, _, _ = _records(path)
    first = decode_events(batches[0].events)
    assert isinstance(first[0], sc.WorkerAdded)
    assert (first[0].address, first[0].nthreads, first[0].memory_limit, first[0].resources, first[0].name) == (
        "w", 2, 1000, {"GPU": 1.0}, "gpu-worker"
    )
    [submitted] = decode_events(batches[1].events)
    assert isinstance(submitted, sc.GraphSubmitted)
    assert submitted.tasks[0].run_spec == run_spec(7, "args")
    assert submitted.tasks[0].workers == ["gpu-worker"] and submitted.tasks[0].priority == 3
    assert batches[1].digest == decisions_digest(out)
    assert batches[1].decisions == [["ComputeTask", "w", "k", 1]]


def test_a_recorder_starts_once(tmp_path: Path) -> None:
    # (A recorder started on a state that has run takes a snapshot: test_recording_mid_run.py.)
    recorder = EventRecorder(tmp_path / "twice.rec")
    recorder.start(sc.SchedulerState())
    with pytest.raises(RuntimeError, match="started already"):
        recorder.start(sc.SchedulerState())
    recorder.close()


def test_a_too_small_bound_is_refused() -> None:
    with pytest.raises(ValueError, match="at least"):
        EventRecorder("unused.rec", max_bytes=100)


def test_the_size_bound_stops_the_recording_and_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "bounded.rec"
    recorder = EventRecorder(path, max_bytes=20_000)
    state = sc.SchedulerState()
    recorder.start(state)
    caplog.set_level(logging.WARNING, logger="dsched.recording")
    recorded = 0
    for i in range(40):
        events: list[sc.SchedulerEvent] = [sc.ClientAdded(f"client-{i}"), sc.ClientWantsKeys(f"client-{i}", ["k" * 200] * 5)]
        recorder.write_batch(events, state.handle_events(events))
        if recorder.active:
            recorded += 1
    assert not recorder.active and recorder.stopped_reason == "size-limit"
    assert 0 < recorded < 40
    assert path.stat().st_size <= 20_000
    assert recorder.bytes_written == path.stat().st_size
    _, batches, end, truncated = _records(path)
    assert len(batches) == recorded == recorder.batches
    assert end is not None and end.reason == "size-limit" and "max_bytes=20,000" in end.message
    assert not truncated
    assert any("stopped after" in r.message and r.levelno == logging.WARNING for r in caplog.records)
    recorder.close()  # already ended: nothing more is written
    assert path.stat().st_size == recorder.bytes_written


def test_payloads_count_against_the_bound_unless_dropped(tmp_path: Path) -> None:
    sizes = {}
    digests = {}
    for keep in (True, False):
        path = tmp_path / f"payloads-{keep}.rec"
        recorder = EventRecorder(path, keep_payloads=keep)
        state = sc.SchedulerState()
        recorder.start(state)
        fed: list[list[sc.SchedulerEvent]] = [[sc.WorkerAdded("w", 1)], [_big_graph(50, 10_000)]]
        for events in fed:
            recorder.write_batch(events, state.handle_events(events))
        recorder.close()
        sizes[keep] = path.stat().st_size
        header, batches, _, _ = _records(path)
        assert header.payloads is keep
        digests[keep] = [b.digest for b in batches]
    assert sizes[True] > 500_000 > 20_000 > sizes[False]
    assert digests[True] == digests[False]


def test_dropped_payloads_are_recorded_by_length_and_digest(tmp_path: Path) -> None:
    path = tmp_path / "dropped.rec"
    recorder = EventRecorder(path, keep_payloads=False)
    state = sc.SchedulerState()
    recorder.start(state)
    events: list[sc.SchedulerEvent] = [
        sc.WorkerAdded("w", 1),
        sc.GraphSubmitted("c", [sc.TaskSpec("k", [], run_spec(1, "a"))], ["k"]),
    ]
    out = state.handle_events(events)
    run_id = out[0].run_id  # type: ignore[attr-defined]
    erred: list[sc.SchedulerEvent] = [
        sc.TaskErred("w", "k", b"exception bytes", "Traceback (most recent call last): ...", run_id)
    ]
    recorder.write_batch(events, out)
    recorder.write_batch(erred, state.handle_events(erred))
    recorder.close()
    _, batches, _, _ = _records(path)
    [_, submitted] = decode_events(batches[0].events)
    assert isinstance(submitted, sc.GraphSubmitted)
    assert submitted.tasks[0].run_spec == (1, DroppedPayload.of(run_spec(1, "a")[1]))
    [task_erred] = decode_events(batches[1].events)
    assert isinstance(task_erred, sc.TaskErred)
    assert task_erred.exception == DroppedPayload.of(b"exception bytes")
    assert task_erred.traceback == DroppedPayload.of("Traceback (most recent call last): ...")


def test_a_value_that_cannot_be_recorded_stops_the_recording_without_raising(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "odd.rec"
    recorder = EventRecorder(path)
    state = sc.SchedulerState()
    recorder.start(state)
    events: list[sc.SchedulerEvent] = [sc.GraphSubmitted("c", [sc.TaskSpec("k", [], object())], ["k"])]
    caplog.set_level(logging.ERROR, logger="dsched.recording")
    recorder.write_batch(events, state.handle_events(events))
    assert recorder.stopped_reason == "error" and not recorder.active
    _, batches, end, _ = _records(path)
    assert batches == []
    assert end is not None and end.reason == "error" and "object" in end.message
    assert any(r.levelno == logging.ERROR for r in caplog.records)


def test_a_batch_fed_to_the_core_but_not_recorded_ends_the_recording(tmp_path: Path) -> None:
    path = tmp_path / "gap.rec"
    recorder = EventRecorder(path)
    state = sc.SchedulerState()
    recorder.start(state)
    recorder.write_batch([sc.Tick()], state.handle_events([sc.Tick()]))
    state.handle_events([sc.WorkerAdded("w", 1)])  # not recorded
    recorder.write_batch([sc.Tick()], state.handle_events([sc.Tick()]))
    _, batches, end, _ = _records(path)
    assert len(batches) == 1
    assert end is not None and end.reason == "error" and "batch 3" in end.message


def test_a_batch_on_which_the_core_raised_is_recorded_as_such(tmp_path: Path) -> None:
    path = tmp_path / "raised.rec"
    with EventRecorder(path) as recorder:
        state = sc.SchedulerState()
        recorder.start(state)
        state.handle_events([sc.Tick()])
        recorder.write_batch([sc.Tick()], None, RuntimeError("core bug"))
    _, [batch], end, _ = _records(path)
    assert batch.error == "RuntimeError: core bug"
    assert batch.n_instructions == 0
    assert end is not None and end.reason == "closed"


# -- reading malformed files ---------------------------------------------------------


def _write(path: Path, *parts: bytes) -> Path:
    path.write_bytes(b"".join(parts))
    return path


def _header(**changes: object) -> Header:
    fields: dict[str, object] = dict(
        format=FORMAT_VERSION, dsched_version="0.1.0", compiled=False, python="3.11", scheduler_id="s",
        started=0.0, allowed_failures=3, max_queue_depth=64, bandwidth=1e8, payloads=True, decisions=True,
        max_bytes=1 << 20,
    )
    fields.update(changes)
    return Header(**fields)  # type: ignore[arg-type]


def _batch(number: int) -> BatchRecord:
    return BatchRecord(number=number, time=0.0, events=[["Tick"]], n_instructions=0, digest=decisions_digest([]))


@pytest.mark.parametrize(
    "content, problem",
    [
        (b"", "not a dsched recording"),
        (b"PK\x03\x04 a zip file, say", "not a dsched recording"),
        (MAGIC, "has no header"),
        (MAGIC + _frame(_batch(1)), "starts with a BatchRecord, not a header"),
        (MAGIC + _frame(_header(format=FORMAT_VERSION + 1)), f"this dsched reads format {FORMAT_VERSION}"),
        (MAGIC + struct.pack("<I", 3) + b"\xc1\xc1\xc1", "a record does not decode"),
        (MAGIC + _frame(_header()) + _frame(_header()), "a Header among the batches"),
        (MAGIC + _frame(_header()) + _frame(_batch(1)) + _frame(_batch(3)), "batch 3 where batch 2 should be"),
        (MAGIC + _frame(_header()) + struct.pack("<I", 4) + msgspec.msgpack.encode({"x": 1})[:4], "does not decode"),
    ],
)
def test_malformed_recordings_are_refused_clearly(tmp_path: Path, content: bytes, problem: str) -> None:
    path = _write(tmp_path / "bad.rec", content)
    with pytest.raises(RecordingError, match=problem) as caught:
        with RecordingReader(path) as reader:
            list(reader)
    assert str(path) in str(caught.value) and "at byte" in str(caught.value)


def test_a_missing_file_is_a_recording_error(tmp_path: Path) -> None:
    with pytest.raises(RecordingError, match="cannot open"):
        RecordingReader(tmp_path / "nowhere.rec")


def test_a_recording_cut_short_reads_up_to_its_last_whole_batch(tmp_path: Path) -> None:
    whole = MAGIC + _frame(_header()) + _frame(_batch(1)) + _frame(_batch(2))
    for cut in (0, 2, 7):  # bytes of a third batch that made it to the file
        path = _write(tmp_path / f"cut-{cut}.rec", whole, _frame(_batch(3))[:cut])
        _, batches, end, truncated = _records(path)
        assert [b.number for b in batches] == [1, 2]
        assert end is None
        assert truncated is (cut != 0)
