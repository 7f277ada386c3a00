"""The worker's spillable data store, thresholds and memory monitor, unit by unit.

The end-to-end proofs (a cluster whose results outgrow its memory, a worker
paused and resumed) are in ``test_worker_memory_cluster.py``.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import weakref
from pathlib import Path

import pytest

from dsched._worker_memory import MemoryMonitor, MemoryPolicy, make_store, parse_fraction
from dsched._worker_spill import SpillableStore


def sized(n: int) -> bytes:
    return b"x" * n


def measure(value: object) -> int:
    return len(value) if isinstance(value, bytes) else 8


def store_at(tmp_path: Path, target: int = 250) -> SpillableStore:
    return SpillableStore(str(tmp_path / "spill"), target, measure=measure)


def files(store: SpillableStore) -> list[str]:
    return sorted(os.listdir(store.directory))


# -- the store -----------------------------------------------------------------------


def test_values_stay_in_memory_under_target(tmp_path: Path) -> None:
    s = store_at(tmp_path)
    s["a"] = sized(100)
    s["b"] = sized(100)
    assert s.memory_bytes == 200 and s.spilled_bytes == 0
    assert files(s) == [] and not s.is_spilled("a")
    assert dict(s.items()) == {"a": sized(100), "b": sized(100)}


def test_least_recently_used_values_spill_first(tmp_path: Path) -> None:
    s = store_at(tmp_path)
    s["a"] = sized(100)
    s["b"] = sized(100)
    assert s["a"] == sized(100)  # "a" is now more recent than "b"
    s["c"] = sized(100)  # 300 > 250: one must go, the least recently used
    assert s.is_spilled("b") and not s.is_spilled("a") and not s.is_spilled("c")
    assert s.memory_bytes == 200 and s.spilled_bytes == 100
    assert len(files(s)) == 1 and s.disk_bytes > 100  # pickled bytes include a header
    s["d"] = sized(100)
    assert s.is_spilled("a")  # then "a", older than "c"
    assert (s.memory_bytes, s.spilled_bytes, s.n_spilled) == (200, 200, 2)
    assert len(s) == 4 and sorted(s) == ["a", "b", "c", "d"]


def test_reading_a_spilled_value_loads_it_back_as_most_recent(tmp_path: Path) -> None:
    s = store_at(tmp_path)
    for key in "abc":
        s[key] = sized(100)
    assert s.is_spilled("a")
    assert s["a"] == sized(100)
    assert not s.is_spilled("a") and s.is_spilled("b")  # "b" made room for it
    assert s.n_unspilled == 1 and s.n_spilled == 2
    assert s.memory_bytes == 200 and s.spilled_bytes == 100
    assert len(files(s)) == 1  # the file of "a" is gone, "b" has one
    assert "a" in s and "b" in s and "z" not in s
    with pytest.raises(KeyError):
        s["z"]


def test_deleting_removes_values_and_their_files(tmp_path: Path) -> None:
    s = store_at(tmp_path)
    for key in "abcd":
        s[key] = sized(100)
    assert len(files(s)) == 2
    del s["a"]  # spilled
    del s["d"]  # in memory
    assert len(files(s)) == 1 and s.spilled_bytes == 100 and s.memory_bytes == 100
    s.pop("b")
    assert files(s) == [] and s.spilled_bytes == 0 and s.disk_bytes == 0
    with pytest.raises(KeyError):
        del s["a"]
    assert list(s) == ["c"]


def test_pop_returns_values_from_either_tier(tmp_path: Path) -> None:
    s = store_at(tmp_path)
    for key in "abc":
        s[key] = sized(100)
    assert s.is_spilled("a")
    assert s.pop("a") == sized(100)  # read back from its file, which is removed
    assert s.pop("c") == sized(100)
    assert s.pop("zz", None) is None
    with pytest.raises(KeyError):
        s.pop("zz")
    assert list(s) == ["b"] and files(s) == [] and s.n_unspilled == 0
    assert (s.memory_bytes, s.spilled_bytes) == (100, 0)


def test_overwriting_a_spilled_key_replaces_it(tmp_path: Path) -> None:
    s = store_at(tmp_path)
    for key in "abc":
        s[key] = sized(100)
    s["a"] = sized(10)
    assert not s.is_spilled("a") and s["a"] == sized(10)
    assert s.size_of("a") == 10
    assert s.memory_bytes + s.spilled_bytes == 210


def test_a_value_larger_than_target_goes_to_disk_alone(tmp_path: Path) -> None:
    s = store_at(tmp_path)
    s["small"] = sized(10)
    s["huge"] = sized(1000)
    assert s.is_spilled("small") and s.is_spilled("huge")
    assert s.memory_bytes == 0
    assert s["huge"] == sized(1000)  # read for the reader, but left on disk
    assert s.is_spilled("huge") and s.n_unspilled == 0 and s.n_read_through == 1 and s.n_spilled == 2


class Unpicklable:
    def __reduce__(self) -> object:
        raise TypeError("not today")


def test_values_that_do_not_pickle_stay_in_memory(tmp_path: Path) -> None:
    s = SpillableStore(str(tmp_path / "spill"), 20, measure=lambda v: 16)
    lock = threading.Lock()  # does not pickle either
    s["lock"] = lock
    s["u"] = Unpicklable()
    s["v"] = 1
    assert s["lock"] is lock and isinstance(s["u"], Unpicklable)
    assert not s.is_spilled("lock") and not s.is_spilled("u")
    assert s.is_spilled("v")  # the one that pickles made room
    assert s.n_unpicklable == 2 and s.memory_bytes == 32 and s.spilled_bytes == 16
    assert s.evict() == -1  # nothing left that can go
    assert s["v"] == 1


def test_a_failed_disk_write_keeps_the_value_and_logs_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    s = store_at(tmp_path)
    os.rmdir(s.directory)  # every write now fails
    with caplog.at_level(logging.ERROR, logger="dsched.worker.memory"):
        for key in "abcde":
            s[key] = sized(100)
    assert [s[key] for key in "abcde"] == [sized(100)] * 5
    assert s.memory_bytes == 500 and s.spilled_bytes == 0 and s.n_spilled == 0
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "spilling to" in errors[0].getMessage()
    assert s.evict() == -1  # no retry before DISK_RETRY_SECONDS


def test_evict_spills_one_value_even_under_target(tmp_path: Path) -> None:
    s = store_at(tmp_path, target=0)  # never by size
    for key in "abc":
        s[key] = sized(100)
    assert s.spilled_bytes == 0
    assert s.evict() == 100 and s.is_spilled("a")
    assert s.evict() == 100 and s.evict() == 100
    assert s.evict() == -1
    assert s.memory_bytes == 0 and s.spilled_bytes == 300
    assert [s[key] for key in "abc"] == [sized(100)] * 3


def test_close_removes_the_directory(tmp_path: Path) -> None:
    s = store_at(tmp_path)
    for key in "abcd":
        s[key] = sized(100)
    assert os.path.isdir(s.directory)
    s.close()
    assert not os.path.exists(s.directory)
    assert len(s) == 0 and s.memory_bytes == 0 and s.spilled_bytes == 0


def test_concurrent_writers_and_readers_lose_nothing(tmp_path: Path) -> None:
    s = store_at(tmp_path, target=2000)
    errors: list[BaseException] = []

    def work(prefix: str) -> None:
        try:
            for i in range(200):
                s[f"{prefix}-{i}"] = sized(100)
                assert s[f"{prefix}-{i // 2}"] == sized(100)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(f"t{n}",)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(s) == 800 and s.memory_bytes <= 2000
    assert s.memory_bytes + s.spilled_bytes == 80_000
    assert len(files(s)) == sum(1 for key in s if s.is_spilled(key))


def test_lock_free_reads_race_spills_and_always_see_the_value(tmp_path: Path) -> None:
    s = store_at(tmp_path, target=1000)
    for i in range(10):
        s[f"r-{i}"] = bytes([i]) * 100
    stop = threading.Event()
    wrong: list[object] = []

    def read() -> None:
        while not stop.is_set():
            for i in range(10):
                value = s[f"r-{i}"]
                if value != bytes([i]) * 100:
                    wrong.append(value)

    readers = [threading.Thread(target=read) for _ in range(3)]
    for t in readers:
        t.start()
    try:
        for i in range(100):  # every write spills something, often the values being read
            s[f"w-{i}"] = sized(100)
    finally:
        stop.set()
        for t in readers:
            t.join()
    assert wrong == []
    assert s.n_spilled > 0 and s.memory_bytes <= 1000
    assert s.memory_bytes + s.spilled_bytes == 100 * 110


# -- thresholds and the store they imply --------------------------------------------------


def test_parse_fraction() -> None:
    assert parse_fraction("0.7", "spill") == 0.7
    assert parse_fraction(0.5, "target") == 0.5
    for off in (None, False, "false", "False", "none", "off"):
        assert parse_fraction(off, "pause") is None
    assert parse_fraction(1, "pause") == 1.0
    for bad in ("lots", 0, -0.5, "0", 1.5, True):
        with pytest.raises(ValueError, match="pause"):
            parse_fraction(bad, "pause")


def test_make_store(tmp_path: Path) -> None:
    assert type(make_store(MemoryPolicy(0), None)) is dict  # no limit: nothing to manage
    assert type(make_store(MemoryPolicy(10**9, target=None, spill=None), None)) is dict
    store = make_store(MemoryPolicy(1000, target=0.5), str(tmp_path / "local"))
    assert isinstance(store, SpillableStore)
    assert store.target == 500
    assert os.path.dirname(store.directory) == str(tmp_path / "local")
    store.close()
    assert os.listdir(tmp_path / "local") == []


# -- the monitor -------------------------------------------------------------------------


class Probe:
    def __init__(self, value: int) -> None:
        self.value = value

    def __call__(self) -> int:
        return self.value


def test_monitor_pauses_and_resumes_on_changes_only(tmp_path: Path) -> None:
    probe = Probe(100)
    changes: list[bool] = []
    monitor = MemoryMonitor(MemoryPolicy(1000), {}, changes.append, probe)
    monitor.check()
    assert changes == [] and not monitor.paused
    probe.value = 801
    monitor.check()
    monitor.check()
    assert changes == [True] and monitor.paused and monitor.n_pauses == 1
    probe.value = 800
    monitor.check()
    assert changes == [True, False] and not monitor.paused


def test_monitor_without_pause_threshold_never_pauses() -> None:
    changes: list[bool] = []
    monitor = MemoryMonitor(MemoryPolicy(1000, pause=None), {}, changes.append, Probe(990))
    monitor.check()
    assert changes == []


def test_monitor_logs_terminate_once_per_crossing(caplog: pytest.LogCaptureFixture) -> None:
    probe = Probe(960)
    monitor = MemoryMonitor(MemoryPolicy(1000), {}, lambda paused: None, probe)
    with caplog.at_level(logging.ERROR, logger="dsched.worker.memory"):
        monitor.check()
        monitor.check()
        probe.value = 900
        monitor.check()
        probe.value = 999
        monitor.check()
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2 and "terminate threshold" in errors[0].getMessage()


def test_monitor_spills_by_process_memory_until_under_target(tmp_path: Path) -> None:
    store = SpillableStore(str(tmp_path / "spill"), 0, measure=measure)
    for key in "abcde":
        store[key] = sized(100)
    def probe() -> int:  # a process whose memory drops by 100 for every value spilled
        return 400 + store.memory_bytes

    monitor = MemoryMonitor(MemoryPolicy(1000, target=0.6, spill=0.7), store, lambda paused: None, probe)
    monitor.check()
    assert monitor.memory == 900 and monitor.needs_spill()
    assert monitor.spill() == 3  # 900 -> 600, the target
    assert [key for key in "abcde" if store.is_spilled(key)] == ["a", "b", "c"]
    monitor.check()
    assert not monitor.needs_spill()


def test_monitor_stops_spilling_when_nothing_is_left(tmp_path: Path) -> None:
    store = SpillableStore(str(tmp_path / "spill"), 0, measure=measure)
    store["a"] = sized(100)
    monitor = MemoryMonitor(MemoryPolicy(1000), store, lambda paused: None, Probe(950))  # memory not ours
    monitor.check()
    assert monitor.spill() == 1
    assert monitor.spill() == 0
    assert not monitor.needs_spill()


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector frees it


def test_a_paused_monitor_collects_cyclic_garbage() -> None:
    monitor = MemoryMonitor(MemoryPolicy(1000), {}, lambda paused: None, Probe(900))
    monitor.check()
    assert monitor.paused
    enabled = gc.isenabled()
    gc.disable()
    try:
        node = Node()
        ref = weakref.ref(node)
        del node
        assert ref() is not None
        monitor.check()  # still paused: collects (and not again within GC_MIN_INTERVAL)
        assert ref() is None
        node = Node()
        ref = weakref.ref(node)
        del node
        monitor.check()
        assert ref() is not None
    finally:
        if enabled:
            gc.enable()


def test_local_cluster_workers_get_the_thresholds_as_options() -> None:
    from dsched._cluster_backends import WorkerOptions

    options = WorkerOptions(
        nthreads=1, memory_limit=10**9, resources={}, host="127.0.0.1",
        local_directory="/scratch", memory_target_fraction=0.5, memory_pause_fraction=None,
    )
    args = options.memory_args()
    assert args == [
        "--local-directory", "/scratch",
        "--memory-target", "0.5",
        "--memory-spill", "0.7",
        "--memory-pause", "false",
        "--memory-terminate", "0.95",
    ]
    # What the worker's command line makes of them again.
    assert [parse_fraction(v, o) for o, v in zip(args[2::2], args[3::2])] == [0.5, 0.7, None, 0.95]
