"""Flow control (queue capacity, queuing, placement) and work stealing."""

from __future__ import annotations

import pytest
from _driver import Cluster, computed_keys, computes, of_type, spec
from hypothesis import given, settings
from hypothesis import strategies as st

from sched_core import (
    StealRequest,
    StealResponse,
    Tick,
    WorkerAdded,
    WorkerHeartbeat,
    WorkerState,
)
from sched_core._placement import queue_capacity

# ----------------------------------------------------------------------
# queue_capacity


def worker(
    nthreads: int = 1,
    duration: float = -1.0,
    latency: float = 0.001,
    memory_limit: int = 0,
    nbytes: float = 0.0,
) -> WorkerState:
    ws = WorkerState("w", "w", nthreads, memory_limit, {})
    ws.duration_average = duration
    ws.latency = latency
    ws.nbytes_average = nbytes
    return ws


def test_capacity_before_anything_is_measured() -> None:
    for n in (1, 2, 8):
        assert queue_capacity(worker(n), 64) == 2 * n


def test_capacity_grows_with_latency() -> None:
    caps = [queue_capacity(worker(4, duration=0.001, latency=lat), 64) for lat in (0.0, 0.001, 0.003, 0.01)]
    assert caps == sorted(caps)
    assert caps[0] == 8
    assert caps[-1] > caps[0]
    # Enough work to cover two round trips at the measured task duration.
    assert queue_capacity(worker(1, duration=0.001, latency=0.01), 64) >= 20


def test_capacity_shrinks_with_long_tasks() -> None:
    caps = [queue_capacity(worker(4, duration=d, latency=0.01), 64) for d in (1e-5, 1e-3, 1e-2, 1.0, 60.0)]
    assert caps == sorted(caps, reverse=True)
    assert caps[0] == 4 * 64
    assert caps[-1] == 4 * 2


def test_capacity_is_capped_by_max_depth() -> None:
    assert queue_capacity(worker(3, duration=1e-6, latency=1.0), 10) == 30
    assert queue_capacity(worker(3, duration=0.0, latency=1.0), 64) == 3 * 64


def test_capacity_is_limited_by_the_memory_budget() -> None:
    fast = dict(duration=1e-4, latency=0.01)
    unlimited = queue_capacity(worker(4, **fast), 64)
    small_results = queue_capacity(worker(4, memory_limit=4 * 10**9, nbytes=1_000.0, **fast), 64)
    large_results = queue_capacity(worker(4, memory_limit=4 * 10**9, nbytes=100 * 10**6, **fast), 64)
    huge_results = queue_capacity(worker(4, memory_limit=4 * 10**9, nbytes=10 * 10**9, **fast), 64)
    assert small_results == unlimited == 4 * 64
    assert 4 <= large_results < unlimited
    # What is queued ahead produces results fitting in a tenth of the memory.
    assert large_results * 100 * 10**6 <= 4 * 10**9 * 0.1 + 4 * 100 * 10**6
    # At least one task per thread, however large.
    assert huge_results == 4


@settings(max_examples=300, deadline=None)
@given(
    nthreads=st.integers(1, 64),
    duration=st.one_of(st.just(-1.0), st.floats(0.0, 1000.0)),
    latency=st.floats(0.0, 10.0),
    max_depth=st.integers(2, 256),
)
def test_capacity_bounds(nthreads: int, duration: float, latency: float, max_depth: int) -> None:
    cap = queue_capacity(worker(nthreads, duration=duration, latency=latency), max_depth)
    assert 2 * nthreads <= cap <= max_depth * nthreads
    assert cap % nthreads == 0
    if duration >= 0.0:
        # Monotonic: more latency never lowers it, longer tasks never raise it.
        assert queue_capacity(worker(nthreads, duration=duration, latency=latency * 2), max_depth) >= cap
        assert queue_capacity(worker(nthreads, duration=duration * 2 + 1e-3, latency=latency), max_depth) <= cap


@settings(max_examples=300, deadline=None)
@given(
    nthreads=st.integers(1, 64),
    duration=st.floats(0.0, 10.0),
    latency=st.floats(0.0, 1.0),
    memory_limit=st.integers(1, 10**12),
    nbytes=st.floats(1.0, 1e11),
)
def test_capacity_with_memory_limit(
    nthreads: int, duration: float, latency: float, memory_limit: int, nbytes: float
) -> None:
    ws = worker(nthreads, duration=duration, latency=latency, memory_limit=memory_limit, nbytes=nbytes)
    cap = queue_capacity(ws, 64)
    unlimited = queue_capacity(worker(nthreads, duration=duration, latency=latency), 64)
    assert nthreads <= cap <= unlimited
    per_thread = cap // nthreads
    if per_thread > 1:
        assert per_thread * nbytes * nthreads <= memory_limit * 0.1 * (1 + 1e-9)


# ----------------------------------------------------------------------
# Capacity in the scheduler


def tiny_tasks(n: int) -> dict[str, list[str]]:
    return {f"tiny-{i}": [] for i in range(n)}


def test_capacity_adapts_upward_with_many_tiny_tasks() -> None:
    c = Cluster()
    c.add_worker("a", 2)
    c.submit("c1", tiny_tasks(2000))
    assert len(c.workers["a"].running) == 4
    in_flight = []
    for _ in range(40):
        c.finish(c.outstanding()[0][1], duration=1e-4)
        in_flight.append(len(c.workers["a"].running))
    ws = c.state.workers["a"]
    assert ws.capacity > 4 * 5
    assert in_flight[-1] == ws.capacity
    assert in_flight == sorted(in_flight)
    assert ws.capacity <= 2 * c.state.max_queue_depth


def test_capacity_stays_low_for_long_tasks() -> None:
    c = Cluster()
    c.add_worker("a", 2)
    c.submit("c1", tiny_tasks(100))
    for _ in range(20):
        c.finish(c.outstanding()[0][1], duration=5.0)
        assert len(c.workers["a"].running) == 4
    assert c.state.workers["a"].capacity == 4


def test_capacity_respects_max_queue_depth() -> None:
    c = Cluster(max_queue_depth=5)
    c.add_worker("a", 3)
    c.submit("c1", tiny_tasks(500))
    for _ in range(20):
        c.finish(c.outstanding()[0][1], duration=1e-6)
    c.handle(WorkerHeartbeat("a", latency=2.0))
    assert c.state.workers["a"].capacity == 15
    assert len(c.workers["a"].running) == 15


def test_large_results_limit_capacity() -> None:
    c = Cluster()
    c.add_worker("a", 2, memory_limit=10**9)
    c.submit("c1", tiny_tasks(100))
    for _ in range(20):
        c.finish(c.outstanding()[0][1], duration=1e-4, nbytes=50 * 10**6)
    assert c.state.workers["a"].capacity == 2
    assert len(c.workers["a"].running) == 2


def test_new_worker_takes_queued_tasks() -> None:
    c = Cluster()
    c.add_worker("a", 1)
    c.submit("c1", tiny_tasks(100))
    assert c.state.n_queued() == 98
    out = c.add_worker("b", 3)
    assert [i.worker for i in computes(out)] == ["b"] * 6
    assert c.state.n_queued() == 92
    # Highest priority first: the next tasks of the queue, in order.
    assert computed_keys(out) == [f"tiny-{i}" for i in range(2, 8)]


def test_queue_is_drained_across_workers() -> None:
    c = Cluster()
    for i in range(4):
        c.add_worker(f"w{i}", 2)
    c.submit("c1", tiny_tasks(300))
    rounds = c.run()
    assert c.clients["c1"].in_memory() == set(tiny_tasks(300))
    assert rounds < 300 // 8
    assert c.state.queued == {}


def test_queued_tasks_released_leave_the_queue() -> None:
    c = Cluster()
    c.add_worker("a", 1)
    c.submit("c1", tiny_tasks(50))
    c.release("c1", [f"tiny-{i}" for i in range(10, 50)])
    assert c.state.n_queued() == 8
    # Only tasks still wanted are handed out.
    assert {k for _, k in c.outstanding()} == {"tiny-0", "tiny-1"}
    assert {ts.key for ts in c.state.queued.values()} == {f"tiny-{i}" for i in range(2, 10)}
    c.run()
    assert c.clients["c1"].in_memory() == {f"tiny-{i}" for i in range(10)}
    assert computed_keys(c.history) == [f"tiny-{i}" for i in range(10)]


def test_placement_prefers_the_less_loaded_holder() -> None:
    c = Cluster()
    c.add_worker("a", 1)
    c.add_worker("b", 1)
    c.submit("c1", [spec("x", workers=["a"]), spec("busy-0", workers=["a"]), spec("busy-1", workers=["a"])])
    c.finish("x", nbytes=10)
    c.replicate("x", "b")
    out = c.submit("c1", [spec("y", ["x"])], ["y"])
    assert [i.worker for i in computes(out)] == ["b"]


# ----------------------------------------------------------------------
# Work stealing


def overloaded(thief_threads: int = 2, nbytes: int = 100) -> Cluster:
    """a (1 thread) holds x; tasks needing x all land on a; b is idle.

    As many tasks as 2 x the cluster's threads: not enough to be queued as
    root-like, so they are placed near x.
    """
    n_tasks = 2 * (1 + thief_threads)
    c = Cluster()
    c.add_worker("a", 1)
    c.add_worker("b", thief_threads)
    c.submit("c1", [spec("x", workers=["a"])], ["x"])
    c.finish("x", nbytes=nbytes)
    out = c.submit("c1", [spec(f"y-{i}", ["x"]) for i in range(n_tasks)])
    assert {i.worker for i in computes(out)} == {"a"}
    assert len(c.workers["a"].running) == n_tasks
    return c


def test_tick_steals_from_an_overloaded_worker() -> None:
    c = overloaded()
    out = c.handle(Tick())
    requests = of_type(out, StealRequest)
    assert [(r.worker, r.key) for r in requests] == [("a", "y-5"), ("a", "y-4")]
    assert c.state.n_steal_requests == 2
    # The worker gives the tasks up; the scheduler moves them when it hears so.
    assert c.workers["a"].given_up == {"y-4", "y-5"}
    assert c.state.tasks["y-5"].processing_on.address == "a"
    assert c.state.tasks["y-5"].steal_target.address == "b"
    out = c.handle_list(c.steal_responses())
    assert sorted((i.worker, i.key) for i in computes(out)) == [("b", "y-4"), ("b", "y-5")]
    for instr in computes(out):
        assert instr.who_has == {"x": ["a"]}
    assert c.state.n_steals == 2
    assert sorted(c.workers["b"].running) == ["y-4", "y-5"]
    c.run()
    assert c.clients["c1"].in_memory() == {"x"} | {f"y-{i}" for i in range(6)}


def test_task_already_executing_is_not_moved() -> None:
    c = overloaded()
    c.start("y-5")
    c.handle(Tick())
    out = c.handle_list(c.steal_responses())
    assert [(i.worker, i.key) for i in computes(out)] == [("b", "y-4")]
    assert c.running_on("y-5") == ["a"]
    assert c.state.tasks["y-5"].processing_on.address == "a"
    assert c.state.tasks["y-5"].steal_target is None
    c.run()
    assert c.clients["c1"].in_memory() == {"x"} | {f"y-{i}" for i in range(6)}


def test_steal_answered_by_a_worker_that_forgot_the_task() -> None:
    c = overloaded()
    c.handle(Tick())
    for sim in c.workers.values():
        sim.outbox = []
    # The worker answers it has no record of the task.
    out = c.handle(StealResponse("a", "y-5", None))
    assert [(i.worker, i.key) for i in computes(out)] == [("b", "y-5")]


def test_pending_steal_is_not_requested_twice() -> None:
    c = overloaded()
    first = of_type(c.handle(Tick()), StealRequest)
    second = of_type(c.handle(Tick()), StealRequest)
    assert {r.key for r in first}.isdisjoint({r.key for r in second})


def test_no_steal_when_moving_costs_more_than_running() -> None:
    c = overloaded(nbytes=10**9)  # 10 s to move at 100 MB/s
    assert of_type(c.handle(Tick()), StealRequest) == []


def test_no_steal_without_an_idle_worker() -> None:
    c = overloaded(thief_threads=1)
    c.submit("c1", [spec("b-busy", workers=["b"])])
    assert of_type(c.handle(Tick()), StealRequest) == []


def test_no_steal_with_a_single_worker() -> None:
    c = Cluster()
    c.add_worker("a", 1)
    c.submit("c1", [spec("x", workers=["a"]), spec("y", workers=["a"])])
    assert c.handle(Tick()) == []


def test_restricted_tasks_are_not_stolen() -> None:
    c = Cluster()
    c.handle(WorkerAdded("a", 1, resources={"R": 1.0}))
    c.add_worker("b", 2)
    c.submit("c1", [spec(f"r-{i}", workers=["a"]) for i in range(5)])
    c.submit("c1", [spec(f"g-{i}", resources={"R": 1.0}) for i in range(3)])
    assert len(c.workers["a"].running) == 8
    assert of_type(c.handle(Tick()), StealRequest) == []


def test_steal_response_for_unknown_or_moved_tasks_is_ignored() -> None:
    c = overloaded()
    c.handle(Tick())
    before = c.snapshot()
    for event in [
        StealResponse("a", "nope", "ready"),  # unknown key
        StealResponse("ghost", "y-5", "ready"),  # unknown worker
        StealResponse("b", "y-5", "ready"),  # not processing there
        StealResponse("a", "y-0", "ready"),  # never asked
        StealResponse("a", "x", "memory"),  # not processing at all
    ]:
        assert c.handle(event) == []
        assert c.snapshot() == before
    # The real answers still work afterwards.
    out = c.handle_list(c.steal_responses())
    assert sorted(computed_keys(out)) == ["y-4", "y-5"]


def test_steal_response_after_the_task_finished_is_ignored() -> None:
    c = overloaded()
    c.start("y-5")
    c.handle(Tick())
    c.finish("y-5")  # reported before the answer "executing" arrives
    out = c.handle_list(c.steal_responses())
    assert [(i.worker, i.key) for i in computes(out)] == [("b", "y-4")]
    assert c.state_of("y-5") == "memory"
    assert [ws.address for ws in c.state.tasks["y-5"].who_has] == ["a"]


def test_steal_response_after_a_second_answer_is_ignored() -> None:
    c = overloaded()
    c.handle(Tick())
    out = c.handle_list(c.steal_responses())
    assert len(computes(out)) == 2
    before = c.snapshot()
    assert c.handle(StealResponse("a", "y-5", "ready")) == []
    assert c.snapshot() == before


def test_thief_gone_before_the_answer() -> None:
    c = overloaded(thief_threads=1)
    c.add_worker("c", 1)
    requests = of_type(c.handle(Tick()), StealRequest)
    assert requests
    targets = {r.key: c.state.tasks[r.key].steal_target.address for r in requests}
    for thief in set(targets.values()):
        c.remove_worker(thief)
    c.handle_list(c.steal_responses())
    # Rescheduled the ordinary way: a is the only worker left, and it is full,
    # so the tasks wait in the queue (they are many for one thread).
    for key in targets:
        assert c.state_of(key) == "queued"
        assert c.running_on(key) == []
    c.run()
    assert c.clients["c1"].in_memory() == {"x"} | {f"y-{i}" for i in range(4)}


def test_victim_gone_before_the_answer() -> None:
    c = overloaded()
    requests = of_type(c.handle(Tick()), StealRequest)
    assert requests
    out = c.remove_worker("a")
    assert c.zombie_messages
    # x was lost with a (the only worker it may run on): the y tasks wait.
    assert computes(out) == []
    assert c.state_of("x") == "no-worker"
    assert all(c.state_of(f"y-{i}") == "waiting" for i in range(6))
    assert all(c.state.tasks[f"y-{i}"].steal_target is None for i in range(6))
    # The answer, late, from the gone worker changes nothing.
    before = c.snapshot()
    assert c.handle(StealResponse("a", requests[0].key, "ready")) == []
    assert c.snapshot() == before


@pytest.mark.parametrize("n_workers", [2, 5])
def test_stealing_balances_a_skewed_cluster(n_workers: int) -> None:
    c = Cluster()
    for i in range(n_workers):
        c.add_worker(f"w{i}", 1)
    c.submit("c1", [spec("x", workers=["w0"])], ["x"])
    c.finish("x")
    c.submit("c1", [spec(f"y-{i}", ["x"]) for i in range(2 * n_workers)])
    for _ in range(5):
        c.handle(Tick())
        c.handle_list(c.steal_responses())
    # Every idle thread got one task; the rest stays where its data is.
    loads = sorted(len(sim.running) for sim in c.workers.values())
    assert loads == [1] * (n_workers - 1) + [n_workers + 1]


# ----------------------------------------------------------------------
# Learning durations


def test_a_report_without_a_measured_run_teaches_no_duration() -> None:
    c = Cluster()
    c.handle(WorkerAdded("a", 1))
    c.submit("c1", {"inc-1": [], "inc-2": []})
    c.finish("inc-1", "a", duration=0.25)
    prefix = c.state.prefixes["inc"]
    ws = c.state.workers["a"]
    assert (prefix.duration_average, prefix.n_finished, ws.duration_average) == (0.25, 1, 0.25)
    # A worker that already held the data reports at once, with no run time.
    c.finish("inc-2", "a", duration=0.0)
    assert c.state.task_state("inc-2") == "memory"
    assert (prefix.duration_average, prefix.n_finished, ws.duration_average) == (0.25, 1, 0.25)
