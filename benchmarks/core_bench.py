"""Benchmark the sched_core scheduler, compiled (mypyc) against interpreted.

Drives ``SchedulerState.handle_events`` directly, with no I/O: a simulated
cluster finishes every task it is sent and the client releases every key as
soon as it is in memory, until the scheduler is empty (submit, place, finish,
release: the whole lifecycle is measured).  See benchmarks/README.md.

    python benchmarks/core_bench.py [--quick]        # the sched_core this Python imports
    python benchmarks/core_bench.py --compiled-python VENV/bin/python \\
        --interpreted-python VENV2/bin/python        # both modes, one table (nox -s bench)

With ``--compiled-python``/``--interpreted-python`` the script runs itself in
each interpreter (``--json --expect-mode MODE``; PYTHONPATH is dropped so the
interpreter's installed sched_core is measured) and combines the results.  The
exit code is 0 even when a target is missed: this is a report, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import TypedDict, cast

DEFAULT_REPEATS = 3
DEFAULT_INTERPRETED_REPEATS = 3
QUICK_SCALE = 10
# Targets, checked against the compiled core with the cyclic GC off.
MAX_US_PER_TASK = 3.0
MIN_SPEEDUP = 2.5
MAX_BYTES_PER_TASK = 1024
MAX_WIDE_RATIO = 1.25


class Timing(TypedDict):
    core_us: list[float]  # per task, one value per run
    wall_us: list[float]


class Memory(TypedDict):
    peak_bytes: int
    held_bytes: int
    left_bytes: int
    cycles: int


class WorkloadResult(TypedDict):
    key: str
    title: str
    n_tasks: int
    repeats: int
    calls: int
    max_batch: int
    gc_off: Timing
    gc_default: Timing
    memory: Memory | None


class ModeResult(TypedDict):
    mode: str  # "compiled" or "interpreted"
    sched_core_file: str
    python: str
    quick: bool
    seconds: float
    load: float  # 1-minute load average when the run started (-1 where unknown)
    workloads: list[WorkloadResult]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def mode_name(compiled: bool) -> str:
    return "compiled" if compiled else "interpreted"


def repeats_for(args: argparse.Namespace, compiled: bool) -> int:
    chosen: int | None = args.repeats if compiled else (args.interpreted_repeats or args.repeats)
    if chosen is not None:
        return chosen
    if args.quick:
        return 1
    return DEFAULT_REPEATS if compiled else DEFAULT_INTERPRETED_REPEATS


# ----------------------------------------------------------------------
# Measuring, in this interpreter


def run_here(args: argparse.Namespace) -> ModeResult:
    import sched_core
    from _core_workloads import run, workloads

    mode = mode_name(sched_core.COMPILED)
    if args.expect_mode is not None and mode != args.expect_mode:
        sys.exit(f"expected the {args.expect_mode} sched_core, but {sys.executable} imports the {mode} one "
                 f"from {sched_core.__file__}")
    repeats = repeats_for(args, sched_core.COMPILED)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else -1.0
    started = time.perf_counter()
    log(f"[{mode}] sched_core from {sched_core.__file__}; {repeats} run(s) per gc setting")
    results: list[WorkloadResult] = []
    for workload in workloads(QUICK_SCALE if args.quick else 1):
        if workload.key not in args.workloads:
            continue
        n = workload.n_tasks()
        log(f"[{mode}] {workload.title()}")
        timings: dict[bool, Timing] = {False: {"core_us": [], "wall_us": []}, True: {"core_us": [], "wall_us": []}}
        calls = max_batch = 0
        for i in range(repeats):
            for gc_enabled in (False, True):
                timed = run(workload, gc_enabled)
                timing = timings[gc_enabled]
                timing["core_us"].append(timed.core_s * 1e6 / n)
                timing["wall_us"].append(timed.wall_s * 1e6 / n)
                calls, max_batch = timed.calls, timed.max_batch
                log(f"[{mode}] ({workload.key}) run {i + 1}/{repeats} gc {'default' if gc_enabled else 'off'}: "
                    f"core {timing['core_us'][-1]:.2f} us/task, with driver {timing['wall_us'][-1]:.2f} us/task")
        memory: Memory | None = None
        if not args.skip_memory:
            t0 = time.perf_counter()
            traced = run(workload, gc_enabled=False, trace_memory=True)
            memory = {"peak_bytes": traced.peak_bytes, "held_bytes": traced.held_bytes,
                      "left_bytes": traced.left_bytes, "cycles": traced.cycles}
            log(f"[{mode}] ({workload.key}) tracemalloc: peak {traced.peak_bytes / n:.0f} B/task "
                f"({time.perf_counter() - t0:.1f} s)")
        results.append({"key": workload.key, "title": workload.title(), "n_tasks": n, "repeats": repeats,
                        "calls": calls, "max_batch": max_batch, "gc_off": timings[False],
                        "gc_default": timings[True], "memory": memory})
    return {"mode": mode, "sched_core_file": sched_core.__file__ or "?", "python": platform.python_version(),
            "quick": args.quick, "seconds": time.perf_counter() - started, "load": load, "workloads": results}


def run_child(python: str, mode: str, args: argparse.Namespace) -> ModeResult:
    """Run this script in ``python`` and return its results; stop if it fails."""
    command = [python, os.path.abspath(__file__), "--json", "--expect-mode", mode,
               "--repeats", str(repeats_for(args, mode == "compiled")), "--workloads", args.workloads]
    if args.quick:
        command.append("--quick")
    if args.skip_memory:
        command.append("--skip-memory")
    env = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
    log(f"running the {mode} benchmark with {python}")
    child = subprocess.run(command, stdout=subprocess.PIPE, text=True, env=env, check=False)
    if child.returncode != 0:
        sys.exit(f"the {mode} benchmark ({python}) failed with exit code {child.returncode}")
    result = cast(ModeResult, json.loads(child.stdout))
    if result["mode"] != mode:
        sys.exit(f"{python} ran a {result['mode']} sched_core ({result['sched_core_file']}), expected {mode}")
    return result


# ----------------------------------------------------------------------
# Reporting


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def core(result: ModeResult, key: str, gc_enabled: bool = False) -> float | None:
    for w in result["workloads"]:
        if w["key"] == key:
            return median(w["gc_default" if gc_enabled else "gc_off"]["core_us"])
    return None


def print_table(rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    print()
    for row in rows:
        print("  ".join(cell.ljust(widths[i]) if i < 2 else cell.rjust(widths[i]) for i, cell in enumerate(row)))


def report(results: list[ModeResult], args: argparse.Namespace) -> list[str]:
    """Print the table and the targets; return the failed targets."""
    modes = ", ".join(f"{r['mode']} ({r['sched_core_file']})" for r in results)
    print(f"sched_core benchmark: {modes}; Python {results[0]['python']}, {platform.machine()}")
    if len(results) == 1:
        print(f"one mode only: {results[0]['mode']} (--compiled-python and --interpreted-python compare both)")
    print("core = time inside SchedulerState.handle_events only; with driver = wall time (gc off) including the "
          "simulated workers and client; all per task, MEDIAN of the runs")
    print("gc off = cyclic GC disabled during the run, as the dsched scheduler server runs; the targets are "
          "checked against it. gc default = CPython's default GC, for reference.")
    print("peak / held: tracemalloc, separate run (gc off), traced from after the TaskSpecs were built; "
          "held = still allocated right after the submission")
    if args.quick:
        print(f"--quick: task counts divided by {QUICK_SCALE} (not the worker counts); the targets are defined "
              "at full size, so treat the PASS/FAIL lines as indicative")
    for r in results:
        print(f"{r['mode']}: {r['workloads'][0]['repeats'] if r['workloads'] else 0} run(s) per gc setting, "
              f"{r['seconds']:.0f} s in all; load average {r['load']:.2f} on {os.cpu_count()} CPUs when it started")
    print()
    for w in results[0]["workloads"]:
        print(f"  {w['title']}")
    rows = [("workload", "mode", "core us/task", "core us/task", "with driver", "peak", "held", "runs"),
            ("", "", "gc off", "gc default", "us/task", "KiB/task", "KiB/task", "")]
    details = [("workload", "mode", "handle_events", "largest", "left once", "cyclic"),
               ("", "", "calls", "batch", "empty B/task", "garbage")]
    for w in results[0]["workloads"]:
        for r in results:
            rw = next((x for x in r["workloads"] if x["key"] == w["key"]), None)
            if rw is None:
                continue
            mem, n, name = rw["memory"], rw["n_tasks"], f"({rw['key']}) {rw['n_tasks']:,}"
            rows.append((name, r["mode"], f"{median(rw['gc_off']['core_us']):.2f}",
                         f"{median(rw['gc_default']['core_us']):.2f}", f"{median(rw['gc_off']['wall_us']):.2f}",
                         f"{mem['peak_bytes'] / n / 1024:.3f}" if mem else "-",
                         f"{mem['held_bytes'] / n / 1024:.3f}" if mem else "-", str(rw["repeats"])))
            details.append((name, r["mode"], f"{rw['calls']:,}", f"{rw['max_batch']:,}",
                            f"{mem['left_bytes'] / n:.0f}" if mem else "-", f"{mem['cycles']}" if mem else "-"))
    print_table(rows)
    print_table(details)
    print("left once empty: bytes still traced after the scheduler forgot every task (memory run); cyclic "
          "garbage: objects only gc.collect() could free afterwards, i.e. leaked while the GC is off")
    print()
    by_mode = {r["mode"]: r for r in results}
    compiled, interpreted = by_mode.get("compiled"), by_mode.get("interpreted")
    summary: list[str] = []
    if compiled and interpreted:
        parts = []
        for w in compiled["workloads"]:
            c, i = core(compiled, w["key"]), core(interpreted, w["key"])
            cd, idf = core(compiled, w["key"], True), core(interpreted, w["key"], True)
            if c and i and cd and idf:
                parts.append(f"({w['key']}) {i / c:.2f}x [gc default {idf / cd:.2f}x]")
        summary.append("speed-up, compiled vs interpreted (core us/task, gc off):  " + "   ".join(parts))
    for r in results:
        a, c = core(r, "a"), core(r, "c")
        ad, cdef = core(r, "a", True), core(r, "c", True)
        if a and c and ad and cdef:
            summary.append(f"(c)/(a) per-task ratio, {r['mode']}: {c / a:.2f} [gc default {cdef / ad:.2f}]")
    for line in summary:
        print(line)
    if summary:
        print()
    return check_targets(compiled, interpreted)


def check_targets(compiled: ModeResult | None, interpreted: ModeResult | None) -> list[str]:
    print("TARGETS (compiled core, gc off = the server's configuration; [gc default] for reference):")
    failed: list[str] = []

    def verdict(name: str, ok: bool | None, detail: str) -> None:
        label = "n/a " if ok is None else ("PASS" if ok else "FAIL")
        print(f"  {label}  {name}: {detail}")
        if ok is False:
            failed.append(name)

    a = core(compiled, "a") if compiled else None
    a_default = core(compiled, "a", True) if compiled else None
    if a is not None and a_default is not None:
        verdict(f"(a) compiled <= {MAX_US_PER_TASK:g} us/task", a <= MAX_US_PER_TASK,
                f"{a:.2f} us/task [gc default {a_default:.2f}]")
    else:
        verdict(f"(a) compiled <= {MAX_US_PER_TASK:g} us/task", None, "needs a compiled run of (a)")

    name = f"compiled >= {MIN_SPEEDUP:g}x faster than interpreted on (a)"
    if compiled and interpreted and a and (ia := core(interpreted, "a")):
        others = [f"({w['key']}) {i / c:.2f}x" for w in compiled["workloads"] if w["key"] != "a"
                  and (c := core(compiled, w["key"])) and (i := core(interpreted, w["key"]))]
        ia_default = core(interpreted, "a", True) or float("nan")
        verdict(name, ia / a >= MIN_SPEEDUP, f"{ia / a:.2f}x [gc default {ia_default / (a_default or 1):.2f}x]"
                + (f"; not targeted: {', '.join(others)}" if others else ""))
    else:
        verdict(name, None, "needs compiled and interpreted runs of (a)")

    name = f"scheduler memory <= {MAX_BYTES_PER_TASK // 1024} KiB/task (compiled, peak)"
    peaks = [(w["key"], m["peak_bytes"] / w["n_tasks"]) for w in (compiled["workloads"] if compiled else [])
             if (m := w["memory"]) is not None]
    if peaks:
        verdict(name, all(p <= MAX_BYTES_PER_TASK for _, p in peaks),
                ", ".join(f"({k}) {p / 1024:.3f} KiB ({p:.0f} B)" for k, p in peaks))
    else:
        verdict(name, None, "needs a compiled memory run (not --skip-memory)")

    name = f"(c) per task <= {MAX_WIDE_RATIO:g} x (a) per task (compiled)"
    c = core(compiled, "c") if compiled else None
    c_default = core(compiled, "c", True) if compiled else None
    if a and c and a_default and c_default:
        verdict(name, c / a <= MAX_WIDE_RATIO, f"{c / a:.2f} ({c:.2f} vs {a:.2f} us/task) "
                f"[gc default {c_default / a_default:.2f}]")
    else:
        verdict(name, None, "needs compiled runs of (a) and (c)")
    if failed:
        print(f"{len(failed)} target(s) FAILED: {'; '.join(failed)} (a report, not a test: exit code 0)")
    return failed


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help=f"task counts / {QUICK_SCALE}, 1 run each")
    parser.add_argument("--repeats", type=int, help=f"runs per gc setting (default {DEFAULT_REPEATS}, --quick 1)")
    parser.add_argument("--interpreted-repeats", type=int,
                        help="runs per gc setting for the interpreted core (default: as --repeats)")
    parser.add_argument("--workloads", default="abc", help="which workloads to run (default abc)")
    parser.add_argument("--skip-memory", action="store_true", help="skip the tracemalloc runs")
    parser.add_argument("--output", metavar="FILE", help="also write the results as JSON to FILE")
    parser.add_argument("--compiled-python", metavar="PATH", help="interpreter with the compiled core installed")
    parser.add_argument("--interpreted-python", metavar="PATH", help="interpreter with the interpreted core")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    parser.add_argument("--expect-mode", choices=("compiled", "interpreted"), help="stop unless sched_core is so")
    args = parser.parse_args(argv)
    if args.json and (args.compiled_python or args.interpreted_python):
        parser.error("--json runs in this interpreter only; use --output with --compiled/--interpreted-python")
    if any(n is not None and n < 1 for n in (args.repeats, args.interpreted_repeats)):
        parser.error("--repeats and --interpreted-repeats take a positive number")
    if set(args.workloads) - set("abc") or not args.workloads:
        parser.error("--workloads takes letters among a, b, c")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    pythons = [("compiled", args.compiled_python), ("interpreted", args.interpreted_python)]
    if args.compiled_python or args.interpreted_python:
        results = [run_child(python, mode, args) for mode, python in pythons if python]
    else:
        results = [run_here(args)]
    if args.json:
        print(json.dumps(results[0]))
        failed: list[str] = []
    else:
        failed = report(results, args)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            json.dump({"results": results, "failed_targets": failed}, f, indent=1)
        log(f"results written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
