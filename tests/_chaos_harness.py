"""Chaos testing: a layered graph computed while worker processes are SIGKILLed and replaced.

Used by ``tests/test_chaos.py`` (a CI-sized run) and ``benchmarks/chaos.py``
(longer runs by hand).  The scheduler runs in this process (an in-process
``LocalCluster`` with no workers of its own), so that its core can be read and
validated; the workers are ``python -m dsched worker`` child processes, so that
they can be killed for real.

The graph (``layered_graph``), for ``n`` inputs:

* ``base-i`` (4 tasks): inputs shared by a whole layer;
* ``a-j = j + base-(j % 4)`` (n tasks);
* ``b-j = a-j + a-((j + 1) % n)`` (n tasks): neighbours, often on other workers,
  so results move between workers;
* ``s-L-i = sum(two of level L-1)``: a pairwise tree reduction over the ``b``
  layer (about n tasks), down to one root.

``expected_results`` computes the same values locally.  The client holds every
``b`` key and every reduction level, so a lost result must be recomputed or
fetched from a surviving replica, never silently dropped.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from dsched._cluster import LocalCluster
from dsched._procs import ChildProcess

N_SHARED = 4


def kill_own_worker(*inputs: object) -> None:
    """A task that crashes its worker every time (as a segfaulting extension would)."""
    os.kill(os.getpid(), signal.SIGKILL)


def after_killer(*inputs: object) -> object:
    return inputs


def layered_graph(n: int) -> tuple[dict[str, Any], list[str]]:
    """The graph (Dask's tuple format) and the keys a client should hold (see the module doc)."""
    from operator import add

    dsk: dict[str, Any] = {}
    for i in range(N_SHARED):
        dsk[f"base-{i}"] = 1000 * (i + 1)
    for j in range(n):
        dsk[f"a-{j}"] = (add, j, f"base-{j % N_SHARED}")
    for j in range(n):
        dsk[f"b-{j}"] = (add, f"a-{j}", f"a-{(j + 1) % n}")
    wanted = [f"b-{j}" for j in range(n)]
    level = wanted
    depth = 0
    while len(level) > 1:
        depth += 1
        nxt = []
        for i in range(0, len(level), 2):
            key = f"s-{depth}-{i // 2}"
            dsk[key] = (sum, level[i : i + 2])
            nxt.append(key)
        wanted.extend(nxt)
        level = nxt
    return dsk, wanted


def expected_results(n: int) -> dict[str, int]:
    """The values of ``layered_graph(n)``'s wanted keys, computed here."""
    a = [j + 1000 * (j % N_SHARED + 1) for j in range(n)]
    out: dict[str, int] = {}
    level_values = [a[j] + a[(j + 1) % n] for j in range(n)]
    for j, v in enumerate(level_values):
        out[f"b-{j}"] = v
    depth = 0
    while len(level_values) > 1:
        depth += 1
        level_values = [sum(level_values[i : i + 2]) for i in range(0, len(level_values), 2)]
        for i, v in enumerate(level_values):
            out[f"s-{depth}-{i}"] = v
    return out


class ChaosCluster:
    """An in-process scheduler and worker processes that can be killed and replaced.

    ``target`` workers are kept running: :meth:`top_up` starts replacements for
    the dead.  Workers are named ``w0``, ``w1``, ... in start order.
    """

    def __init__(self, target: int, *, allowed_failures: int = 3, nthreads: int = 1) -> None:
        self.target = target
        self.nthreads = nthreads
        self.cluster = LocalCluster(
            n_workers=0, processes=False, allowed_failures=allowed_failures,
            dashboard_address=None, profile_interval=None,
        )
        self.children: list[ChildProcess] = []
        self._next = 0
        self._lock = threading.Lock()

    @property
    def address(self) -> str:
        return self.cluster.scheduler_address

    def on_loop(self, func: Callable[[], Any]) -> Any:
        """Run ``func`` on the scheduler's event loop (where its state may be read safely)."""
        loop = self.cluster._loop
        assert loop is not None
        return loop.call(func)

    @property
    def server(self) -> Any:
        return self.cluster._backend.server

    def live(self) -> list[ChildProcess]:
        with self._lock:
            return [c for c in self.children if c.alive()]

    def start_worker(self) -> ChildProcess:
        with self._lock:
            name = f"w{self._next}"
            self._next += 1
        args = [
            sys.executable, "-P", "-m", "dsched", "--log-level", "critical", "worker", self.address,
            "--name", name, "--nthreads", str(self.nthreads), "--profile-interval", "0",
        ]
        # The cluster's secret (if it has one) reaches the worker through its environment.
        security = getattr(self.cluster, "security", None)
        extra = {"env": security.environment()} if security is not None else {}
        child = ChildProcess(name, args, echo=False, **extra)
        with self._lock:
            self.children.append(child)
        return child

    def top_up(self) -> int:
        """Start workers until ``target`` are alive (or starting); how many were started."""
        missing = self.target - len(self.live())
        for _ in range(missing):
            self.start_worker()
        return max(missing, 0)

    def n_registered(self) -> int:
        return int(self.on_loop(lambda: len(self.server.state.workers)))

    def wait_for_workers(self, n: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while self.n_registered() < n:
            if time.monotonic() > deadline:
                logs = "\n".join(c.describe_exit() for c in self.children)
                raise TimeoutError(f"fewer than {n} workers registered within {timeout}s:\n{logs}")
            time.sleep(0.05)

    def close(self) -> None:
        from dsched._procs import stop_all

        stop_all(self.children, timeout=5.0)
        self.cluster.close()

    def __enter__(self) -> ChaosCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Monkey:
    """SIGKILLs ``kills`` random registered workers as the graph progresses, and keeps the cluster topped up.

    The schedule is seeded and tied to progress, not to time: kill ``i`` comes
    once the scheduler has seen a seeded random share (2% to 90%) of
    ``total_tasks`` tasks finish, at least ``min_gap`` seconds after the last,
    so every kill lands while the graph is computed, on a fast machine or a
    loaded one.  Runs in a thread between :meth:`start` and :meth:`stop`.
    ``kills`` counts its SIGKILLs; ``deaths`` every worker that died while it
    ran (those killed by a task included); ``started`` the replacements.
    """

    def __init__(
        self, chaos: ChaosCluster, seed: int, *, kills: int, total_tasks: int, min_gap: float = 0.1
    ) -> None:
        self.chaos = chaos
        rng = random.Random(seed)
        self.rng = rng
        self.thresholds = sorted(int(rng.uniform(0.02, 0.9) * total_tasks) for _ in range(kills))
        self.min_gap = min_gap
        self.kills = 0
        self.deaths = 0
        self.started = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-monkey", daemon=True)
        self._seen_dead: set[int] = set()

    def start(self) -> Monkey:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        try:
            last_kill = 0.0
            while not self._stop.wait(0.02):
                self._count_deaths()
                due = self.kills < len(self.thresholds) and time.monotonic() - last_kill >= self.min_gap
                if due and self._progress() >= self.thresholds[self.kills]:
                    victims = self._registered()
                    if victims:
                        victim = self.rng.choice(victims)
                        victim.signal(signal.SIGKILL)
                        victim.popen.wait()
                        self.kills += 1
                        last_kill = time.monotonic()
                self.started += self.chaos.top_up()
            self._count_deaths()
        except BaseException as exc:  # reported by the test, not lost in a thread
            self.error = exc

    def _progress(self) -> int:
        return int(self.chaos.on_loop(lambda: self.chaos.server.state.n_tasks_finished))

    def _registered(self) -> list[ChildProcess]:
        """Live workers the scheduler knows (they may hold results), in start order."""
        names = set(self.chaos.on_loop(lambda: [ws.name for ws in self.chaos.server.state.workers.values()]))
        return [c for c in self.chaos.live() if c.name in names]

    def _count_deaths(self) -> None:
        for child in self.chaos.children:
            if not child.alive() and child.pid not in self._seen_dead:
                self._seen_dead.add(child.pid)
                self.deaths += 1


class ChaosReport:
    """What one chaos run did and found (see :func:`run_chaos`)."""

    def __init__(self) -> None:
        self.n_tasks = 0
        self.elapsed = 0.0
        self.kills = 0
        self.kills_before_root = -1
        self.deaths = 0
        self.started = 0
        self.wrong: dict[str, tuple[object, object]] = {}  # key: (got, expected)
        self.unfinished = 0
        self.killer_error: BaseException | None = None
        self.after_killer_error: BaseException | None = None
        self.leftovers: dict[str, int] = {}
        self.monkey_error: BaseException | None = None

    def summary(self) -> str:
        return (
            f"{self.n_tasks} tasks in {self.elapsed:.1f}s: {self.kills} SIGKILLs by the monkey "
            f"({self.kills_before_root} before the graph's root finished), "
            f"{self.deaths} worker deaths, {self.started} workers started; {len(self.wrong)} wrong results, "
            f"{self.unfinished} unfinished; killer: {type(self.killer_error).__name__}; "
            f"left over after release: {self.leftovers}"
        )


def leftovers(chaos: ChaosCluster) -> dict[str, int]:
    """What the scheduler and its workers still hold; validates the core's state (on its loop)."""
    import sched_core as sc

    def read() -> dict[str, int]:
        state = chaos.server.state
        sc.validate_state(state)
        return {
            "tasks": len(state.tasks),
            "who_has": sum(len(ws.has_what) for ws in state.workers.values()),
            "processing": sum(len(ws.processing) for ws in state.workers.values()),
            "wants": sum(len(cs.wants) for cs in state.clients.values()),
            "queued": len(state.queue),
            "unrunnable": len(state.unrunnable),
            "reported_in_memory": sum(conn.in_memory for conn in chaos.server.workers.values()),
        }

    return dict(chaos.on_loop(read))


def wait_for_nothing_left(chaos: ChaosCluster, timeout: float) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    left = leftovers(chaos)
    while any(left.values()) and time.monotonic() < deadline:
        time.sleep(0.2)
        left = leftovers(chaos)
    return left


def run_chaos(
    n_inputs: int,
    *,
    workers: int = 4,
    kills: int = 12,
    seed: int = 0,
    allowed_failures: int = 3,
    timeout: float = 300.0,
) -> ChaosReport:
    """Compute ``layered_graph(n_inputs)`` plus a task that kills its worker, under ``kills`` SIGKILLs.

    The killer depends on the reduction's root, so it runs once the graph is
    done: the deaths it causes count against it alone.  The monkey's kills
    land while the graph is computed (see :class:`Monkey`); ``kills_before_root``
    says how many had when the root finished.
    """
    from dsched._as_completed import wait
    from dsched._client import Client

    report = ChaosReport()
    dsk, wanted = layered_graph(n_inputs)
    root = wanted[-1]
    dsk["killer"] = (kill_own_worker, root)
    dsk["after-killer"] = (after_killer, "killer", root)
    report.n_tasks = len(dsk)
    expected = expected_results(n_inputs)
    with ChaosCluster(workers, allowed_failures=allowed_failures) as chaos:
        chaos.top_up()
        chaos.wait_for_workers(workers)
        with Client(chaos.cluster) as client:
            monkey = Monkey(chaos, seed, kills=kills, total_tasks=len(dsk)).start()
            started = time.monotonic()
            try:
                futures = client.get(dsk, [*wanted, "killer", "after-killer"], sync=False)
                futures[len(wanted) - 1].add_done_callback(lambda _: setattr(report, "kills_before_root", monkey.kills))
                done, not_done = wait(futures, timeout=timeout)
                report.elapsed = time.monotonic() - started
                report.unfinished = len(not_done)
                *graph_futures, killer, after = futures
                report.killer_error = killer.exception(timeout=1) if killer.done() else None
                report.after_killer_error = after.exception(timeout=1) if after.done() else None
                good = [f for f in graph_futures if f.status == "finished"]
                values = dict(zip([f.key for f in good], client.gather(good)))
                for key, value in expected.items():
                    if values.get(key) != value:
                        report.wrong[key] = (values.get(key), value)
            finally:
                monkey.stop()
            report.kills, report.deaths, report.started = monkey.kills, monkey.deaths, monkey.started
            report.monkey_error = monkey.error
            # The client lets go of everything (releases go out as its futures are dropped).
            del futures, graph_futures, good, killer, after, done, not_done
            report.leftovers = wait_for_nothing_left(chaos, timeout=30)
    return report
