"""Property tests of the scheduler core: random graphs on a random, failing cluster.

A random DAG is submitted piece by piece by a few clients while workers join,
leave (gracefully or not), restart, lose data and report late; tasks finish or
fail in random order; results and other worker messages wait in per-worker
outboxes and arrive in random interleavings (each worker's own messages in
order), sometimes duplicated, sometimes after their worker was removed; clients
release, cancel, re-want and disconnect.  Several of these may land in one
batch of events.

After every batch the driver (``_driver.py``) runs ``validate_state`` and
checks the core against its model of the workers: every ComputeTask is sent to
a live worker while each dependency is held by a listed, live worker, and
nothing is processing on or held by a removed worker.

At the end the cluster settles (a worker that can run anything is added and
all outstanding work is finished): every key a client holds is in memory or
erred, and the client's last word about it says so; what each client holds is
what the clients asked for.  After the clients release everything (or
disconnect), no task, group, queue entry or worker assignment is left.
"""

from __future__ import annotations

import gc
import random
import zlib
from collections.abc import Callable

from _driver import Cluster, computed_keys, spec
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from sched_core import (
    CancelKeys,
    ClientReleasesKeys,
    ClientRemoved,
    ClientWantsKeys,
    GraphSubmitted,
    KeysScattered,
    MissingData,
    ReplicasAdded,
    RetireWorker,
    SchedulerEvent,
    SchedulerState,
    TaskErred,
    TaskFinished,
    TaskGroup,
    TaskPrefix,
    TaskState,
    Tick,
    WorkerAdded,
    WorkerHeartbeat,
    WorkerRemoved,
    WorkerStatusChanged,
)
from sched_core._model import ClientState, WorkerState

RESOURCE = "R"


def nbytes_of(key: str) -> int:
    """A result's size: every computation of a key gives the same value."""
    return (1, 100, 10_000, 10**6)[zlib.crc32(key.encode()) % 4]


class RandomGraph:
    """A random DAG in submission-sized pieces."""

    def __init__(self, rng: random.Random, n: int, max_fan_in: int, n_scattered: int) -> None:
        groups = [f"g{i}" for i in range(rng.randint(1, 6))]
        self.keys: list[str] = []
        self.deps: dict[str, list[str]] = {}
        self.kwargs: dict[str, dict[str, object]] = {}
        self.scattered = [f"data-{i}" for i in range(n_scattered)]
        for i in range(n):
            key = f"{rng.choice(groups)}-{i}"
            earlier = self.keys
            if earlier and rng.random() < 0.8:
                fan_in = rng.randint(1, max_fan_in) if max_fan_in else 0
                # Mostly recent keys, sometimes anything: chains, fans, reductions.
                window = earlier[-rng.choice([4, 16, len(earlier)]) :]
                deps = rng.sample(window, min(fan_in, len(window)))
            else:
                deps = []
            if self.scattered and rng.random() < 0.05:
                deps.append(rng.choice(self.scattered))
            kwargs: dict[str, object] = {}
            r = rng.random()
            if r < 0.05:
                kwargs["resources"] = {RESOURCE: 1.0}
            elif r < 0.1:
                kwargs["workers"] = [f"w{rng.randint(1, 6)}"]
                kwargs["allow_other_workers"] = True
            if rng.random() < 0.1:
                kwargs["retries"] = rng.randint(1, 2)
            if rng.random() < 0.03:
                kwargs["priority"] = rng.choice([-1, 1])
            self.keys.append(key)
            self.deps[key] = deps
            self.kwargs[key] = kwargs
        # Submission pieces, in order.
        self.pieces: list[list[str]] = []
        start = 0
        while start < n:
            size = rng.randint(1, max(1, n // rng.choice([1, 2, 4, 8])))
            self.pieces.append(self.keys[start : start + size])
            start += size

    def closure(self, keys: list[str]) -> list[str]:
        """``keys`` and everything they depend on (tasks, not scattered data), in key order."""
        seen: set[str] = set()
        stack = list(keys)
        while stack:
            k = stack.pop()
            if k in seen or k not in self.deps:
                continue
            seen.add(k)
            stack.extend(self.deps[k])
        return [k for k in self.keys if k in seen]


class Simulation:
    def __init__(self, rng: random.Random, n_tasks: int, max_fan_in: int, intensity: float) -> None:
        self.rng = rng
        self.c = Cluster(lossy=True, allowed_failures=rng.choice([0, 1, 3]))
        self.graph = RandomGraph(rng, n_tasks, max_fan_in, n_scattered=rng.choice([0, 0, 2]))
        self.clients = [f"client-{i}" for i in range(rng.randint(1, 3))]
        self.flaky = {k for k in self.graph.keys if rng.random() < 0.05 * intensity}
        self.intensity = intensity
        self.next_piece = 0
        self.n_workers_made = 0

    # ------------------------------------------------------------------
    # Actions: each returns events for one batch (and updates the model)

    def submit(self) -> list[SchedulerEvent]:
        rng = self.rng
        if self.next_piece >= len(self.graph.pieces):
            return []
        piece = self.graph.pieces[self.next_piece]
        keys = self.graph.closure(piece)
        # Scattered inputs must exist: the client scatters them (again) right
        # before, so that it holds them whatever else happens in the batch.
        events: list[SchedulerEvent] = []
        client = rng.choice(self.clients)
        needed = {d for k in keys for d in self.graph.deps[k] if d in self.graph.scattered}
        for d in sorted(needed):
            scattered = self.scatter(d, client)
            if not scattered:
                return []  # no worker to scatter to: submit later
            events.extend(scattered)
        self.next_piece += 1
        share = rng.choice([0.1, 0.5, 1.0])
        wanted = [k for k in piece if rng.random() < share] or [piece[-1]]
        tasks = [spec(k, self.graph.deps[k], **self.graph.kwargs[k]) for k in keys]
        events.append(GraphSubmitted(client, tasks, wanted))
        return events

    def scatter(self, key: str, client: str) -> list[SchedulerEvent]:
        live = list(self.c.workers)
        if not live:
            return []
        holders = self.rng.sample(live, self.rng.randint(1, min(2, len(live))))
        for w in holders:
            self.c.workers[w].data[key] = 10
        return [KeysScattered(client, holders, {key: 10})]

    def complete(self) -> list[SchedulerEvent]:
        """Some workers finish (or fail) some tasks; the news goes to their outboxes."""
        rng = self.rng
        work = self.c.outstanding()
        if not work:
            return []
        rng.shuffle(work)
        for address, key in work[: rng.randint(1, len(work))]:
            sim = self.c.workers[address]
            if rng.random() < 0.3:
                sim.started.add(key)
                continue
            if key in self.flaky and rng.random() < 0.5:
                self.c.post([self.c.erred_event(key, address)])
            else:
                events = self.c.finished_event(key, address, nbytes_of(key), rng.choice([1e-4, 0.01, 0.5]))
                if rng.random() < 0.05 and isinstance(events[-1], TaskFinished):
                    events.append(events[-1])  # duplicated on the way
                self.c.post(events)
        return self.deliver() if rng.random() < 0.7 else []

    def deliver(self) -> list[SchedulerEvent]:
        return self.c.deliver(self.rng)

    def add_worker(self) -> list[SchedulerEvent]:
        rng = self.rng
        self.n_workers_made += 1
        address = self.c.new_address()
        resources = {RESOURCE: 1.0} if rng.random() < 0.3 else None
        memory_limit = rng.choice([0, 0, 10**8])
        return [WorkerAdded(address, rng.randint(1, 4), memory_limit, resources)]

    def remove_worker(self) -> list[SchedulerEvent]:
        if not self.c.workers:
            return []
        address = self.rng.choice(list(self.c.workers))
        return [WorkerRemoved(address, expected=self.rng.random() < 0.4)]

    def restart_worker(self) -> list[SchedulerEvent]:
        if not self.c.workers:
            return []
        address = self.rng.choice(list(self.c.workers))
        return [WorkerAdded(address, self.rng.randint(1, 3))]

    def zombies(self) -> list[SchedulerEvent]:
        """Late news from removed workers.

        Only while their address is not taken again: a message from a dead
        worker's connection, once a new worker registered at that address,
        cannot be told from the new worker's and is the runtime's to drop.
        """
        rng = self.rng
        live = self.c.workers
        self.c.zombie_messages = [ev for ev in self.c.zombie_messages if ev.worker not in live]  # type: ignore[attr-defined]
        self.c.zombies = [z for z in self.c.zombies if z[0] not in live]
        events: list[SchedulerEvent] = []
        if self.c.zombie_messages:
            n = rng.randint(1, len(self.c.zombie_messages))
            events.extend(self.c.zombie_messages[:n])
            del self.c.zombie_messages[:n]
        while self.c.zombies and rng.random() < 0.7:
            address, key, run_id = self.c.zombies.pop(rng.randrange(len(self.c.zombies)))
            if rng.random() < 0.8:
                events.append(TaskFinished(address, key, nbytes_of(key), 0.01, run_id))
            else:
                events.append(TaskErred(address, key, "late", "tb", run_id))
        return events

    def release(self) -> list[SchedulerEvent]:
        client = self.rng.choice(self.clients)
        held = sorted(self.c.wants.get(client, ()))
        if not held:
            return []
        return [ClientReleasesKeys(client, self.rng.sample(held, self.rng.randint(1, len(held))))]

    def cancel(self) -> list[SchedulerEvent]:
        client = self.rng.choice(self.clients)
        held = sorted(self.c.wants.get(client, ()))
        if not held:
            return []
        keys = self.rng.sample(held, self.rng.randint(1, min(5, len(held))))
        return [CancelKeys(client, keys, force=self.rng.random() < 0.3)]

    def want(self) -> list[SchedulerEvent]:
        known = list(self.c.state.tasks)
        if not known:
            return []
        keys = self.rng.sample(known, self.rng.randint(1, min(5, len(known))))
        if self.rng.random() < 0.1:
            keys.append("never-heard-of")
        return [ClientWantsKeys(self.rng.choice(self.clients), keys)]

    def client_leaves(self) -> list[SchedulerEvent]:
        return [ClientRemoved(self.rng.choice(self.clients))]

    def heartbeat(self) -> list[SchedulerEvent]:
        if not self.c.workers:
            return []
        address = self.rng.choice(list(self.c.workers))
        return [WorkerHeartbeat(address, self.rng.choice([0.0, 0.001, 0.05, 0.5]))]

    def tick(self) -> list[SchedulerEvent]:
        return [Tick()]

    def pause_or_resume(self) -> list[SchedulerEvent]:
        """A worker's memory crosses its pause threshold, either way."""
        if not self.c.workers:
            return []
        address = self.rng.choice(list(self.c.workers))
        ws = self.c.state.workers.get(address)
        return [WorkerStatusChanged(address, ws is None or not ws.paused)]

    def retire(self) -> list[SchedulerEvent]:
        """A worker is retired (its only copies are to move before it is told to close)."""
        if not self.c.workers:
            return []
        return [RetireWorker(self.rng.choice(list(self.c.workers)))]

    def retirements(self) -> list[SchedulerEvent]:
        """Some of the copies asked for arrive; the workers told to close go (an expected departure)."""
        c = self.c
        events: list[SchedulerEvent] = []
        pending, c.acquisitions = c.acquisitions, []
        for ins in pending:
            if self.rng.random() < 0.3:
                c.acquisitions.append(ins)  # still on its way
                continue
            target = c.workers.get(ins.worker)
            if target is None:
                continue
            copied: dict[str, int] = {}
            for key, holders in ins.who_has.items():
                for address in holders:
                    source = c.workers.get(address)
                    if source is not None and key in source.data:
                        copied[key] = source.data[key]
                        break
            if copied:
                target.data.update(copied)
                events.append(ReplicasAdded(target.address, list(copied), copied, target.seen_batch))
        events.extend(WorkerRemoved(address, True) for address in c.closed if address in c.workers)
        c.closed = []
        return events

    def lose_data(self) -> list[SchedulerEvent]:
        """A worker loses a replica; another worker reports it missing."""
        holders = [(a, k) for a, sim in self.c.workers.items() for k in sim.data if k in self.c.state.tasks]
        if not holders or len(self.c.workers) < 1:
            return []
        address, key = self.rng.choice(holders)
        ts = self.c.state.tasks[key]
        if ts.who_has is None or address not in [w.address for w in ts.who_has]:
            return []  # its news is still on the way
        self.c.lose(key, address)
        asker = self.rng.choice(list(self.c.workers))
        return [MissingData(asker, key, address)]

    # ------------------------------------------------------------------

    def actions(self) -> list[tuple[Callable[[], list[SchedulerEvent]], float, bool]]:
        """(action, weight, may share a batch with others)."""
        i = self.intensity
        return [
            (self.submit, 3.0, True),
            (self.complete, 8.0, True),
            (self.deliver, 3.0, True),
            (self.add_worker, 1.0 + (3.0 if not self.c.workers else 0.0), True),
            (self.remove_worker, 0.6 * i, True),
            (self.restart_worker, 0.1 * i, True),
            (self.zombies, 0.5, True),
            (self.release, 0.5 * i, True),
            (self.cancel, 0.2 * i, True),
            (self.want, 0.3, False),  # alone, so that the driver knows which keys were known
            (self.client_leaves, 0.05 * i, True),
            (self.heartbeat, 0.5, True),
            (self.tick, 1.0, True),
            (self.pause_or_resume, 0.4, True),
            (self.lose_data, 0.2 * i, False),
            (self.retire, 0.15 * i, True),
            (self.retirements, 0.5, False),
        ]

    def step(self) -> None:
        rng = self.rng
        actions = self.actions()
        weights = [w for _, w, _ in actions]
        n_parts = 1 if rng.random() < 0.7 else rng.randint(2, 4)
        events: list[SchedulerEvent] = []
        for _ in range(n_parts):
            action, _, shareable = rng.choices(actions, weights)[0]
            if not shareable:
                self.flush(events)
                events = []
                self.flush(action())
                continue
            events.extend(action())
        self.flush(events)

    def flush(self, events: list[SchedulerEvent]) -> None:
        if not events:
            return
        # A restart goes last: the old process's messages (and data scattered
        # to it) cannot come after it in the same batch.
        restarts = [ev for ev in events if isinstance(ev, WorkerAdded) and ev.address in self.c.workers]
        events = [ev for ev in events if ev not in restarts] + restarts
        self.c.handle_list(events)

    def settle(self) -> None:
        """Resume every worker, add one that can run anything and finish all outstanding work."""
        c = self.c
        paused = [address for address, ws in c.state.workers.items() if ws.paused]
        if paused:
            c.handle_list([WorkerStatusChanged(address, False) for address in paused])
        c.handle(WorkerAdded(c.new_address(), 2, 0, {RESOURCE: 1.0}))
        while self.next_piece < len(self.graph.pieces):
            c.handle_list(self.submit())
        rounds = 0
        while True:
            rounds += 1
            assert rounds < 10_000, "no quiescence"
            news = c.deliver()
            if news:
                c.handle_list(news)
                continue
            work = c.outstanding()
            if not work:
                break
            self.rng.shuffle(work)
            events: list[SchedulerEvent] = []
            for address, key in work[: self.rng.randint(1, len(work))]:
                events.extend(c.finished_event(key, address, nbytes_of(key), 0.01))
            c.handle_list(events)

    def check_settled(self) -> None:
        c = self.c
        state = c.state
        # Every submission was valid; only wanting unknown keys is refused.
        for log in c.clients.values():
            assert {e.kind for e in log.errors} <= {"unknown-key"}, log.errors
            assert all(e.keys == ["never-heard-of"] for e in log.errors), log.errors
        counts = state.counts
        assert (counts.waiting, counts.queued, counts.no_worker, counts.processing) == (0, 0, 0, 0), counts
        assert c.outstanding() == []
        for client, cs in state.clients.items():
            held = {ts.key for ts in cs.wants}
            assert held == c.wants.get(client, set()), client
            log = c.log(client)
            for key in held:
                ts = state.tasks[key]
                assert ts.state_name in ("memory", "erred"), ts
                told = log.status.get(key)
                if ts.state_name == "erred" and ts.run_spec is None and told == "lost":
                    continue  # scattered data lost (again): "lost" says it
                assert told == ts.state_name, (client, key, told, ts)
                if ts.state_name == "erred":
                    assert log.erred[key].blamed_key == ts.exception_blame.key
        for client, keys in c.wants.items():
            if keys:
                assert client in state.clients

    def release_everything(self) -> None:
        c = self.c
        events: list[SchedulerEvent] = []
        for client in list(c.wants):
            if self.rng.random() < 0.5:
                events.append(ClientRemoved(client))
            else:
                events.append(ClientReleasesKeys(client, sorted(c.wants[client])))
        if self.rng.random() < 0.5:
            c.handle_list(events)
        else:
            for ev in events:
                c.handle(ev)
        # Late news changes nothing.
        c.handle_list(c.deliver() + self.zombies())
        c.assert_empty()

    def run(self, n_steps: int) -> None:
        for _ in range(n_steps):
            self.step()
        self.settle()
        self.check_settled()
        self.release_everything()


def simulate(seed: int, n_tasks: int, max_fan_in: int, intensity: float, n_steps: int) -> Simulation:
    sim = Simulation(random.Random(seed), n_tasks, max_fan_in, intensity)
    sim.run(n_steps)
    return sim


# The simulation draws everything from one seeded generator, so shrinking
# finds nothing simpler; a failure is reproduced from its printed arguments.
NO_SHRINK = (Phase.explicit, Phase.reuse, Phase.generate)


@settings(max_examples=1500, deadline=None, phases=NO_SHRINK)
@given(
    seed=st.integers(0, 2**32),
    n_tasks=st.integers(1, 40),
    max_fan_in=st.integers(0, 4),
    intensity=st.sampled_from([0.0, 0.5, 1.0, 3.0]),
    n_steps=st.integers(0, 300),
)
def test_small_graphs(seed: int, n_tasks: int, max_fan_in: int, intensity: float, n_steps: int) -> None:
    simulate(seed, n_tasks, max_fan_in, intensity, n_steps)


@settings(max_examples=150, deadline=None, phases=NO_SHRINK)
@given(
    seed=st.integers(0, 2**32),
    n_tasks=st.integers(40, 400),
    max_fan_in=st.integers(1, 8),
    intensity=st.sampled_from([0.5, 1.0, 3.0]),
)
def test_medium_graphs(seed: int, n_tasks: int, max_fan_in: int, intensity: float) -> None:
    simulate(seed, n_tasks, max_fan_in, intensity, n_steps=800)


@settings(max_examples=6, deadline=None, phases=NO_SHRINK)
@given(seed=st.integers(0, 2**32), n_tasks=st.integers(1500, 2500), max_fan_in=st.integers(1, 6))
def test_large_graphs(seed: int, n_tasks: int, max_fan_in: int) -> None:
    simulate(seed, n_tasks, max_fan_in, 1.0, n_steps=3000)


def test_everything_finishes_without_failures() -> None:
    # No failures at all: every wanted key ends in memory, each task ran once.
    sim = Simulation(random.Random(7), 500, 4, 0.0)
    for _ in range(100):
        sim.step()
    sim.settle()
    sim.check_settled()
    c = sim.c
    for client, keys in c.wants.items():
        for key in keys:
            assert c.state_of(key) == "memory"
    # Each task ran once, except those moved by stealing (sent twice).
    ran = computed_keys(c.history)
    assert len(ran) == len(set(ran)) + c.state.n_steals
    assert c.state.n_recomputed == 0
    sim.release_everything()


# ----------------------------------------------------------------------
# Reference cycles
#
# The core breaks the reference cycles between its records when it forgets
# them, so that a scheduler can run with the cyclic GC relaxed: with the GC
# disabled, whatever the core lets go must be freed by reference counting.


SCHEDULER_TYPES = (TaskState, TaskGroup, TaskPrefix, WorkerState, ClientState)


def cyclic_garbage(scenario: Callable[[], object]) -> list[object]:
    """Scheduler records that ``scenario`` left to the cyclic GC.

    What ``scenario`` returns (the scheduler) is kept alive meanwhile: only
    what the core let go counts.
    """
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        keep = scenario()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            gc.collect()
            garbage = [o for o in gc.garbage if type(o) in SCHEDULER_TYPES]
            gc.garbage.clear()
        finally:
            gc.set_debug(0)
        del keep
    finally:
        if was_enabled:
            gc.enable()
    return garbage


def test_scheduler_records_are_tracked_by_the_gc() -> None:
    # Otherwise the tests below could not see a leak.
    ts = TaskState("x", None, TaskGroup("x", TaskPrefix("x")), 0)
    assert gc.is_tracked(ts)
    assert gc.is_tracked(ts.group)


def test_random_run_leaves_nothing_for_the_cyclic_gc() -> None:
    def scenario() -> Simulation:
        sim = Simulation(random.Random(11), 300, 4, 1.0)
        for _ in range(60):
            sim.step()
        sim.settle()
        sim.check_settled()
        sim.release_everything()
        sim.c.history.clear()
        return sim

    garbage = cyclic_garbage(scenario)
    assert garbage == [], f"{len(garbage)} scheduler records left in reference cycles, e.g. {garbage[:6]}"


def test_forgotten_erred_task_leaves_nothing_for_the_cyclic_gc() -> None:
    def scenario() -> Cluster:
        c = Cluster()
        c.add_worker("a", 1)
        c.submit("c1", {"x": [], "y": ["x"]}, ["y"])
        c.err("x")
        c.release("c1", ["y"])
        c.assert_empty()
        c.history.clear()
        return c

    garbage = cyclic_garbage(scenario)
    assert garbage == [], f"left in reference cycles: {garbage}"


def test_forgotten_group_with_inner_dependencies_leaves_nothing_for_the_cyclic_gc() -> None:
    # inc-1 depends on inc-0: the group "inc" depends on itself.
    def scenario() -> Cluster:
        c = Cluster()
        c.add_worker("a", 1)
        c.submit("c1", {"inc-0": [], "inc-1": ["inc-0"]}, ["inc-1"])
        c.run()
        c.release("c1", ["inc-1"])
        c.assert_empty()
        c.history.clear()
        return c

    garbage = cyclic_garbage(scenario)
    assert garbage == [], f"left in reference cycles: {garbage}"


def test_refused_submissions_leave_nothing_for_the_cyclic_gc() -> None:
    def scenario() -> SchedulerState:
        state = SchedulerState()
        state.handle_events([WorkerAdded("a", 1)])
        state.handle_events([GraphSubmitted("c", [spec("known")], ["known"])])
        for tasks in [
            [spec("a", ["b"]), spec("b", ["a"])],  # cycle
            [spec("x"), spec("y", ["x", "missing"])],  # missing dependency
            [spec("p"), spec("q", ["p", "known"]), spec("known", run_spec="other")],  # conflict
            [spec("s", ["known"]), spec("t", ["s"])],  # wanted key absent
        ]:
            out = state.handle_events([GraphSubmitted("c", tasks, [tasks[-1].key, "absent"])])
            assert len(out) == 1
        assert sorted(state.tasks) == ["known"]
        return state

    garbage = cyclic_garbage(scenario)
    assert garbage == [], f"left in reference cycles: {garbage}"
