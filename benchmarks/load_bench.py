"""Load: hundreds of workers and clients joining one scheduler at once, then a workload; /health polled throughout.

    python benchmarks/load_bench.py                        # 200 workers, 100 clients: dsched, then dask.distributed
    python benchmarks/load_bench.py --systems dsched       # dsched only
    python benchmarks/load_bench.py --workers 50 --clients 20 --tasks 50 --json out.json

What happens, per system, in one fresh set of processes:

1. The scheduler starts in its own process (``dsched scheduler`` / ``dask scheduler``) with its
   HTTP server; a thread here starts fetching ``/health`` every ``1/--hz`` seconds (a new
   connection each time, as a load balancer's probe would), with a 5 s timeout.
2. At once: ``--worker-procs`` processes start ``--workers`` one-thread workers between them,
   and ``--client-procs`` processes open ``--clients`` asynchronous clients between them
   (benchmarks/_load_children.py).  Many workers share a process, as on a real machine they
   share its cores: 200 Python processes would not fit 2 cores, and the scheduler sees 200
   workers either way.  These load processes run at niceness 10 (``--nice``): they stand in
   for other machines, and on 2 cores six busy load processes would otherwise take the
   scheduler's CPU, so that the probes measured the kernel's run queue rather than the
   scheduler (``--nice 0`` shows that too).  Both systems get the same treatment.
3. Once every worker and client is connected, every client at once maps ``inc`` over
   ``--tasks`` inputs of its own, sums them on the cluster, checks the answer and releases it;
   ``--rounds`` times over, so that the probes see the load for long enough to have a 99th
   percentile.

Reported: how long joining and the workload took, whether every answer was right, the
scheduler's CPU time, and /health's latency (median, 99th percentile, max, failures) in each
phase and overall, with dask.distributed's figures and the ratios beside them.  Timeouts and
failed probes count as failures (and as 5 s in the percentiles).  The exit code is non-zero
when a run fails or an answer is wrong, never because of a latency.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, IO
from urllib.parse import urlsplit

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from _runtime_systems import ProcessStats, _tail  # noqa: E402

CHILDREN = BENCH_DIR / "_load_children.py"
PROBE_TIMEOUT_S = 5.0
JOIN_TIMEOUT_S = 300.0


class HealthProbe:
    """A thread fetching ``url`` every ``period`` seconds; each result filed under the current phase."""

    def __init__(self, url: str, period: float) -> None:
        parts = urlsplit(url)
        self.host, self.port, self.path = parts.hostname or "127.0.0.1", parts.port or 80, parts.path
        self.period = period
        self.phase = "idle"
        self.samples: list[tuple[str, float, bool]] = []  # (phase, seconds, ok)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="health-probe", daemon=True)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def probe(self) -> tuple[float, bool]:
        began = time.perf_counter()
        conn = http.client.HTTPConnection(self.host, self.port, timeout=PROBE_TIMEOUT_S)
        try:
            conn.request("GET", self.path)
            response = conn.getresponse()
            response.read()
            ok = response.status == 200
        except OSError:
            ok = False
        finally:
            conn.close()
        return time.perf_counter() - began, ok

    def _run(self) -> None:
        deadline = time.perf_counter()
        while not self._stop.is_set():
            seconds, ok = self.probe()
            self.samples.append((self.phase, seconds if ok else PROBE_TIMEOUT_S, ok))
            deadline = max(deadline + self.period, time.perf_counter())
            self._stop.wait(deadline - time.perf_counter())

    def summary(self, phase: str | None = None) -> dict[str, Any]:
        picked = [(s, ok) for p, s, ok in self.samples if phase is None or p == phase]
        if not picked:
            return {"probes": 0}
        times = sorted(s for s, _ in picked)
        return {
            "probes": len(picked),
            "failures": sum(1 for _, ok in picked if not ok),
            "p50_ms": 1000 * statistics.median(times),
            "p99_ms": 1000 * times[min(len(times) - 1, int(0.99 * len(times)))],
            "max_ms": 1000 * times[-1],
        }


def _spawn(args: list[str], log: Path, *, stdin: bool, nice: int = 0) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(BENCH_DIR), env.get("PYTHONPATH", "")) if p)
    with open(log, "w") as err:
        return subprocess.Popen(
            [sys.executable, *args], env=env, text=True, stdout=subprocess.PIPE, stderr=err,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            preexec_fn=(lambda: os.nice(nice)) if nice else None,  # noqa: PLW1509 - only os.nice runs there
        )


def _start_scheduler(system: str, workdir: Path) -> tuple[subprocess.Popen[str], str, str]:
    """The scheduler process, its address and its /health URL."""
    info_file = workdir / "scheduler.json"
    if system == "dsched":
        args = ["-m", "dsched", "scheduler", "--port", "0", "--dashboard-address", "127.0.0.1:0",
                "--scheduler-file", str(info_file)]
    else:
        args = ["-m", "dask", "scheduler", "--host", "127.0.0.1", "--port", "0",
                "--dashboard-address", "127.0.0.1:0", "--scheduler-file", str(info_file)]
    log = workdir / "scheduler.log"
    process = _spawn(args, log, stdin=False)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the {system} scheduler exited with {process.returncode}:\n{_tail(log)}")
        with contextlib.suppress(FileNotFoundError, ValueError):
            info = json.loads(info_file.read_text())
            if system == "dsched" and info.get("dashboard"):
                base = info["dashboard"].rsplit("/status", 1)[0]
                return process, info["address"], base + "/health"
            if system != "dsched" and info.get("services", {}).get("dashboard"):
                return process, info["address"], f"http://127.0.0.1:{info['services']['dashboard']}/health"
        time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"the {system} scheduler wrote no address within 60 s:\n{_tail(log)}")


def _split(total: int, parts: int) -> list[int]:
    parts = max(1, min(parts, total))
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def _read_json_line(process: subprocess.Popen[str], what: str, log: Path) -> dict[str, Any]:
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line:
        raise RuntimeError(f"{what} ended (exit code {process.wait()}):\n{_tail(log)}")
    reply: dict[str, Any] = json.loads(line)
    return reply


def _close_stdin(process: subprocess.Popen[str]) -> None:
    stdin: IO[str] | None = process.stdin
    if stdin is not None:
        with contextlib.suppress(OSError):
            stdin.close()


def _final_status(system: str, health_url: str, timeout: float = 15.0) -> dict[str, Any] | None:
    """dsched's /api/status once every client has left and the tasks are forgotten (None for dask)."""
    if system != "dsched":
        return None
    parts = urlsplit(health_url)
    deadline = time.monotonic() + timeout
    while True:
        conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=PROBE_TIMEOUT_S)
        try:
            conn.request("GET", "/api/status")
            status = json.loads(conn.getresponse().read())
        finally:
            conn.close()
        if (status["tasks"]["total"] == 0 and status["clients"] == 0) or time.monotonic() > deadline:
            return status
        time.sleep(0.1)


def run_load(
    system: str, *, workers: int, clients: int, tasks: int, worker_procs: int = 4, client_procs: int = 2,
    hz: float = 20.0, nice: int = 0, rounds: int = 1, workdir: Path | None = None,
) -> dict[str, Any]:
    """One run of the load scenario on ``system`` ("dsched" or "dask"); returns its figures."""
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="load-bench-")))
        scheduler, address, health = _start_scheduler(system, workdir)
        children: list[tuple[subprocess.Popen[str], Path]] = []
        try:
            stats = ProcessStats(scheduler.pid)
            with HealthProbe(health, 1.0 / hz) as probe:
                time.sleep(0.5)  # a few probes of the idle scheduler first
                probe.phase, began, cpu0 = "join", time.perf_counter(), stats.cpu_seconds()
                for i, n in enumerate(_split(workers, worker_procs)):
                    log = workdir / f"workers-{i}.log"
                    args = [str(CHILDREN), "workers", system, address, str(n), f"load-{i}-"]
                    children.append((_spawn(args, log, stdin=True, nice=nice), log))
                n_worker_procs = len(children)
                for i, n in enumerate(_split(clients, client_procs)):
                    log = workdir / f"clients-{i}.log"
                    args = [str(CHILDREN), "clients", system, address, str(n), str(tasks), str(rounds)]
                    children.append((_spawn(args, log, stdin=True, nice=nice), log))
                joined = [_read_json_line(p, "a child", log) for p, log in children]
                join_s, cpu1 = time.perf_counter() - began, stats.cpu_seconds()
                probe.phase, began = "workload", time.perf_counter()
                for process, _ in children[n_worker_procs:]:
                    assert process.stdin is not None
                    process.stdin.write("go\n")
                    process.stdin.flush()
                results = [_read_json_line(p, "a client process", log) for p, log in children[n_worker_procs:]]
                workload_s, cpu2 = time.perf_counter() - began, stats.cpu_seconds()
                probe.phase = "after"
                for process, _ in children[n_worker_procs:]:
                    process.wait(timeout=60)  # the clients close and exit once they have answered
                final = _final_status(system, health)
            scheduler_alive = scheduler.poll() is None
        finally:
            for process, _ in children:
                _close_stdin(process)
            for process, _ in children:
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            scheduler.terminate()
            try:
                scheduler.wait(timeout=15)
            except subprocess.TimeoutExpired:
                scheduler.kill()
                scheduler.wait()
    return {
        "system": system, "workers": workers, "clients": clients, "tasks_per_client": tasks, "nice": nice, "rounds": rounds,
        "workers_ready": sum(j.get("ready", 0) for j in joined),
        "clients_connected": sum(j.get("connected", 0) for j in joined),
        "answers_right": sum(r["done"] for r in results),
        "wrong": sum(len(r["wrong"]) for r in results),
        "errors": [e for r in results for e in r["errors"]],
        "join_s": join_s, "workload_s": workload_s,
        "scheduler_cpu_join_s": cpu1 - cpu0, "scheduler_cpu_workload_s": cpu2 - cpu1,
        "scheduler_alive": scheduler_alive,
        "tasks_left": final["tasks"]["total"] if final else None,
        # The longest batch that held dsched's loop: tells the scheduler's own stalls from the OS's.
        "longest_step_ms": final["loop"]["longest_step_ms_1m"] if final else None,
        "health": {phase: probe.summary(phase) for phase in ("idle", "join", "workload", "after")}
        | {"all": probe.summary()},
    }


def _row(name: str, ours: dict[str, Any], theirs: dict[str, Any] | None, key: str, fmt: str = "{:.1f}") -> str:
    a = ours.get(key)
    b = theirs.get(key) if theirs else None
    cells = [fmt.format(a) if a is not None else "-", fmt.format(b) if b is not None else "-"]
    ratio = f"{b / a:.1f}x" if isinstance(a, float | int) and isinstance(b, float | int) and a > 0 else "-"
    return f"| {name} | {cells[0]} | {cells[1]} | {ratio} |"


def report(runs: dict[str, dict[str, Any]]) -> str:
    ours, theirs = runs.get("dsched", {}), runs.get("dask")
    first = ours or theirs or {}
    lines = [
        f"Load: {first.get('workers')} workers and {first.get('clients')} clients joining at once, then "
        f"{first.get('rounds')} rounds of {first.get('tasks_per_client')} tasks + a sum per client; {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}; workers and clients at niceness {first.get('nice')}; "
        f"load average {os.getloadavg()[0]:.1f} at the end",
        "",
        "| measurement | dsched | dask.distributed | dask / dsched |",
        "| --- | --- | --- | --- |",
        _row("all joined (s)", ours, theirs, "join_s", "{:.2f}"),
        _row("workload (s)", ours, theirs, "workload_s", "{:.2f}"),
        _row("scheduler CPU while joining (s)", ours, theirs, "scheduler_cpu_join_s", "{:.2f}"),
        _row("scheduler CPU in the workload (s)", ours, theirs, "scheduler_cpu_workload_s", "{:.2f}"),
        _row("dsched's longest batch on its loop (ms)", ours, None, "longest_step_ms"),
    ]
    for phase in ("join", "workload", "all"):
        h_ours = ours.get("health", {}).get(phase, {})
        h_theirs = theirs.get("health", {}).get(phase, {}) if theirs else None
        for stat in ("p50_ms", "p99_ms", "max_ms"):
            lines.append(_row(f"/health {phase} {stat[:-3]} (ms)", h_ours, h_theirs, stat))
        lines.append(_row(f"/health {phase} probes", h_ours, h_theirs, "probes", "{:.0f}"))
        lines.append(_row(f"/health {phase} failures", h_ours, h_theirs, "failures", "{:.0f}"))
    for name, run in runs.items():
        lines.append(
            f"{name}: {run['workers_ready']} workers ready, {run['clients_connected']} clients connected, "
            f"{run['answers_right']} answers right, {run['wrong']} wrong, {len(run['errors'])} errors"
            + (f" (first: {run['errors'][0]})" if run["errors"] else "")
            + (f"; {run['tasks_left']} tasks left after the clients left" if run["tasks_left"] is not None else "")
            + ("" if run["scheduler_alive"] else "; THE SCHEDULER DIED")
        )
    p99 = ours.get("health", {}).get("all", {}).get("p99_ms")
    if p99 is not None:
        lines.append(f"TARGET /health p99 <= 100 ms throughout: {p99:.1f} ms: {'PASS' if p99 <= 100 else 'MISS'}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--systems", default="dsched,dask")
    parser.add_argument("--workers", type=int, default=200)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--tasks", type=int, default=100, help="tasks per client (plus one sum)")
    parser.add_argument("--worker-procs", type=int, default=4)
    parser.add_argument("--client-procs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5, help="workload rounds (every client at once, each time)")
    parser.add_argument("--hz", type=float, default=50.0, help="/health probes per second")
    parser.add_argument("--nice", type=int, default=10,
                        help="run the workers' and clients' processes at this niceness (10: the scheduler "
                             "gets a core first, as on a machine of its own)")
    parser.add_argument("--json", dest="json_path", type=Path)
    args = parser.parse_args()
    runs: dict[str, dict[str, Any]] = {}
    failed = False
    for system in args.systems.split(","):
        print(f"[{system}] {args.workers} workers, {args.clients} clients ...", flush=True)
        try:
            runs[system] = run_load(system, workers=args.workers, clients=args.clients, tasks=args.tasks,
                                    worker_procs=args.worker_procs, client_procs=args.client_procs, hz=args.hz,
                                    nice=args.nice, rounds=args.rounds)
        except Exception as exc:  # one system failing must not hide the other's figures
            print(f"[{system}] FAILED: {exc}", flush=True)
            failed = True
            continue
        run = runs[system]
        failed |= bool(run["wrong"] or run["errors"] or not run["scheduler_alive"])
        print(f"[{system}] joined in {run['join_s']:.2f} s, workload {run['workload_s']:.2f} s, "
              f"/health p99 {run['health']['all'].get('p99_ms', float('nan')):.1f} ms", flush=True)
    print()
    print(report(runs))
    if args.json_path:
        args.json_path.write_text(json.dumps(runs, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
