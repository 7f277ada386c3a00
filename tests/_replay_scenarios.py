"""Scheduler runs recorded with an ``EventRecorder``, for the recording and replay tests.

``RecordingCluster`` is the simulated cluster of ``_driver`` whose every
``handle_events`` call is recorded right after it returns, as the scheduler
server does.  ``failure_scenario`` drives one through a run with the things a
replay must get right: workers joining, a worker dying with tasks running and
results in memory, task errors, retries, scattered data, work stealing,
heartbeats, cancellations and clients releasing keys and leaving.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import msgspec

import sched_core as sc
from _driver import Cluster, spec
from dsched._recording import EventRecorder


class RecordingCluster(Cluster):
    """``start=False``: the recorder is started later (mid-run); batches before that go unrecorded."""

    def __init__(self, recorder: EventRecorder, *, start: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.recorder = recorder
        if start:
            recorder.start(self.state, "scheduler-test")

    def handle_list(self, events: list[sc.SchedulerEvent]) -> list[sc.Instruction]:
        out = super().handle_list(events)
        self.recorder.write_batch(events, out)
        return out


def run_spec(function: int, text: str) -> tuple[int, msgspec.Raw]:
    """A run_spec as the server holds it: a function ref and the arguments, a msgpack bin in a Raw."""
    return (function, msgspec.Raw(msgspec.msgpack.encode(text.encode() * 20)))


def failure_scenario(path: Path, seed: int = 0, **recorder_options: Any) -> RecordingCluster:
    """Record a run with worker failures, errors and retries to ``path``; the cluster, recorder closed."""
    rng = random.Random(seed)
    recorder = EventRecorder(path, **recorder_options)
    c = RecordingCluster(recorder, allowed_failures=1)
    c.add_client("alice")
    c.add_worker("w1", nthreads=2)
    c.add_worker("w2", nthreads=1)
    loads = [f"load-{i}" for i in range(8)]
    tasks = [spec(key, run_spec=run_spec(0, key)) for key in loads]
    tasks += [spec(f"inc-{i}", [loads[i]], run_spec=run_spec(1, f"inc-{i}")) for i in range(8)]
    tasks.append(spec("total", [f"inc-{i}" for i in range(8)], run_spec=run_spec(2, "total")))
    tasks.append(spec("flaky", [loads[0]], retries=1, run_spec=run_spec(3, "flaky")))
    tasks.append(spec("bad", [], run_spec=run_spec(4, "bad")))
    tasks.append(spec("after-bad", ["bad"], run_spec=run_spec(5, "after-bad")))
    c.submit("alice", tasks, ["total", "flaky", "after-bad"] + loads[:2])
    c.handle(sc.WorkerHeartbeat("w1", 0.004, 10_000))
    # Some work, then errors: one retried, one final.
    for _ in range(3):
        work = c.outstanding()[:2]
        c.handle_list([ev for worker, key in work if key not in ("flaky", "bad") for ev in c.finished_event(key, worker)])
    for key in ("flaky", "bad"):
        if c.running_on(key):
            c.err(key, exception=b"pickled exception " + key.encode())
    # A third worker and a balancing round; then w1 dies with work on it.
    c.add_worker("w3", nthreads=4)
    c.handle(sc.Tick())
    c.handle_list(c.steal_responses())
    assert c.state.workers["w1"].processing or c.state.workers["w1"].has_what
    c.remove_worker("w1", expected=False)
    # A second client scatters data and computes on it, then cancels and leaves.
    c.add_client("bob")
    c.workers["w2"].data["scattered"] = 64
    c.handle(sc.KeysScattered("bob", ["w2"], {"scattered": 64}))
    c.submit("bob", [spec("use-scattered", ["scattered"], run_spec=run_spec(6, "use"))], ["use-scattered"])
    c.handle(sc.CancelKeys("bob", ["use-scattered"]))
    c.run(rng)
    c.release("alice", loads[:2])
    c.remove_client("bob")
    c.handle(sc.WorkerHeartbeat("w2", 0.002, 20_000))
    c.run(rng)
    recorder.close()
    return c


def random_scenario(
    path: Path, seed: int, n_tasks: int = 60, start_at: int | None = None, **recorder_options: Any
) -> RecordingCluster:
    """Record a random run: random graphs, failures, worker churn and delayed messages.

    ``start_at``: start recording at that step of the run (mid-run, from a
    snapshot) rather than with the scheduler.
    """
    rng = random.Random(seed)
    recorder = EventRecorder(path, **recorder_options)
    c = RecordingCluster(recorder, start=start_at is None, allowed_failures=rng.randint(0, 2))
    for _ in range(rng.randint(1, 3)):
        c.add_worker(nthreads=rng.randint(1, 3))
    keys: list[str] = []
    tasks = []
    for i in range(n_tasks):
        deps = rng.sample(keys, min(len(keys), rng.randint(0, 3))) if keys and rng.random() < 0.6 else []
        key = f"{rng.choice(['load', 'inc', 'sum'])}-{i}"
        tasks.append(spec(key, deps, retries=rng.randint(0, 1), run_spec=run_spec(i % 3, key)))
        keys.append(key)
    c.submit("c1", tasks, rng.sample(keys, n_tasks // 3))
    fail = set(rng.sample(keys, n_tasks // 10))
    for step in range(200):
        if step == start_at:
            recorder.start(c.state, "scheduler-test")
        r = rng.random()
        work = c.outstanding()
        if r < 0.05:
            c.add_worker(nthreads=rng.randint(1, 3))
        elif r < 0.1 and len(c.workers) > 1:
            c.remove_worker(rng.choice(sorted(c.workers)), expected=rng.random() < 0.3)
        elif r < 0.15:
            c.handle(sc.Tick())
            c.handle_list(c.steal_responses())
        elif work:
            picked = rng.sample(work, min(len(work), rng.randint(1, 4)))
            for worker, key in picked:
                if key in fail:
                    c.post([c.erred_event(key, worker, exception=b"boom")])
                else:
                    c.post(c.finished_event(key, worker, rng.randint(1, 5000), rng.random() / 10))
            c.handle_list(c.deliver(rng))
        elif not c.workers:
            c.add_worker()
        else:
            break
    if not recorder.active and not recorder.stopped_reason:  # the run ended before start_at
        recorder.start(c.state, "scheduler-test")
    c.run(rng, fail=fail)
    recorder.close()
    return c
