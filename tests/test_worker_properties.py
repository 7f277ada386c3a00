"""Property tests of the worker state machine.

A small simulation surrounds one ``WorkerMachine``: a runtime (data store,
threads, transfers), a scheduler (sends compute requests, frees keys, answers
MissingDep by recomputing the key on a peer) and peers (hold data, die, get
busy, lose keys).  Random sequences of actions are applied; after every batch
``validate()`` runs and the simulation checks that

* an Execute happens only when all of the task's dependencies are in the data
  store (and in state memory), never twice at once, never beyond nthreads;
* at most one GatherDep per peer and at most ``transfer_peers`` are in flight;
* no dependency of a running task is released;
* every compute request is reported (finished or erred) exactly once unless
  freed first, and is reported eventually once the world settles;
* after freeing every key, no state remains, and the data store is empty.
"""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)

from sched_core._worker import WorkerMachine
from sched_core._worker_events import (
    AddReplicaMsg,
    ComputeTaskEvent,
    Execute,
    ExecuteFailureEvent,
    ExecuteSuccessEvent,
    FreeKeysEvent,
    GatherDep,
    GatherDepBusyEvent,
    GatherDepFailureEvent,
    GatherDepMissingEvent,
    GatherDepSuccessEvent,
    MissingDep,
    PauseEvent,
    ReleaseData,
    RemoveReplicasEvent,
    RetryBusyWorkerEvent,
    RetryBusyWorkerLater,
    StealRequestEvent,
    StealResponseMsg,
    TaskErredMsg,
    TaskFinishedMsg,
    UnpauseEvent,
    UpdateWhoHasEvent,
    WorkerEvent,
    WorkerMachineInstruction,
)

ME = "me"


class Graph:
    """A random DAG: some keys computed here ("local"), the rest held by peers."""

    def __init__(self, rng: random.Random, n: int, n_peers: int) -> None:
        self.keys = [f"t{i}" for i in range(n)]
        self.deps: dict[str, list[str]] = {}
        self.local: list[str] = []
        self.sizes: dict[str, int] = {}
        self.holders: dict[str, list[str]] = {}
        self.resources: dict[str, dict[str, float] | None] = {}
        peers = [f"p{i}" for i in range(n_peers)]
        for i, k in enumerate(self.keys):
            earlier = self.keys[:i]
            self.deps[k] = rng.sample(earlier, min(len(earlier), rng.randint(0, 3)))
            self.sizes[k] = rng.choice([1, 10, 100, 1000])
            if i > 0 and rng.random() < 0.6:
                self.local.append(k)
            else:
                self.holders[k] = rng.sample(peers, rng.randint(1, 2))
            self.resources[k] = {"R": 1.0} if rng.random() < 0.15 else None
        if not self.local:
            self.local.append(self.keys[-1])
            self.holders.pop(self.keys[-1], None)
        self.dependents: dict[str, list[str]] = {k: [] for k in self.keys}
        for k, ds in self.deps.items():
            for d in ds:
                self.dependents[d].append(k)


class Sim:
    def __init__(
        self,
        graph: Graph,
        nthreads: int,
        transfer_bytes: int,
        transfer_peers: int,
        keep_fetched: bool,
        n_peers: int,
    ) -> None:
        self.g = graph
        self.nthreads = nthreads
        self.transfer_peers = transfer_peers
        self.m = WorkerMachine(
            ME,
            nthreads=nthreads,
            resources={"R": 2.0},
            transfer_message_bytes=transfer_bytes,
            transfer_peers=transfer_peers,
            keep_fetched=keep_fetched,
        )
        self.peer_data: dict[str, set[str]] = {f"p{i}": set() for i in range(n_peers)}
        for k, hs in graph.holders.items():
            for p in hs:
                self.peer_data[p].add(k)
        self.dead: set[str] = set()
        self.store: dict[str, int] = {}
        self.running: set[str] = set()
        self.gathers: dict[str, list[str]] = {}
        self.retry: set[str] = set()
        self.outstanding: dict[str, bool] = {}
        self.erred: set[str] = set()
        self.here: set[str] = set()  # keys the scheduler believes are here
        self.mentioned: set[str] = set()
        self.queue: list[WorkerEvent] = []  # scheduler messages not yet delivered
        self.missing: list[tuple[str, str]] = []  # MissingDep to answer
        self.n_reports = 0

    # -- plumbing -----------------------------------------------------------

    def send(self, events: list[WorkerEvent]) -> None:
        for ev in events:
            if isinstance(ev, FreeKeysEvent):
                for k in ev.keys:
                    self.outstanding[k] = False
                    self.here.discard(k)
                    self.erred.discard(k)
        out = self.m.handle_events(events)
        self.m.validate()
        self.process(out)

    def process(self, out: list[WorkerMachineInstruction]) -> None:
        g = self.g
        for ins in out:
            if isinstance(ins, Execute):
                k = ins.key
                assert k in g.local, k
                assert ins.run_spec == ("spec", k)
                assert k not in self.running, f"{k} executed twice at once"
                assert len(self.running) < self.nthreads, "too many threads"
                for d in g.deps[k]:
                    assert d in self.store, f"{k} executed before {d} was here"
                    assert self.m.state_of(d) == "memory", (k, d)
                self.running.add(k)
            elif isinstance(ins, GatherDep):
                assert ins.peer not in self.gathers, "two requests to one peer"
                assert len(self.gathers) < self.transfer_peers
                assert ins.keys and len(set(ins.keys)) == len(ins.keys)
                assert ins.peer != ME
                self.gathers[ins.peer] = list(ins.keys)
            elif isinstance(ins, ReleaseData):
                for r in self.running:
                    assert ins.key not in g.deps[r], f"released {ins.key} used by {r}"
                self.store.pop(ins.key, None)
            elif isinstance(ins, TaskFinishedMsg):
                k = ins.key
                assert self.outstanding.get(k), f"unexpected report of {k}"
                self.outstanding[k] = False
                self.n_reports += 1
                assert k in self.store
                assert ins.nbytes == self.store[k]
                self.erred.discard(k)
                self.here.add(k)
            elif isinstance(ins, TaskErredMsg):
                k = ins.key
                assert self.outstanding.get(k), f"unexpected error report of {k}"
                self.outstanding[k] = False
                self.n_reports += 1
                self.erred.add(k)
                # the scheduler gives up on the local dependents
                todo = list(g.dependents[k])
                freed: list[str] = []
                while todo:
                    d = todo.pop()
                    if d in self.mentioned and d in g.local and d not in freed:
                        freed.append(d)
                        todo.extend(g.dependents[d])
                if freed:
                    self.queue.append(FreeKeysEvent(freed))
            elif isinstance(ins, MissingDep):
                self.missing.append((ins.key, ins.errant_worker))
            elif isinstance(ins, AddReplicaMsg):
                assert ins.key in self.store
                self.here.add(ins.key)
            elif isinstance(ins, StealResponseMsg):
                if ins.state in ("waiting", "ready"):
                    self.outstanding[ins.key] = False
            elif isinstance(ins, RetryBusyWorkerLater):
                self.retry.add(ins.peer)
            else:
                raise AssertionError(f"unexpected instruction {ins!r}")

    def alive_holders(self, k: str) -> list[str]:
        return [p for p in sorted(self.peer_data) if k in self.peer_data[p]]

    def new_peer(self) -> str:
        p = f"p{len(self.peer_data)}"
        self.peer_data[p] = set()
        return p

    # -- actions (each takes ints to pick among candidates) -----------------

    def compute(self, i: int, stale: bool) -> None:
        g = self.g
        k = g.local[i % len(g.local)]
        if any(d in self.erred for d in g.deps[k]) or k in self.erred:
            return  # the scheduler would not send it
        who_has: dict[str, list[str]] = {}
        for d in g.deps[k]:
            hs = self.alive_holders(d)
            if d in self.here:
                hs = [ME] + hs
            if stale and self.dead:
                hs = hs + [sorted(self.dead)[0]]
            who_has[d] = hs
            self.mentioned.add(d)
        self.mentioned.add(k)
        self.outstanding[k] = True
        nbytes = {d: g.sizes[d] for d in g.deps[k]}
        prio = g.keys.index(k)
        self.send([ComputeTaskEvent(k, ("spec", k), prio, who_has, nbytes, g.resources[k])])

    def finish(self, i: int, success: bool) -> None:
        if not self.running:
            return
        k = sorted(self.running)[i % len(self.running)]
        self.running.remove(k)
        if success:
            self.store[k] = self.g.sizes[k]
            self.send([ExecuteSuccessEvent(k, self.g.sizes[k], 0.0, 1.0)])
        else:
            self.send([ExecuteFailureEvent(k, ValueError(k), None, 0.0, 1.0)])

    def respond(self, i: int, kind: int) -> None:
        """kind 0: truthful; 1: peer dies; 2: busy; 3: peer lost the keys;
        4: peer lost some keys, answers truthfully."""
        if not self.gathers:
            return
        peer = sorted(self.gathers)[i % len(self.gathers)]
        keys = self.gathers.pop(peer)
        data = self.peer_data[peer]
        if kind == 4:
            for k in keys[::2]:
                data.discard(k)
            kind = 0
        if kind == 0 and peer in self.dead:
            kind = 1
        if kind == 0:
            received = {k: self.g.sizes[k] for k in keys if k in data}
            self.store.update(received)
            self.send([GatherDepSuccessEvent(peer, received)])
        elif kind == 1:
            self.dead.add(peer)
            data.clear()
            self.send([GatherDepFailureEvent(peer, keys)])
        elif kind == 2:
            self.send([GatherDepBusyEvent(peer, keys)])
        else:
            for k in keys:
                data.discard(k)
            self.send([GatherDepMissingEvent(peer, keys)])

    def retry_busy(self, i: int) -> None:
        if self.retry:
            p = sorted(self.retry)[i % len(self.retry)]
            self.retry.discard(p)
            self.send([RetryBusyWorkerEvent(p)])

    def deliver(self) -> None:
        """Deliver queued scheduler messages and answer MissingDep."""
        events = self.queue
        self.queue = []
        missing = self.missing
        self.missing = []
        for k, errant in missing:
            if errant:
                self.peer_data[errant].discard(k)
            hs = self.alive_holders(k)
            if not hs:
                alive = [p for p in sorted(self.peer_data) if p not in self.dead]
                p = alive[0] if alive else self.new_peer()
                self.peer_data[p].add(k)  # "recomputed" there
                hs = [p]
            events.append(UpdateWhoHasEvent({k: hs}))
        if events:
            self.send(events)

    def free(self, picks: list[int]) -> None:
        if not self.mentioned:
            return
        ks = sorted(self.mentioned)
        self.queue.append(FreeKeysEvent([ks[i % len(ks)] for i in picks]))

    def remove_replica(self, i: int) -> None:
        cands = sorted(k for k in self.here if not self.outstanding.get(k))
        if cands:
            k = cands[i % len(cands)]
            self.here.discard(k)
            self.send([RemoveReplicasEvent([k])])

    def steal(self, i: int) -> None:
        g = self.g
        self.send([StealRequestEvent(g.local[i % len(g.local)])])

    def pause(self, paused: bool) -> None:
        self.send([PauseEvent() if paused else UnpauseEvent()])

    def update_who_has(self, i: int) -> None:
        ks = sorted(self.mentioned)
        if ks:
            k = ks[i % len(ks)]
            self.send([UpdateWhoHasEvent({k: self.alive_holders(k)})])

    def noise(self, i: int, kind: int) -> None:
        """Odd-but-possible events: stale completions, unsolicited answers."""
        keys = self.g.keys
        k = keys[i % len(keys)]
        idle = sorted(p for p in self.peer_data if p not in self.gathers)
        if kind == 0:
            if k not in self.running:
                self.send([ExecuteSuccessEvent(k, 1, 0.0, 1.0)])
        elif kind == 1:
            if k not in self.running:
                self.send([ExecuteFailureEvent(k, None, None, 0.0, 1.0)])
        elif idle:
            p = idle[i % len(idle)]
            if kind == 2 and p not in self.dead:
                received = {x: self.g.sizes[x] for x in sorted(self.peer_data[p])[:2]}
                self.store.update(received)
                self.send([GatherDepSuccessEvent(p, received)])
            elif kind == 3:
                self.send([GatherDepMissingEvent(p, [k])])
            elif kind == 4:
                self.send([GatherDepBusyEvent(p, [k])])

    # -- settling and teardown ----------------------------------------------

    def drain(self) -> None:
        """Let the world settle: every thread and transfer finishes truthfully."""
        for _ in range(10_000):
            progressed = False
            if self.m.paused:
                self.pause(False)
                progressed = True
            if self.queue or self.missing:
                self.deliver()
                progressed = True
            if self.running:
                ks = sorted(self.running)
                self.running.clear()
                for k in ks:
                    self.store[k] = self.g.sizes[k]
                self.send([ExecuteSuccessEvent(k, self.g.sizes[k], 0.0, 1.0) for k in ks])
                progressed = True
            while self.gathers:
                self.respond(0, 0)
                progressed = True
            if self.retry:
                ps = sorted(self.retry)
                self.retry.clear()
                self.send([RetryBusyWorkerEvent(p) for p in ps])
                progressed = True
            if not progressed:
                return
        raise AssertionError("simulation did not settle")

    def check_final(self) -> None:
        self.drain()
        stuck = sorted(k for k, v in self.outstanding.items() if v)
        assert not stuck, (
            f"never reported: {stuck}",
            {k: self.m.state_of(k) for k in stuck},
        )
        everything = sorted(set(self.g.keys) | self.mentioned)
        self.send([FreeKeysEvent(everything)])
        self.drain()
        self.send([FreeKeysEvent(everything)])
        self.drain()
        m = self.m
        assert m.tasks == {}, m.tasks
        assert not self.store, f"data leaked in the store: {sorted(self.store)}"
        assert m.running == {} and m.in_flight == {} and m.has_what == {}
        assert m.data_needed == {} and m.data_needed_count == {}
        assert m.ready == [] and m.constrained == [] and m.stray == set()
        assert m.n_ready == m.n_constrained == m.n_fetch == 0
        assert m.nbytes_in_memory == 0 and m.bytes_in_flight == 0
        assert m.available_resources == {"R": 2.0}


# ---------------------------------------------------------------------------
# Hypothesis rule-based state machine
# ---------------------------------------------------------------------------


class WorkerMachineTest(RuleBasedStateMachine):
    sim: Sim

    @initialize(
        seed=st.integers(0, 2**16),
        n=st.integers(2, 10),
        nthreads=st.integers(1, 3),
        transfer_bytes=st.sampled_from([1, 500, 50_000_000]),
        transfer_peers=st.integers(1, 3),
        keep_fetched=st.booleans(),
    )
    def setup(
        self,
        seed: int,
        n: int,
        nthreads: int,
        transfer_bytes: int,
        transfer_peers: int,
        keep_fetched: bool,
    ) -> None:
        g = Graph(random.Random(seed), n, 3)
        self.sim = Sim(g, nthreads, transfer_bytes, transfer_peers, keep_fetched, 3)

    @rule(i=st.integers(0, 50), stale=st.booleans())
    def compute(self, i: int, stale: bool) -> None:
        self.sim.compute(i, stale)

    @rule(i=st.integers(0, 50), success=st.booleans())
    def finish(self, i: int, success: bool) -> None:
        self.sim.finish(i, success)

    @rule(i=st.integers(0, 50), kind=st.sampled_from([0, 0, 0, 1, 2, 3, 4]))
    def respond(self, i: int, kind: int) -> None:
        self.sim.respond(i, kind)

    @rule(i=st.integers(0, 50))
    def retry_busy(self, i: int) -> None:
        self.sim.retry_busy(i)

    @rule()
    def deliver(self) -> None:
        self.sim.deliver()

    @rule(picks=st.lists(st.integers(0, 50), min_size=1, max_size=4))
    def free(self, picks: list[int]) -> None:
        self.sim.free(picks)

    @rule(i=st.integers(0, 50))
    def remove_replica(self, i: int) -> None:
        self.sim.remove_replica(i)

    @rule(i=st.integers(0, 50))
    def steal(self, i: int) -> None:
        self.sim.steal(i)

    @rule(paused=st.booleans())
    def pause(self, paused: bool) -> None:
        self.sim.pause(paused)

    @rule(i=st.integers(0, 50))
    def update_who_has(self, i: int) -> None:
        self.sim.update_who_has(i)

    @rule(i=st.integers(0, 50), kind=st.integers(0, 4))
    def noise(self, i: int, kind: int) -> None:
        self.sim.noise(i, kind)

    @invariant()
    def thread_limit(self) -> None:
        if hasattr(self, "sim"):
            assert len(self.sim.running) <= self.sim.nthreads

    def teardown(self) -> None:
        if hasattr(self, "sim"):
            self.sim.check_final()


WorkerMachineTest.TestCase.settings = settings(
    max_examples=300, stateful_step_count=50, deadline=None
)
TestWorkerMachineStateful = WorkerMachineTest.TestCase


# ---------------------------------------------------------------------------
# Seeded random walks: longer sequences, bigger graphs
# ---------------------------------------------------------------------------


def random_walk(seed: int, steps: int) -> Sim:
    rng = random.Random(seed)
    g = Graph(rng, rng.randint(5, 40), 4)
    sim = Sim(
        g,
        nthreads=rng.randint(1, 4),
        transfer_bytes=rng.choice([1, 300, 50_000_000]),
        transfer_peers=rng.randint(1, 4),
        keep_fetched=rng.random() < 0.5,
        n_peers=4,
    )
    weights = [20, 20, 20, 3, 6, 3, 1, 2, 2, 2, 3]
    for _ in range(steps):
        action = rng.choices(range(len(weights)), weights)[0]
        i = rng.randint(0, 1000)
        if action == 0:
            sim.compute(i, rng.random() < 0.2)
        elif action == 1:
            sim.finish(i, rng.random() < 0.85)
        elif action == 2:
            sim.respond(i, rng.choice([0, 0, 0, 0, 0, 1, 2, 3, 4]))
        elif action == 3:
            sim.retry_busy(i)
        elif action == 4:
            sim.deliver()
        elif action == 5:
            sim.free([rng.randint(0, 1000) for _ in range(rng.randint(1, 5))])
        elif action == 6:
            sim.remove_replica(i)
        elif action == 7:
            sim.steal(i)
        elif action == 8:
            sim.pause(rng.random() < 0.5)
        elif action == 9:
            sim.update_who_has(i)
        else:
            sim.noise(i, rng.randint(0, 4))
    sim.check_final()
    return sim


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_random_walk(seed: int) -> None:
    random_walk(seed, 300)


def test_random_walks_make_progress() -> None:
    """Sanity check of the simulation itself: work does get reported."""
    total = 0
    for seed in range(20):
        total += random_walk(seed, 200).n_reports
    assert total > 100


_REPLAY = """
import random, sys
sys.path.insert(0, {tests!r})
import test_worker_properties as T
logs = []
orig = T.Sim.process
def process(self, out):
    logs.append(repr(out))
    orig(self, out)
T.Sim.process = process
T.random_walk({seed}, 300)
print(hash("x"), len(logs), __import__("zlib").crc32("\\n".join(logs).encode()))
"""


def test_deterministic_across_hash_seeds() -> None:
    """The same events give the same instructions whatever the hash seed."""
    import os
    import subprocess
    import sys

    import sched_core

    tests_dir = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(os.path.dirname(os.path.abspath(sched_core.__file__)))
    results = []
    for hashseed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=hashseed)
        env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")])
        code = _REPLAY.format(tests=tests_dir, seed=12345)
        res = subprocess.run(
            [sys.executable, "-c", code],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            cwd=tests_dir,
        )
        results.append(res.stdout.split())
    assert results[0][0] != results[1][0]  # the hash seeds did differ
    assert results[0][1:] == results[1][1:]
