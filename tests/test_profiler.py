"""dsched._profiler: call trees, their JSON form, and the sampling thread."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import dsched._profiler as profiler
import dsched._stacks as stacks
from dsched._loop_thread import LoopThread
from dsched._profiler import (
    MAX_DEPTH,
    CallTree,
    FrameId,
    Sampler,
    loop_thread_sampler,
)

PROFILER_FILE = profiler.__file__


def spin_busy(stop: list[object]) -> int:
    """A pure-Python loop until ``stop`` is non-empty (no call, so it is always the leaf)."""
    n = 0
    while not stop:
        n += 1
    return n


def spin_other(stop: list[object]) -> int:
    n = 0
    while not stop:
        n += 1
    return n


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll ``condition``: tests count samples, not seconds, so a loaded machine only slows them."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def walk(tree_json: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every node of a JSON tree below the root."""
    todo = list(tree_json["children"])
    while todo:
        node = todo.pop()
        yield node
        todo.extend(node["children"])


def count_of(tree_json: dict[str, Any], name: str) -> int:
    return sum(node["count"] for node in walk(tree_json) if node["name"] == name)


def f(name: str, line: int = 1, filename: str = "app.py") -> FrameId:
    return (filename, line, name)


A, B, C, D = f("a"), f("b", 10), f("c", 20), f("d", 30)


def start_thread(target: Callable[..., object], *args: object) -> threading.Thread:
    thread = threading.Thread(target=target, args=args, daemon=True)
    thread.start()
    return thread


def ident(thread: threading.Thread) -> int:
    assert thread.ident is not None
    return thread.ident


# --- sampling real threads --------------------------------------------------------------


def test_busy_threads_land_under_their_labels_with_plausible_shares() -> None:
    stop_busy: list[object] = []
    stop_other: list[object] = []
    busy = start_thread(spin_busy, stop_busy)
    other = start_thread(spin_other, stop_other)
    labels = {ident(busy): "busy", ident(other): "other"}
    began = time.monotonic()
    with Sampler(lambda: labels, interval=0.005) as sampler:
        # ~0.25 s of both, then ~0.25 s of spin_busy alone (at least 10 samples each).
        wait_for(lambda: sampler.overhead().samples >= 10 and time.monotonic() - began > 0.25,
                 "samples of both threads")
        stop_other.append(True)
        other.join()
        alone = sampler.overhead().samples + 10
        wait_for(lambda: sampler.overhead().samples >= alone and time.monotonic() - began > 0.5,
                 "samples of spin_busy alone")
        stop_busy.append(True)
        busy.join()
    busy_tree = sampler.tree(label_prefix="busy").to_json()
    other_tree = sampler.tree(label_prefix="other").to_json()

    assert busy_tree["count"] >= 20
    share = count_of(busy_tree, "spin_busy") / busy_tree["count"]
    assert 0.5 <= share <= 1.0
    assert count_of(busy_tree, "spin_other") == 0
    assert 0 < count_of(other_tree, "spin_other") < busy_tree["count"]
    assert count_of(other_tree, "spin_busy") == 0
    # Trees start at the thread's target: the bootstrap frames were trimmed.
    assert max(busy_tree["children"], key=lambda n: n["count"])["name"] == "spin_busy"
    everything = sampler.tree().to_json()
    assert everything["count"] == busy_tree["count"] + other_tree["count"]
    for node in walk(everything):
        assert node["filename"] not in (PROFILER_FILE, stacks.__file__)
        assert node["name"] not in ("_bootstrap", "_bootstrap_inner")
    stats = sampler.overhead()
    assert stats.samples >= busy_tree["count"] and stats.stacks == everything["count"]
    assert stats.errors == 0 and 0 < stats.busy_seconds < stats.running_seconds


def test_one_sample_of_a_parked_thread_shows_its_whole_stack() -> None:
    release = threading.Event()

    def parked() -> None:
        release.wait()

    thread = start_thread(parked)
    try:
        sampler = Sampler(lambda: {ident(thread): "parked"})
        assert sampler.sample_once() == 1
    finally:
        release.set()
        thread.join()
    tree = sampler.tree().to_json()
    (top,) = tree["children"]
    assert (top["name"], top["filename"]) == ("parked", __file__)
    assert top["line"] == parked.__code__.co_firstlineno  # the function, not the current line
    assert [n["name"] for n in top["children"]] == ["wait"]  # Event.wait, in threading.py


def test_threads_labelled_none_or_unknown_are_skipped_and_the_caller_never_sampled() -> None:
    release = threading.Event()
    idle = start_thread(release.wait)
    skipped = start_thread(release.wait)
    labels: dict[int, str | None] = {
        ident(idle): "",  # idle, but still sampled
        ident(skipped): None,
        threading.get_ident(): "me",  # the thread taking the sample
        123456789: "no such thread",
    }
    try:
        sampler = Sampler(lambda: labels)
        assert sampler.sample_once() == 1
    finally:
        release.set()
    assert sampler.labels() == [""]
    assert sampler.tree(label_prefix="").count == 1


def test_a_sampled_thread_that_exits_leaves_the_sampler_working() -> None:
    stop_short: list[object] = []
    stop_long: list[object] = []
    short = start_thread(spin_other, stop_short)
    long = start_thread(spin_busy, stop_long)
    labels = {ident(short): "short", ident(long): "long"}
    with Sampler(lambda: labels, interval=0.005) as sampler:
        wait_for(lambda: sampler.tree(label_prefix="short").count >= 3, "samples of short")
        stop_short.append(True)
        short.join()
        before = sampler.tree(label_prefix="long").count
        wait_for(lambda: sampler.tree(label_prefix="long").count >= before + 5,
                 "samples of long after short exited")
        stop_long.append(True)
        long.join()
        assert sampler.running
    assert sampler.overhead().errors == 0
    assert count_of(sampler.tree(label_prefix="long").to_json(), "spin_busy") >= 5


def test_stop_joins_the_thread_and_is_idempotent() -> None:
    sampler = Sampler(lambda: {}, interval=0.001)
    sampler.start()
    with pytest.raises(RuntimeError, match="already running"):
        sampler.start()
    assert sampler.running
    sampler.stop()
    assert not sampler.running
    sampler.stop()
    assert not any(t.name == sampler.name for t in threading.enumerate())
    assert sampler.overhead().running_seconds > 0


def test_a_failing_label_callable_is_counted_and_sampling_goes_on() -> None:
    calls = 0

    def flaky() -> dict[int, str | None]:
        nonlocal calls
        calls += 1
        if calls % 2:
            raise KeyError("boom")
        return {}

    deadline = time.monotonic() + 5.0
    with Sampler(flaky, interval=0.001) as sampler:
        while calls < 6 and time.monotonic() < deadline:
            time.sleep(0.005)
    stats = sampler.overhead()
    assert stats.errors >= 3 and stats.samples >= 2
    assert stats.last_error == "KeyError: 'boom'"


def test_the_loop_thread_helper_samples_an_event_loop() -> None:
    loop = LoopThread("profiled-loop")
    stop: list[object] = []
    try:
        with loop_thread_sampler(ident(loop.thread), label="loop", interval=0.005) as sampler:
            caller = start_thread(loop.call, spin_busy, stop)  # spin_busy runs on the loop
            wait_for(lambda: count_of(sampler.tree().to_json(), "spin_busy") >= 3,
                     "samples of the loop")
            stop.append(True)
            caller.join()
    finally:
        stop.append(True)
        loop.stop()
    assert sampler.labels() == ["loop"]


def test_current_frames_runs_with_the_gc_paused_and_restores_its_state(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = sys._current_frames
    seen: list[bool] = []

    def spy() -> dict[int, Any]:
        seen.append(gc.isenabled())
        return real()

    monkeypatch.setattr(sys, "_current_frames", spy)
    was = gc.isenabled()
    try:
        gc.enable()
        assert threading.get_ident() in stacks._current_frames_gc_paused()
        assert gc.isenabled()
        gc.disable()
        stacks._current_frames_gc_paused()
        assert not gc.isenabled()
    finally:
        (gc.enable if was else gc.disable)()
    assert seen == [False, False]


# The deadlock Dask hit on Python 3.11 (CPython gh-106883), made deterministic: the
# collector is primed to run at the next allocation, which is the frame object that
# sys._current_frames() creates for the parked thread while holding the runtime's
# HEAD_LOCK; the garbage's finalizer tears down a threading.local, which takes
# HEAD_LOCK again.  On 3.11.7, with sys._current_frames() itself, this hangs for
# ever (checked with gdb: local_clear waiting in _PyThread_CurrentFrames's collection).
DEADLOCK_SCRIPT = """
import gc, sys, threading
from dsched._stacks import current_frames as _current_frames

class Finalized:
    def __init__(self): self.me = self  # a cycle: only the collector frees it
    def __del__(self): threading.local().x = 1

release = threading.Lock(); release.acquire()
def parked(): release.acquire()  # its frame object is created only when asked for
thread = threading.Thread(target=parked, daemon=True); thread.start()
gc.collect(); gc.disable()
Finalized()
spare = {}; del spare  # the result dict comes from the free list: no collection before the lock
gc.set_threshold(1)
gc.enable()
frames = _current_frames()
print(thread.ident in frames, gc.isenabled(), flush=True)
release.release()
"""


def test_sampling_survives_a_collection_primed_inside_current_frames(tmp_path: Path) -> None:
    # The child imports the dsched under test (not whatever the working directory holds).
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(PROFILER_FILE))}
    done = subprocess.run(
        [sys.executable, "-c", DEADLOCK_SCRIPT], env=env, cwd=tmp_path, capture_output=True,
        text=True, timeout=60,
    )
    assert (done.returncode, done.stdout) == (0, "True True\n"), done.stderr


# --- time buckets and history -----------------------------------------------------------


def test_samples_on_either_side_of_a_bucket_boundary_are_selected_by_time() -> None:
    sampler = Sampler(lambda: {}, bucket_seconds=1.0)
    sampler.record("x", [A, B], when=1000.2)
    sampler.record("x", [A, B], when=1000.9)
    sampler.record("x", [A, C], when=1001.1)  # the next bucket
    sampler.record("x", [A, D], when=1003.5)
    assert sampler.tree().count == 4
    assert sampler.tree(stop=1000.5).to_json()["children"][0]["children"][0]["name"] == "b"
    assert sampler.tree(stop=1000.5).count == 2
    assert sampler.tree(start=1001.0, stop=1001.0).count == 1
    assert sampler.tree(start=1001.5).count == 2  # the bucket [1001, 1002) overlaps
    assert sampler.tree(start=1002.0).count == 1
    assert sampler.tree(start=1004.0).count == 0
    assert sampler.tree(start=900, stop=999).count == 0


def test_a_clock_stepping_back_files_samples_in_the_open_bucket() -> None:
    sampler = Sampler(lambda: {})
    sampler.record("x", [A], when=50.5)
    sampler.record("x", [B], when=20.0)
    assert sampler.tree(start=50.0, stop=50.9).count == 2


def test_history_keeps_only_the_last_history_seconds() -> None:
    sampler = Sampler(lambda: {}, bucket_seconds=1.0, history_seconds=5.0)
    for second in range(100):
        sampler.record("x", [A], when=float(second))
    assert sampler.tree().count == 5  # buckets 95..99
    assert sampler.tree(stop=94.9).count == 0
    assert len(sampler._history) <= 5


def test_label_prefix_selects_labels() -> None:
    sampler = Sampler(lambda: {})
    sampler.record("inc-abc", [A], when=1.0)
    sampler.record("inc-def", [B], when=1.0)
    sampler.record("sum", [C], when=1.5)
    sampler.record("", [D], when=2.5)
    assert sampler.labels() == ["", "inc-abc", "inc-def", "sum"]
    assert sampler.labels(start=2.0) == [""]
    assert sampler.tree(label_prefix="inc-").count == 2
    assert sampler.tree(label_prefix="inc-d").to_json()["children"][0]["name"] == "b"
    assert sampler.tree(label_prefix="nothing").count == 0
    assert sampler.tree(label_prefix=None).count == sampler.tree(label_prefix="").count == 4


def test_trees_of_a_sampler_respect_its_node_cap() -> None:
    sampler = Sampler(lambda: {}, max_nodes=3)
    for i in range(10):
        sampler.record(f"l{i}", [f(f"fn{i}"), A], when=float(i))
    tree = sampler.tree()
    assert tree.count == 10 and tree.nodes == 3


def test_sampler_arguments_are_checked() -> None:
    with pytest.raises(ValueError):
        Sampler(lambda: {}, interval=0)
    with pytest.raises(ValueError):
        Sampler(lambda: {}, bucket_seconds=2.0, history_seconds=1.0)
    with pytest.raises(ValueError, match="count must be >= 1"):
        Sampler(lambda: {}).record("x", [A], count=0)


# --- CallTree ---------------------------------------------------------------------------


def test_add_stack_counts_every_prefix() -> None:
    tree = CallTree()
    tree.add_stack([A, B, C])
    tree.add_stack([A, B])
    tree.add_stack([A, D], count=3)
    assert tree.count == 5 and tree.nodes == 4
    assert tree.to_json() == {
        "name": "all", "filename": "", "line": 0, "count": 5, "children": [
            {"name": "a", "filename": "app.py", "line": 1, "count": 5, "children": [
                {"name": "d", "filename": "app.py", "line": 30, "count": 3, "children": []},
                {"name": "b", "filename": "app.py", "line": 10, "count": 2, "children": [
                    {"name": "c", "filename": "app.py", "line": 20, "count": 1, "children": []},
                ]},
            ]},
        ],
    }
    # Own samples only (a's five are all in its callees), in the JSON order.
    assert list(tree.stacks()) == [((A, D), 3), ((A, B), 1), ((A, B, C), 1)]


def test_same_function_name_in_other_files_or_lines_are_distinct_nodes() -> None:
    tree = CallTree()
    tree.add_stack([f("run", 1, "x.py")])
    tree.add_stack([f("run", 1, "y.py")])
    tree.add_stack([f("run", 5, "x.py")])
    tree.add_stack([f("run", 1, "x.py")])
    assert tree.nodes == 3
    assert [n["count"] for n in tree.to_json()["children"]] == [2, 1, 1]


def test_node_cap_folds_deeper_frames_into_their_parent() -> None:
    tree = CallTree(max_nodes=2)
    tree.add_stack([A, B, C, D])
    tree.add_stack([A, C])
    tree.add_stack([D])
    assert tree.nodes == 2 and tree.count == 3
    assert list(tree.stacks()) == [((), 1), ((A,), 1), ((A, B), 1)]


def test_depth_cap_counts_the_sample_on_the_deepest_kept_frame() -> None:
    tree = CallTree(max_depth=2)
    tree.add_stack([A, B, C, D])
    assert list(tree.stacks()) == [((A, B), 1)]
    deep = CallTree()
    deep.add_stack([f("r", i) for i in range(MAX_DEPTH + 50)])
    assert deep.nodes == MAX_DEPTH


def test_merge_adds_counts_and_keeps_the_receivers_bounds() -> None:
    one, two = CallTree(), CallTree()
    one.add_stack([A, B])
    two.add_stack([A, B], count=2)
    two.add_stack([C])
    one.merge(two)
    assert one.count == 4 and one.nodes == 3
    assert sorted(one.stacks()) == [((A, B), 3), ((C,), 1)]
    assert two.count == 3  # the source is unchanged
    one.merge(one)
    assert one.count == 8 and sorted(one.stacks()) == [((A, B), 6), ((C,), 2)]
    small = CallTree(max_nodes=1)
    small.merge(one)
    assert small.count == 8 and small.nodes == 1
    assert sorted(small.stacks()) == [((), 2), ((A,), 6)]
    copy = one.copy()
    copy.add_stack([D])
    assert one.count == 8 and copy.count == 9


def test_json_round_trip() -> None:
    tree = CallTree()
    tree.add_stack([A, B, C])
    tree.add_stack([A, D], count=4)
    tree.add_stack([])  # a sample with no frame: counted on the root
    data = tree.to_json()
    again = CallTree.from_json(data)
    assert again.to_json() == data
    assert again.count == 6 and again.nodes == tree.nodes


def test_from_json_merges_duplicate_siblings() -> None:
    node = {"name": "a", "filename": "app.py", "line": 1, "count": 2, "children": []}
    tree = CallTree.from_json(
        {"name": "all", "filename": "", "line": 0, "count": 4, "children": [node, dict(node)]}
    )
    assert tree.nodes == 1 and list(tree.stacks()) == [((A,), 4)]


def leaf(**changes: object) -> dict[str, object]:
    node: dict[str, object] = {"name": "a", "filename": "f.py", "line": 1, "count": 1,
                               "children": []}
    node.update(changes)
    return node


def root_of(*children: object, count: int = 1) -> dict[str, object]:
    return {"name": "all", "filename": "", "line": 0, "count": count, "children": list(children)}


def nested(depth: int) -> dict[str, object]:
    node = leaf()
    for _ in range(depth - 1):
        node = leaf(children=[node])
    return root_of(node)


def cyclic() -> dict[str, object]:
    node = leaf()
    node["children"] = [node]
    return root_of(node)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "must be an object"),
        ("all", "must be an object"),
        (None, "must be an object"),
        ({"name": "all"}, "lacks filename, line, count, children"),
        (root_of(leaf(count=-1)), "count must be an integer >= 0"),
        (root_of(leaf(count=True)), "count must be an integer >= 0"),
        (root_of(leaf(count=1.0)), "count must be an integer >= 0"),
        (root_of(leaf(count=2**60), count=2**60), "count must be an integer >= 0"),
        (root_of(leaf(line="1")), "line must be an integer >= 0"),
        (root_of(leaf(name=None)), "name and filename must be strings"),
        (root_of(leaf(children={})), "children must be a list"),
        (root_of(leaf(), 7), "must be an object"),
        (root_of(leaf(), leaf(), count=1), "count 2 samples, more than the node's 1"),
        (nested(MAX_DEPTH + 1), f"nested deeper than {MAX_DEPTH}"),
        (nested(100_000), f"nested deeper than {MAX_DEPTH}"),
        (cyclic(), f"nested deeper than {MAX_DEPTH}"),
    ],
)
def test_from_json_rejects_malformed_trees(data: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CallTree.from_json(data)


def test_from_json_accepts_the_deepest_allowed_tree_and_bounds_nodes() -> None:
    assert CallTree.from_json(nested(MAX_DEPTH)).nodes == MAX_DEPTH
    wide = root_of(*(leaf(name=f"fn{i}") for i in range(11)), count=11)
    assert CallTree.from_json(wide, max_nodes=11).nodes == 11
    with pytest.raises(ValueError, match="more than 10 nodes"):
        CallTree.from_json(wide, max_nodes=10)


def test_a_process_of_many_threads_is_sampled_less_often() -> None:
    from dsched._profiler import THREADS_AT_FULL_RATE

    sampler = Sampler(lambda: {}, interval=0.01)
    base = threading.active_count()
    if base <= THREADS_AT_FULL_RATE:
        assert sampler.effective_interval() == 0.01
    release = threading.Event()
    extra = [start_thread(release.wait) for _ in range(2 * THREADS_AT_FULL_RATE)]
    try:
        count = threading.active_count()
        assert count >= 2 * THREADS_AT_FULL_RATE
        assert sampler.effective_interval() == pytest.approx(0.01 * count / THREADS_AT_FULL_RATE)
        assert sampler.overhead().interval == pytest.approx(sampler.effective_interval())
    finally:
        release.set()
        for thread in extra:
            thread.join()
