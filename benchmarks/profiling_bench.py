"""What profiling and the dashboard cost: runtime workloads with both off, and with both on, in one run.

    python benchmarks/profiling_bench.py                 # (a), (b), (d): 5 runs of each configuration
    python benchmarks/profiling_bench.py --quick         # a smoke run
    python benchmarks/profiling_bench.py --only a,d --runs 7 --json out.json
    python benchmarks/profiling_bench.py --only b --configs off,on,samplers,dashboard   # which half costs
    python benchmarks/profiling_bench.py --only d --d-workers 32                        # fewer in-process workers
    python benchmarks/profiling_bench.py --only b --interval 0.05                      # samplers every 50 ms
    python benchmarks/profiling_bench.py --only d --poller thread                      # poll from a thread here

Configurations (see _profiling_setups.py):
  off  no sampler in the scheduler or the workers, no dashboard
  on   samplers at the default 10 ms interval in the scheduler and every worker, the dashboard
       served, and a poller (a process of its own, as a browser; --poller thread: a thread here)
       fetching what the /status page fetches, every second (plus the
       scheduler's profile tree every 5 s), for the whole run
  samplers, dashboard (with --configs): each half of "on" alone
  scheduler-sampler, worker-samplers (with --configs): the samplers of one side alone

Workloads (the runtime benchmark's, docs/benchmarks.md):
  (a) map + gather of 10,000 trivial tasks, 2 worker processes x 1 thread
  (b) the tree reduction of 10,003 tasks (sum of 8 at a time), ``get``, on the same cluster shape
  (d) map + gather of 10,000 trivial tasks on 128 in-process workers (a SchedulerServer and
      Workers built here: LocalCluster(processes=False) cannot turn their samplers off)

A run is one fresh process (this script with ``--child``) that starts a cluster
in one configuration, warms it up, then times the workload ``--inner`` times
(the run's figure: the median of those).  Runs alternate off, on, off, on, ...
so that drift of the machine's load hits both alike; the report quotes the
median of each configuration's runs and the overhead (off - on) / off, against
the target of at most 5%.  The exit code is non-zero when a run fails or
returns a wrong result, never because the target is missed.

Run it with an installed (compiled) dsched, from outside the source tree, so
that neither this process nor ``python -m dsched`` imports the uncompiled sources.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from _profiling_setups import CONFIGS, PROFILE_INTERVAL

WORKLOADS = "abd"
DEFAULT_CONFIGS = "off,on"
DEFAULT_RUNS = 5
DEFAULT_INNER = 3
MAX_OVERHEAD = 0.05
RESULT_PREFIX = "PROFILING_BENCH_RESULT "
TITLES = {
    "a": "(a) map+gather {n:,} tasks, 2 worker procs x 1 thread",
    "b": "(b) tree reduction ~{n:,} tasks (sum of 8), get",
    "d": "(d) map+gather {n:,} tasks, {workers} in-process workers",
}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def plan(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every run, workload by workload, the configurations alternating."""
    n = 1_000 if args.quick else 10_000
    workers = {"a": 2, "b": 2, "d": args.d_workers}
    return [
        {"workload": w, "config": config, "n": n, "workers": workers[w], "inner": args.inner, "run": i,
         "interval": args.interval, "poller": args.poller}
        for w in WORKLOADS if w in args.only
        for i in range(args.runs)
        for config in args.configs
    ]


# --- one run, in a fresh process -------------------------------------------------------


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Start the cluster in ``spec['config']``, warm up, time the workload ``spec['inner']`` times."""
    from _profiling_setups import DashboardPoller, PollerProcess, inprocess_setup, subprocess_setup
    from _runtime_measure import RUNNERS, _settle, warmup_size

    runner = RUNNERS[spec["workload"]]
    make = inprocess_setup if spec["workload"] == "d" else subprocess_setup
    seconds: list[float] = []
    settle: list[float] = []
    began = time.perf_counter()
    with make(spec["config"], spec["workers"], spec["interval"]) as setup:
        start_s = time.perf_counter() - began
        cpu: dict[str, list[float]] = {name: [] for name in setup.processes}
        poller_class = PollerProcess if spec["poller"] == "process" else DashboardPoller
        poller = poller_class(setup.dashboard) if setup.dashboard else None
        with poller if poller is not None else nullcontext():
            client = setup.cluster.client
            runner(client, warmup_size(spec["n"]), 0)
            _settle(setup.cluster)
            for tag in range(1, spec["inner"] + 1):
                before = {name: stats.cpu_seconds() for name, stats in setup.processes.items()}
                seconds.append(runner(client, spec["n"], tag))
                for name, stats in setup.processes.items():
                    cpu[name].append(stats.cpu_seconds() - before[name])
                settle.append(_settle(setup.cluster))
        samplers = setup.sampler_stats()
    return {"spec": spec, "seconds": seconds, "start_s": start_s, "cpu_s": cpu, "settle_s": settle,
            "samplers": samplers,
            "poller": poller.summary() if poller is not None else None, "versions": versions()}


def versions() -> dict[str, Any]:
    import dsched
    import sched_core

    return {"dsched": dsched.__version__, "sched_core_compiled": bool(sched_core.COMPILED),
            "dsched_file": dsched.__file__, "python": sys.executable}


def _describe(exc: BaseException) -> str:
    """The innermost error of a chain of one-exception groups (what a task group raises)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"


def child_main(spec_json: str) -> int:
    from _runtime_measure import WrongResult

    spec = json.loads(spec_json)
    try:
        result = measure(spec)
    except WrongResult as exc:
        result = {"spec": spec, "error": str(exc), "wrong": True}
    except Exception as exc:  # reported by the parent, with the log tail
        import traceback

        traceback.print_exc()
        result = {"spec": spec, "error": _describe(exc), "wrong": False}
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0 if "error" not in result else 3


def run_child(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """One run in a fresh process (its own session, so that a timeout kills its cluster too)."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    with tempfile.TemporaryFile() as stderr:
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, start_new_session=True)
        try:
            stdout, _ = child.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.communicate()
            return {"spec": spec, "error": f"timed out after {timeout:.0f} s", "wrong": False}
        stderr.seek(0)
        errors = stderr.read().decode(errors="replace")
    for line in stdout.decode(errors="replace").splitlines():
        if line.startswith(RESULT_PREFIX):
            result: dict[str, Any] = json.loads(line[len(RESULT_PREFIX):])
            return result
    tail = "\n".join(errors.splitlines()[-25:])
    return {"spec": spec, "error": f"exit code {child.returncode}, no result:\n{tail}", "wrong": False}


# --- the report ------------------------------------------------------------------------


def n_tasks(spec: dict[str, Any]) -> int:
    if spec["workload"] != "b":
        return int(spec["n"])
    from _runtime_workloads import tree_graph

    return len(tree_graph(spec["n"], 0)[0])


def run_throughput(result: dict[str, Any]) -> float:
    """A run's figure: tasks/s of the median of its timed repetitions."""
    return n_tasks(result["spec"]) / float(statistics.median(result["seconds"]))


def _cpu_us(results: list[dict[str, Any]]) -> dict[str, float]:
    """Median CPU microseconds per task of each process kind over the runs (workers summed)."""
    per_kind: dict[str, list[float]] = {}
    for r in results:
        tasks = n_tasks(r["spec"])
        kinds: dict[str, list[float]] = {}
        for name, values in r["cpu_s"].items():
            kind = "workers" if name.startswith("worker-") else name
            kinds.setdefault(kind, []).append(statistics.median(values))
        for kind, values in kinds.items():
            per_kind.setdefault(kind, []).append(sum(values) * 1e6 / tasks)
    return {kind: statistics.median(values) for kind, values in per_kind.items()}


def _poll_costs(results: list[dict[str, Any]]) -> dict[str, Any]:
    requests: dict[str, int] = {}
    seconds: dict[str, float] = {}
    errors = 0
    for r in results:
        poller = r.get("poller") or {}
        errors += poller.get("n_errors", 0)
        for name, count in poller.get("requests", {}).items():
            requests[name] = requests.get(name, 0) + count
            seconds[name] = seconds.get(name, 0.0) + poller["seconds"][name]
    return {"requests": sum(requests.values()), "errors": errors,
            "ms": {name: 1e3 * seconds[name] / requests[name] for name in requests}}


def _sampler_share(results: list[dict[str, Any]]) -> float | None:
    """Median over runs of all samplers' CPU seconds per second (in-process runs only)."""
    shares = [sum(s["busy_s"] / s["running_s"] for s in r["samplers"] if s["running_s"] > 0)
              for r in results if r.get("samplers")]
    return statistics.median(shares) if shares else None


def build_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per workload and configuration other than off, each against off."""
    rows = []
    for workload in WORKLOADS:
        mine = [r for r in results if r["spec"]["workload"] == workload]
        configs = [c for c in CONFIGS if c != "off" and any(r["spec"]["config"] == c for r in mine)]
        for config in configs:
            rows.append(_row(workload, config, [r for r in mine if r["spec"]["config"] in ("off", config)]))
    return rows


def _row(workload: str, config: str, results: list[dict[str, Any]]) -> dict[str, Any]:
    pair = ("off", config)
    ok = {c: [r for r in results if r["spec"]["config"] == c and "error" not in r] for c in pair}
    failed = {c: [r["error"] for r in results if r["spec"]["config"] == c and "error" in r] for c in pair}
    figures = {c: [run_throughput(r) for r in ok[c]] for c in pair}
    medians = {c: statistics.median(v) if v else None for c, v in figures.items()}
    off, on = medians["off"], medians[config]
    overhead = (off - on) / off if off and on else None
    runs_of = {c: {r["spec"]["run"]: run_throughput(r) for r in ok[c]} for c in pair}
    paired = [(runs_of["off"][i] - runs_of[config][i]) / runs_of["off"][i]
              for i in sorted(set(runs_of["off"]) & set(runs_of[config]))]
    spec = results[0]["spec"]
    title = TITLES[workload].format(n=n_tasks(spec), workers=spec["workers"])
    return {
        "workload": title if config == "on" else f"{title}: {config} only",
        "key": workload, "config": config, "figures": figures, "medians": medians, "overhead": overhead,
        "interval": _bootstrap_interval(figures["off"], figures[config]), "paired": paired, "failed": failed,
        "status": _status(overhead, figures, failed[config]) if config == "on" else "-",
        "start_s": {c: statistics.median(r["start_s"] for r in ok[c]) if ok[c] else None for c in pair},
        "cpu_us": {c: _cpu_us(ok[c]) for c in pair if ok[c]},
        "poll": _poll_costs(ok[config]), "sampler_share": _sampler_share(ok[config]),
    }


def _bootstrap_interval(off: list[float], on: list[float], rounds: int = 2_000) -> tuple[float, float] | None:
    """A 90% bootstrap interval of the overhead of the medians: how far the noise of the runs
    alone could move it (each configuration's runs resampled with replacement; a fixed seed)."""
    if len(off) < 3 or len(on) < 3:
        return None
    rng = random.Random(0)
    overheads = []
    for _ in range(rounds):
        off_median = statistics.median(rng.choices(off, k=len(off)))
        overheads.append((off_median - statistics.median(rng.choices(on, k=len(on)))) / off_median)
    overheads.sort()
    return overheads[int(0.05 * rounds)], overheads[int(0.95 * rounds) - 1]


def _status(overhead: float | None, figures: dict[str, list[float]], failed: list[str]) -> str:
    if figures["off"] and failed:  # a run that profiling broke: the worst overhead there is
        return "FAIL"
    if overhead is None:
        return "n/a"
    return "PASS" if overhead <= MAX_OVERHEAD else "FAIL"


def _spread(values: list[float]) -> str:
    if not values:
        return "-"
    half_range = (max(values) - min(values)) / 2 / statistics.median(values)
    return f"{min(values):,.0f}..{max(values):,.0f} (±{half_range:.1%})"


def _failure(errors: list[str]) -> str:
    """A configuration without a successful run: the first error, on one line."""
    return "failed: " + errors[0].splitlines()[-1][:160] if errors else "-"


def _us(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1%}"


def print_report(rows: list[dict[str, Any]], info: dict[str, Any], errors: list[str]) -> None:
    print(f"\nProfiling overhead: {info['cpus']} CPUs, Python {info['python']}, {info['platform']}; load average "
          f"{info['load_start']} at the start, {info['load_end']} at the end; {info['seconds']:.0f} s in all")
    print(f"versions: {info['versions']}")
    print(f"samplers every {info['interval'] * 1e3:g} ms, dashboard poller in a {info['poller']}; "
          f"{info['runs']} runs per configuration, alternating "
          f"{'/'.join(info['configs'])}; a run = a fresh cluster, {info['inner']} timed repetitions, its median; "
          "MEDIAN of the runs; overhead = (off - on) / off")
    if info["quick"]:
        print("--quick: 1,000 tasks; the target is defined at full size (indicative only)")
    print("overhead (a to b): the 90% bootstrap interval of the overhead, from the spread of the runs alone")
    print("\n| workload | off | on (or the config named) | overhead | target | status | "
          "paired overheads (median; min..max) | runs ok |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        m, paired = row["medians"], row["paired"]
        pairs = f"{_pct(statistics.median(paired))}; {_pct(min(paired))}..{_pct(max(paired))}" if paired else "-"
        cells = [row["workload"]] + [f"{m[c]:,.0f}/s" if m[c] else _failure(row["failed"][c]) for c in m]
        target = f"<= {MAX_OVERHEAD:.0%}" if row["config"] == "on" else "-"
        ok = ", ".join(f"{c} {len(row['figures'][c])}/{len(row['figures'][c]) + len(row['failed'][c])}" for c in m)
        interval = row["interval"]
        noise = f" ({_pct(interval[0])}..{_pct(interval[1])})" if interval else ""
        cells += [_pct(row["overhead"]) + noise, target, row["status"], pairs, ok]
        print("| " + " | ".join(cells) + " |")
    print("\n| workload | config | off runs (tasks/s): min..max (± half-range / median) | its runs | "
          "cluster start s off/it | CPU us/task off -> it | sampler CPU (s/s, all samplers) | "
          "dashboard polls (mean ms) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        cpu, config = row["cpu_us"], row["config"]
        kinds = sorted(set(cpu.get("off", {})) | set(cpu.get(config, {})))
        cost = ", ".join(f"{k} {_us(cpu.get('off', {}).get(k))} -> {_us(cpu.get(config, {}).get(k))}" for k in kinds)
        poll = row["poll"]
        polls = (f"{poll['requests']} requests, {poll['errors']} errors; "
                 + ", ".join(f"{name.removeprefix('api/')} {ms:.1f}" for name, ms in poll["ms"].items()))
        share = "-" if row["sampler_share"] is None else f"{row['sampler_share']:.2f}"
        start = "/".join("-" if v is None else f"{v:.1f}" for v in row["start_s"].values())
        print(f"| {row['key']} | {config} | {_spread(row['figures']['off'])} | {_spread(row['figures'][config])} | "
              f"{start} | {cost} | {share} | {polls} |")
    print("\nTARGET (a report, not a test: a FAIL does not change the exit code)")
    for row in rows:
        if row["config"] == "on":
                print(f"  {row['status']:<4}  {row['workload']}: overhead {_pct(row['overhead'])} "
                  f"(target <= {MAX_OVERHEAD:.0%})")
    if errors:
        print("\nERRORS")
        for error in errors:
            print(f"  {error}")


# --- driver ----------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1,000 tasks, 1 run of each, 1 repetition: a smoke run")
    parser.add_argument("--runs", type=int, default=None, help=f"runs per configuration (default {DEFAULT_RUNS})")
    parser.add_argument("--inner", type=int, default=None,
                        help=f"timed repetitions per run (default {DEFAULT_INNER})")
    parser.add_argument("--only", default=WORKLOADS, help="workloads to run, e.g. a,d (default: a,b,d)")
    parser.add_argument("--configs", default=DEFAULT_CONFIGS,
                        help=f"configurations, alternated in this order; off is the baseline "
                        f"(default {DEFAULT_CONFIGS}; also: samplers, dashboard: each half of on alone; "
                             "scheduler-sampler, worker-samplers: one side's samplers alone)")
    parser.add_argument("--interval", type=float, default=PROFILE_INTERVAL,
                        help=f"the samplers' interval in seconds (default {PROFILE_INTERVAL}: dsched's default)")
    parser.add_argument("--poller", choices=("thread", "process"), default="process",
                        help="poll the dashboard from a process of its own, as a browser would (default), or "
                        "from a thread of the benchmark's process (for (d): the cluster's own process)")
    parser.add_argument("--d-workers", type=int, default=128, help="in-process workers of (d) (default 128)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds before a run is killed")
    parser.add_argument("--json", dest="json_path", default=None, help="also write the results as JSON")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.only = {w for w in args.only.replace(",", "") if w.strip()}
    if args.only - set(WORKLOADS):
        parser.error(f"unknown workload(s) {sorted(args.only - set(WORKLOADS))}; choose from a, b, d")
    args.configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    if "off" not in args.configs or set(args.configs) - set(CONFIGS) or len(set(args.configs)) != len(args.configs):
        parser.error(f"--configs: off and some of {', '.join(c for c in CONFIGS if c != 'off')}, each once")
    args.runs = args.runs if args.runs is not None else (1 if args.quick else DEFAULT_RUNS)
    args.inner = args.inner if args.inner is not None else (1 if args.quick else DEFAULT_INNER)
    if args.runs < 1 or args.inner < 1 or not args.interval > 0:
        parser.error("--runs and --inner must be at least 1, --interval above 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child is not None:
        return child_main(args.child)
    specs = plan(args)
    info: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(),
                            "cpus": os.cpu_count(), "load_start": os.getloadavg()[0], "runs": args.runs,
                            "inner": args.inner, "quick": args.quick, "configs": args.configs,
                            "interval": args.interval, "poller": args.poller}
    log(f"profiling benchmark: {len(specs)} runs, each in a fresh process; {info['cpus']} CPUs, "
        f"load average {info['load_start']}")
    started = time.perf_counter()
    results = []
    for i, spec in enumerate(specs, 1):
        t0 = time.perf_counter()
        result = run_child(spec, args.timeout)
        results.append(result)
        head = f"[{i}/{len(specs)}] ({spec['workload']}) {spec['config']:<9} run {spec['run'] + 1}"
        if "error" in result:
            log(f"{head}: ERROR {result['error']} ({time.perf_counter() - t0:.0f} s)")
        else:
            runs = ", ".join(f"{s:.3f}" for s in result["seconds"])
            log(f"{head}: {run_throughput(result):,.0f} tasks/s  (s: {runs}; {time.perf_counter() - t0:.0f} s)")
    info["seconds"] = time.perf_counter() - started
    info["load_end"] = os.getloadavg()[0]
    info["versions"] = next((r["versions"] for r in results if "versions" in r), {})
    if info["versions"] and not info["versions"].get("sched_core_compiled"):
        log("WARNING: sched_core is not compiled: these are not the figures of a compiled install")
    rows = build_rows(results)
    errors = [f"({r['spec']['workload']}) {r['spec']['config']} run {r['spec']['run'] + 1}: {r['error']}"
              for r in results if "error" in r]
    print_report(rows, info, errors)
    if args.json_path:
        Path(args.json_path).write_text(json.dumps({"machine": info, "results": results, "rows": rows}, indent=1))
        log(f"wrote {args.json_path}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
