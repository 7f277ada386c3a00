"""Flow control under network latency: a discrete-event simulation around the core.

``core_bench.py`` measures what the scheduler core costs; this measures what
its decisions do.  A simulated cluster (simulated time, no I/O) runs many
short root tasks through one ``SchedulerState`` while every message takes half
a round trip to arrive, and reports how busy the workers' threads were and how
many tasks each worker held at once.

Two policies are compared on the same workloads:

* ``adaptive``: the core's default, which sizes each worker's queue from the
  measured task duration and round-trip latency (``max_queue_depth=64``);
* ``fixed 2/thread``: the same core capped at two tasks per thread
  (``max_queue_depth=2``), which is roughly what dask.distributed's default
  root-task queuing does.

The thread-utilisation column shows whether short tasks became latency-bound;
the "most held" column shows that long tasks still get shallow queues (what
keeps memory low on reductions).

    python benchmarks/flow_sim.py            # about 1 s compiled, 3 s interpreted
"""

from __future__ import annotations

import argparse
import heapq
import itertools

import sched_core as sc

HEARTBEAT_INTERVAL = 0.1  # simulated seconds


class Simulation:
    """One scheduler, ``n_workers`` workers of ``nthreads`` threads, one client."""

    def __init__(self, n_workers: int, nthreads: int, rtt: float, max_queue_depth: int) -> None:
        self.state = sc.SchedulerState(max_queue_depth=max_queue_depth)
        self.rtt = rtt
        self.now = 0.0
        self._events: list[tuple[float, int, str, object]] = []
        self._sequence = itertools.count()
        self.workers = [f"w{i}" for i in range(n_workers)]
        self.nthreads = nthreads
        # Per worker: tasks received and not yet started, threads busy, tasks held.
        self.ready: dict[str, list[tuple[int, int, sc.ComputeTask]]] = {w: [] for w in self.workers}
        self.busy: dict[str, int] = {w: 0 for w in self.workers}
        self.held: dict[str, int] = {w: 0 for w in self.workers}
        self.most_held = 0
        self.busy_time = 0.0
        self.n_done = 0
        self.duration = 0.0
        self._apply(self.state.handle_events([sc.WorkerAdded(w, nthreads) for w in self.workers]))

    def _at(self, when: float, kind: str, payload: object) -> None:
        heapq.heappush(self._events, (when, next(self._sequence), kind, payload))

    def _apply(self, instructions: list[sc.Instruction]) -> None:
        released: list[str] = []
        for instruction in instructions:
            if isinstance(instruction, sc.ComputeTask):
                self._at(self.now + self.rtt / 2, "compute", instruction)
            elif isinstance(instruction, sc.ClientKeysInMemory):
                released.extend(instruction.keys)
        if released:  # the client drops its futures as soon as they are done
            self._at(self.now, "to-scheduler", sc.ClientReleasesKeys("client", released))

    def _start_work(self, worker: str) -> None:
        queue = self.ready[worker]
        while queue and self.busy[worker] < self.nthreads:
            instruction = heapq.heappop(queue)[2]
            self.busy[worker] += 1
            self.busy_time += self.duration
            self._at(self.now + self.duration, "done", instruction)

    def run(self, n_tasks: int, duration: float) -> float:
        """Submit ``n_tasks`` independent tasks of ``duration`` seconds; return the makespan."""
        self.duration = duration
        specs = [sc.TaskSpec(f"work-{i}", [], b"f") for i in range(n_tasks)]
        self._apply(self.state.handle_events([sc.GraphSubmitted("client", specs, [s.key for s in specs])]))
        for worker in self.workers:
            self._at(HEARTBEAT_INTERVAL, "heartbeat", worker)
        while self._events and self.n_done < n_tasks:
            self.now, _, kind, payload = heapq.heappop(self._events)
            if kind == "compute":
                assert isinstance(payload, sc.ComputeTask)
                worker = payload.worker
                self.held[worker] += 1
                self.most_held = max(self.most_held, self.held[worker])
                heapq.heappush(self.ready[worker], (payload.priority, payload.run_id, payload))
                self._start_work(worker)
            elif kind == "done":
                assert isinstance(payload, sc.ComputeTask)
                worker = payload.worker
                self.busy[worker] -= 1
                self.held[worker] -= 1
                self.n_done += 1
                finished = sc.TaskFinished(worker, payload.key, 28, duration, payload.run_id)
                self._at(self.now + self.rtt / 2, "to-scheduler", finished)
                self._start_work(worker)
            elif kind == "heartbeat":
                assert isinstance(payload, str)
                self._at(self.now + self.rtt / 2, "to-scheduler", sc.WorkerHeartbeat(payload, self.rtt))
                self._at(self.now + HEARTBEAT_INTERVAL, "heartbeat", payload)
            else:
                assert isinstance(payload, sc.SchedulerEvent)
                self._apply(self.state.handle_events([payload]))
        return self.now


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=20_000, help="tasks per short-task workload")
    args = parser.parse_args()
    print(f"sched_core {'compiled' if sc.COMPILED else 'interpreted'}; simulated time, no I/O")
    print("workload: independent tasks on 2 workers x 1 thread; every message takes rtt/2\n")
    header = f"{'task':>8} {'rtt':>7} {'policy':>15} {'tasks/s':>9} {'thread busy':>12} {'most held':>10}"
    print(header)
    print("-" * len(header))
    cases = [
        (50e-6, 1e-3, args.tasks),
        (200e-6, 1e-3, args.tasks),
        (1e-3, 2e-3, args.tasks // 4),
        (0.1, 1e-3, 200),
    ]
    for duration, rtt, n_tasks in cases:
        for label, depth in (("adaptive", 64), ("fixed 2/thread", 2)):
            sim = Simulation(2, 1, rtt, depth)
            makespan = sim.run(n_tasks, duration)
            utilisation = sim.busy_time / (makespan * 2)
            print(
                f"{duration * 1e3:>6.2f}ms {rtt * 1e3:>5.1f}ms {label:>15} "
                f"{n_tasks / makespan:>9,.0f} {utilisation:>11.0%} {sim.most_held:>10}"
            )
    print("\nthread busy = simulated busy thread-seconds / (makespan x threads); most held = largest number")
    print("of tasks one worker held at once (received, not finished): the bound on queued-ahead results.")


if __name__ == "__main__":
    main()
