"""The dsched runtime side by side with dask.distributed: same machine, same run, same workers.

    python benchmarks/runtime_bench.py                 # everything, 3 runs each, medians
    python benchmarks/runtime_bench.py --quick --no-dask
    python benchmarks/runtime_bench.py --only a,c --repeat 5 --json out.json

Workloads (see docs/benchmarks.md):
  (a) 10,000 and 100,000 trivial independent tasks, ``map`` + ``gather``, 2 worker processes x 1 thread
  (b) a tree reduction of 10,003 tasks (sum of 8 at a time) with ``get``
  (c) a chain of 2,000 tasks with ``get``: steps/s and ms per step
  (d) 10,000 trivial tasks on 2, 32 and 128 in-process workers (LocalCluster(processes=False))
  (e) the scheduler process's CPU time per task on (a), and its memory after
      the 100,000-task run was released, against idle

Each measurement runs in a fresh process (this script with ``--child``) that
starts its own cluster, warms it up once, then runs the workload ``--repeat``
times; the report quotes medians.  dask runs twice: with its defaults and
tuned (worker-saturation = inf, set where its scheduler runs).  The exit code
is non-zero when a dsched run fails or returns a wrong result, never because a
target is missed (those print PASS / MISS).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _runtime_report import Report, build_report, print_report
from _runtime_systems import SATURATION_ENV, SYSTEMS

DEFAULT_REPEAT = 3
# dask's default scheduler does ~600 tasks/s: one 100,000-task run takes minutes.
DEFAULT_DASK_LARGE_REPEAT = 1
LARGE_TASKS = 50_000
RESULT_PREFIX = "RUNTIME_BENCH_RESULT "
WORKLOADS = "abcde"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def sizes(quick: bool) -> dict[str, Any]:
    if quick:
        return {"a": [1_000, 10_000], "b": 1_000, "c": 200, "d": 1_000, "d_workers": [2, 32, 128]}
    return {"a": [10_000, 100_000], "b": 10_000, "c": 2_000, "d": 10_000, "d_workers": [2, 32, 128]}


def plan(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every measurement to run, workload by workload, systems interleaved."""
    systems = [s for s in SYSTEMS if s in args.systems and not (args.no_dask and s != "dsched")]
    size = sizes(args.quick)
    repeat = args.repeat if args.repeat is not None else (1 if args.quick else DEFAULT_REPEAT)
    specs: list[dict[str, Any]] = []

    def add(workload: str, n: int, workers: int) -> None:
        for system in systems:
            if n >= LARGE_TASKS and system not in args.large_systems:
                continue
            runs = repeat
            if system != "dsched":
                runs = args.dask_repeat if args.dask_repeat is not None else repeat
                if n >= LARGE_TASKS:
                    runs = min(runs, args.dask_large_repeat)
            quiet = workload == "a" and n == max(size["a"])  # (e)'s memory reading
            specs.append({"workload": workload, "system": system, "n": n, "workers": workers, "repeats": runs,
                          "quiet": quiet})

    if "a" in args.only or "e" in args.only:  # (e) reads the scheduler during (a)
        for n in size["a"]:
            add("a", n, 2)
    if "b" in args.only:
        add("b", size["b"], 2)
    if "c" in args.only:
        add("c", size["c"], 2)
    if "d" in args.only:
        for workers in size["d_workers"]:
            add("d", size["d"], workers)
    return specs


def timeout_for(spec: dict[str, Any]) -> float:
    """Generous: a stuck run is killed, a slow one (dask at ~500 tasks/s) is not."""
    per_task = 0.002 if spec["system"] == "dsched" else 0.01
    tasks = int(spec["n"]) * (int(spec["repeats"]) + 1)
    return 180.0 + tasks * per_task * (1 + int(spec["workers"]) / 32)


def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one measurement in a fresh process (its own session, so a timeout kills its cluster too)."""
    env = dict(os.environ)
    env.pop(SATURATION_ENV, None)  # "default" means dask's default; tuned sets it itself
    command = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    started = time.perf_counter()
    with tempfile.TemporaryFile() as stderr:
        child = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=stderr, start_new_session=True)
        try:
            stdout, _ = child.communicate(timeout=timeout_for(spec))
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.communicate()
            return {"spec": spec, "error": f"timed out after {timeout_for(spec):.0f} s", "wrong": False}
        stderr.seek(0)
        errors = stderr.read().decode(errors="replace")
    for line in stdout.decode(errors="replace").splitlines():
        if line.startswith(RESULT_PREFIX):
            result: dict[str, Any] = json.loads(line[len(RESULT_PREFIX):])
            result["wall_s"] = time.perf_counter() - started
            return result
    tail = "\n".join(errors.splitlines()[-25:])
    return {"spec": spec, "error": f"exit code {child.returncode}, no result:\n{tail}", "wrong": False}


def child_main(spec_json: str) -> int:
    """``--child``: one measurement; prints one result line on stdout."""
    from _runtime_measure import WrongResult, measure

    spec = json.loads(spec_json)
    result: dict[str, Any]
    try:
        result = dict(measure(spec))
        result["versions"] = versions(spec["system"])
    except WrongResult as exc:
        result = {"spec": spec, "error": str(exc), "wrong": True}
    except Exception as exc:  # reported by the parent, with the log tail
        import traceback

        traceback.print_exc()
        result = {"spec": spec, "error": f"{type(exc).__name__}: {exc}", "wrong": False}
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0 if "error" not in result else 3


def versions(system: str) -> dict[str, Any]:
    if system == "dsched":
        import dsched
        import sched_core

        return {"dsched": dsched.__version__, "sched_core_compiled": bool(sched_core.COMPILED),
                "dsched_file": dsched.__file__}
    from importlib.metadata import version

    return {"dask": version("dask"), "distributed": version("distributed")}


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def _systems(parser: argparse.ArgumentParser, text: str) -> list[str]:
    systems = [s.strip() for s in text.split(",") if s.strip()]
    if set(systems) - set(SYSTEMS):
        parser.error(f"unknown system(s) {sorted(set(systems) - set(SYSTEMS))}; choose from {', '.join(SYSTEMS)}")
    return systems


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, 1 run each: a smoke run")
    parser.add_argument("--repeat", type=int, default=None,
                        help=f"measured runs per measurement (default {DEFAULT_REPEAT}; --quick 1)")
    parser.add_argument("--dask-repeat", type=int, default=None,
                        help="measured runs per dask measurement (default: as --repeat); nox -s bench uses 1")
    parser.add_argument("--dask-large-repeat", type=int, default=DEFAULT_DASK_LARGE_REPEAT,
                        help=f"at most this many dask runs of {LARGE_TASKS:,}+ tasks "
                        f"(default {DEFAULT_DASK_LARGE_REPEAT})")
    parser.add_argument("--large-systems", default=",".join(SYSTEMS),
                        help=f"systems that run the {LARGE_TASKS:,}+ task sizes (default: all; "
                        "nox -s bench leaves out dask-default, whose one 100,000-task run takes 3-4 minutes)")
    parser.add_argument("--only", default=WORKLOADS, help="workloads to run, e.g. a,c (default: all)")
    parser.add_argument("--no-dask", action="store_true", help="measure dsched only")
    parser.add_argument("--systems", default=",".join(SYSTEMS),
                        help=f"systems to measure (default: {','.join(SYSTEMS)})")
    parser.add_argument("--json", dest="json_path", default=None, help="also write the results as JSON")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.only = {w for w in args.only.replace(",", "") if w.strip()}
    args.systems = _systems(parser, args.systems)
    args.large_systems = _systems(parser, args.large_systems)
    unknown = args.only - set(WORKLOADS)
    if unknown:
        parser.error(f"unknown workload(s) {sorted(unknown)}; choose from {', '.join(WORKLOADS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child is not None:
        return child_main(args.child)
    specs = plan(args)
    info = machine()
    log(f"runtime benchmark: {len(specs)} measurement(s), each in a fresh process; "
        f"{info['cpus']} CPUs, load average {info['load_avg_1m']}")
    started = time.perf_counter()
    results = []
    for i, spec in enumerate(specs, 1):
        log(f"[{i}/{len(specs)}] ({spec['workload']}) {spec['system']}: n={spec['n']:,}, "
            f"{spec['workers']} workers, {spec['repeats']} run(s) ...")
        result = run_child(spec)
        results.append(result)
        if "error" in result:
            log(f"    ERROR: {result['error']}")
        else:
            runs = ", ".join(f"{s:.3f}" for s in result["seconds"])
            log(f"    runs (s): {runs}  [{result['wall_s']:.0f} s in all]")
    info["seconds"] = time.perf_counter() - started
    report: Report = build_report(results, args.only, quick=args.quick)
    print_report(report, info)
    if args.json_path:
        document = {"machine": info, "results": results, "rows": report["rows"]}
        Path(args.json_path).write_text(json.dumps(document, indent=1))
        log(f"wrote {args.json_path}")
    failed = [r for r in results if "error" in r and r["spec"]["system"] == "dsched"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
