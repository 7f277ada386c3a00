"""Turn the runtime benchmark's raw measurements into rows, targets and a markdown table.

Every figure is a median over a measurement's runs.  The ratio columns say
how many times better dsched did than each dask configuration: throughput
divided by throughput, or cost (CPU per task) divided the other way round,
so a ratio above 1 always favours dsched.
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable
from typing import Any, TypedDict

from _runtime_systems import SYSTEMS

__all__ = ["Report", "build_report", "print_report"]

MIN_TASKS_PER_S = 25_000.0
MIN_STEPS_PER_S = 1_700.0
MIN_WIDE_RATIO = 0.8  # 128 workers within 20% of 2
MAX_SCHEDULER_CPU_US = 20.0
MAX_MEMORY_GROWTH_MIB = 20.0
MIB = 1024 * 1024
SYSTEM_TITLES = {"dsched": "dsched", "dask-default": "dask default", "dask-tuned": "dask tuned"}


class Row(TypedDict):
    workload: str
    metric: str
    kind: str  # "tasks", "steps", "ratio", "cpu", "memory": how to print the values
    values: dict[str, float | None]  # per system
    runs: dict[str, int]
    higher_better: bool
    target: str
    status: str  # PASS, MISS or n/a (dsched only)
    extra: dict[str, str]  # per system, printed after the value (memory: idle -> after)


class Report(TypedDict):
    rows: list[Row]
    errors: list[str]
    saturation: dict[str, float | None]
    versions: dict[str, Any]
    quick: bool


def _find(
    results: list[dict[str, Any]], workload: str, n: int, workers: int | None = None
) -> dict[str, dict[str, Any]]:
    """The successful results of one measurement, by system."""
    found: dict[str, dict[str, Any]] = {}
    for result in results:
        spec = result["spec"]
        if spec["workload"] == workload and spec["n"] == n and (workers is None or spec["workers"] == workers):
            if "error" not in result:
                found[spec["system"]] = result
    return found


def _throughput(result: dict[str, Any]) -> float:
    return float(statistics.median(result["spec"]["n"] / s for s in result["seconds"]))


def _cpu_us(result: dict[str, Any]) -> float | None:
    cpu = result.get("sched_cpu_s")
    if not cpu:
        return None
    return float(statistics.median(c * 1e6 / result["spec"]["n"] for c in cpu))


def _row(workload: str, metric: str, kind: str, by_system: dict[str, dict[str, Any]],
         value: Callable[[dict[str, Any]], float | None], *, higher_better: bool,
         target: str = "", meets: Callable[[float], bool] | None = None) -> Row:
    values = {system: (value(r) if (r := by_system.get(system)) else None) for system in SYSTEMS}
    runs = {system: len(r["seconds"]) for system, r in by_system.items()}
    mine = values.get("dsched")
    status = "n/a" if meets is None or mine is None else ("PASS" if meets(mine) else "MISS")
    return {"workload": workload, "metric": metric, "kind": kind, "values": values, "runs": runs,
            "higher_better": higher_better, "target": target, "status": status, "extra": {}}


def _map_rows(results: list[dict[str, Any]], sizes: list[int]) -> list[Row]:
    return [
        _row(f"(a) map+gather {n:,} tasks, 2 worker procs x 1 thread", "tasks/s", "tasks",
             _find(results, "a", n), _throughput, higher_better=True,
             target=f">= {MIN_TASKS_PER_S:,.0f}/s", meets=lambda v: v >= MIN_TASKS_PER_S)
        for n in sizes
    ]


def _wide_rows(results: list[dict[str, Any]], n: int, worker_counts: list[int]) -> list[Row]:
    rows = [
        _row(f"(d) map+gather {n:,} tasks, {w} in-process workers", "tasks/s", "tasks",
             _find(results, "d", n, w), _throughput, higher_better=True)
        for w in worker_counts
    ]
    if len(rows) >= 2:
        first, last = rows[0], rows[-1]
        ratio: dict[str, float | None] = {}
        for system in SYSTEMS:
            a, b = first["values"][system], last["values"][system]
            ratio[system] = b / a if a and b else None
        mine = ratio["dsched"]
        rows.append({
            "workload": f"(d) throughput {worker_counts[-1]} vs {worker_counts[0]} workers", "metric": "ratio",
            "kind": "ratio", "values": ratio, "runs": {}, "higher_better": True,
            "target": f">= {MIN_WIDE_RATIO:.2f}", "extra": {},
            "status": "n/a" if mine is None else ("PASS" if mine >= MIN_WIDE_RATIO else "MISS"),
        })
    return rows


def _scheduler_rows(results: list[dict[str, Any]], sizes: list[int]) -> list[Row]:
    rows = [
        _row(f"(e) scheduler CPU per task, (a) {n:,}", "us/task", "cpu", _find(results, "a", n), _cpu_us,
             higher_better=False, target=f"<= {MAX_SCHEDULER_CPU_US:.0f} us",
             meets=lambda v: v <= MAX_SCHEDULER_CPU_US)
        for n in sizes
    ]
    largest = _find(results, "a", max(sizes))

    def growth(result: dict[str, Any]) -> float | None:
        memory = result.get("memory")
        return (memory["after"][-1] - memory["idle"]) / MIB if memory and memory["after"] else None

    row = _row(f"(e) scheduler RSS after (a) {max(sizes):,}, released, minus idle", "MiB", "memory", largest,
               growth, higher_better=False, target=f"<= {MAX_MEMORY_GROWTH_MIB:.0f} MiB",
               meets=lambda v: v <= MAX_MEMORY_GROWTH_MIB)
    for system, result in largest.items():
        memory = result.get("memory")
        if memory and memory["after"]:
            row["extra"][system] = (f"{memory['idle'] / MIB:.0f}->{memory['after'][-1] / MIB:.0f}, "
                                    f"peak {memory['peak'] / MIB:.0f}")
    rows.append(row)
    return rows


def build_report(results: list[dict[str, Any]], only: set[str], *, quick: bool) -> Report:
    def sizes_of(workload: str, key: str = "n") -> list[int]:
        return sorted({r["spec"][key] for r in results if r["spec"]["workload"] == workload})

    rows: list[Row] = []
    if "a" in only:
        rows += _map_rows(results, sizes_of("a"))
    if "b" in only:
        rows += [_row(f"(b) tree reduction ~{n:,} tasks (sum of 8), get", "tasks/s", "tasks",
                      _find(results, "b", n), lambda r: _tree_throughput(r), higher_better=True,
                      target=f">= {MIN_TASKS_PER_S:,.0f}/s", meets=lambda v: v >= MIN_TASKS_PER_S)
                 for n in sizes_of("b")]
    if "c" in only:
        rows += [_row(f"(c) chain of {n:,} steps, get", "steps/s", "steps", _find(results, "c", n), _throughput,
                      higher_better=True, target=f">= {MIN_STEPS_PER_S:,.0f}/s",
                      meets=lambda v: v >= MIN_STEPS_PER_S)
                 for n in sizes_of("c")]
    if "d" in only:
        for n in sizes_of("d"):
            rows += _wide_rows(results, n, sorted({r["spec"]["workers"] for r in results
                                                  if r["spec"]["workload"] == "d" and r["spec"]["n"] == n}))
    if "e" in only and sizes_of("a"):
        rows += _scheduler_rows(results, sizes_of("a"))
    errors = [f"{r['spec']['system']} ({r['spec']['workload']}) n={r['spec']['n']:,} "
              f"workers={r['spec']['workers']}: {r['error']}" for r in results if "error" in r]
    saturation: dict[str, float | None] = {}
    versions: dict[str, Any] = {}
    for r in results:
        if "error" not in r:
            saturation.setdefault(r["spec"]["system"], r.get("saturation"))
            versions.update(r.get("versions", {}))
    return {"rows": rows, "errors": errors, "saturation": saturation, "versions": versions, "quick": quick}


def _tree_throughput(result: dict[str, Any]) -> float:
    """Tasks/s of the tree: its real task count (leaves * 8/7 rounded), not the nominal size."""
    from _runtime_workloads import tree_graph

    n_tasks = len(tree_graph(result["spec"]["n"], 0)[0])
    return float(statistics.median(n_tasks / s for s in result["seconds"]))


def _format(kind: str, value: float | None) -> str:
    if value is None:
        return "-"
    if kind == "tasks":
        return f"{value:,.0f}/s ({1e6 / value:,.1f} us)"
    if kind == "steps":
        return f"{value:,.0f}/s ({1e3 / value:,.2f} ms)"
    if kind == "ratio":
        return f"{value:.2f}"
    if kind == "cpu":
        return f"{value:,.1f} us"
    return f"{value:+,.1f} MiB"


def _advantage(row: Row, dask_system: str) -> str:
    mine, theirs = row["values"].get("dsched"), row["values"].get(dask_system)
    if row["kind"] in ("ratio", "memory") or not mine or not theirs:
        return "-"
    return f"{mine / theirs if row['higher_better'] else theirs / mine:,.1f}x"


def table(report: Report) -> list[str]:
    header = ["workload", "dsched", "dask default", "dask tuned", "vs default", "vs tuned", "target", "dsched",
              "runs"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    for row in report["rows"]:
        cells = [row["workload"]]
        for system in SYSTEMS:
            text = _format(row["kind"], row["values"].get(system))
            if system in row["extra"]:
                text += f" [{row['extra'][system]}]"
            cells.append(text)
        cells += [_advantage(row, "dask-default"), _advantage(row, "dask-tuned"), row["target"] or "-", row["status"],
                  "/".join(str(row["runs"].get(system, "-")) for system in SYSTEMS) if row["runs"] else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def print_report(report: Report, machine: dict[str, Any]) -> None:
    out = sys.stdout
    print(f"\nRuntime benchmark: {machine['cpus']} CPUs, Python {machine['python']}, {machine['platform']}; "
          f"load average {machine['load_avg_1m']} at the start; {machine['seconds']:.0f} s in all", file=out)
    print(f"versions: {report['versions']}", file=out)
    saturation = {s: v for s, v in report["saturation"].items() if s != "dsched"}
    if saturation:
        print(f"dask worker-saturation read back from the scheduler: {saturation}", file=out)
    print("MEDIAN of the runs; us = microseconds; 'vs' = how many times better dsched did (>1 favours dsched); "
          "memory: idle->after MiB, peak RSS", file=out)
    if report["quick"]:
        print("--quick: small sizes, one run each; the targets are defined at full size (indicative only)", file=out)
    print("", file=out)
    for line in table(report):
        print(line, file=out)
    print("\nTARGETS (dsched; a report, not a test: a MISS does not change the exit code)", file=out)
    for row in report["rows"]:
        if row["target"]:
            value = _format(row["kind"], row["values"].get("dsched"))
            print(f"  {row['status']:<4}  {row['workload']}: {value} (target {row['target']})", file=out)
    if report["errors"]:
        print("\nERRORS", file=out)
        for error in report["errors"]:
            print(f"  {error}", file=out)
