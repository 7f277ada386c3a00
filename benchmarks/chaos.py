"""Chaos run by hand: a big layered graph while worker processes are SIGKILLed and replaced.

    python benchmarks/chaos.py [--inputs 16666] [--workers 4] [--kills 40]
        [--seed 0] [--allowed-failures 10] [--runs 1] [--timeout 600]

The same harness as ``tests/test_chaos.py`` (``tests/_chaos_harness.py``), with
the sizes and the kill schedule as options.  The graph has ``3 * inputs + 5``
tasks: four shared inputs, a map over them, neighbour pairs (results move between
workers), a pairwise tree reduction, and a task that kills its own worker
every time, run after the reduction.  A run checks every result against a
local computation, that the killer erred with KilledWorker and that nothing is
left on the scheduler or the workers once the client lets go.  The summary line
says how many of the kills landed before the graph's root finished (kills come
at seeded points of the graph's progress, but wait for a live registered
worker to kill, so with many kills some land later, while the killer runs).  ``--runs N`` repeats with seeds
``seed .. seed + N - 1``.  Exits 1 if any run found a problem.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from _chaos_harness import ChaosReport, run_chaos  # noqa: E402

from dsched._client_errors import KilledWorker  # noqa: E402


def problems(report: ChaosReport) -> list[str]:
    found: list[str] = []
    if report.unfinished:
        found.append(f"{report.unfinished} futures never finished")
    if report.wrong:
        found.append(f"{len(report.wrong)} wrong or missing results, e.g. {list(report.wrong.items())[:3]}")
    if not isinstance(report.killer_error, KilledWorker):
        found.append(f"the killer ended with {report.killer_error!r}, not KilledWorker")
    if any(report.leftovers.values()):
        found.append(f"state left over: {report.leftovers}")
    if report.monkey_error is not None:
        found.append(f"the monkey failed: {report.monkey_error!r}")
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", type=int, default=16_666)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument(
        "--kills", type=int, default=40, help="SIGKILLs by the monkey per run, spread over the graph's progress"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--allowed-failures", type=int, default=10,
        help="the scheduler's allowed_failures (every task assigned to a dying worker counts a death)",
    )
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()
    failed = 0
    for i in range(args.runs):
        report = run_chaos(
            args.inputs, workers=args.workers, kills=args.kills, seed=args.seed + i,
            allowed_failures=args.allowed_failures, timeout=args.timeout,
        )
        found = problems(report)
        print(f"run {i + 1} (seed {args.seed + i}): {report.summary()}", flush=True)
        for problem in found:
            print(f"  PROBLEM: {problem}", flush=True)
        failed += bool(found)
    print(f"{args.runs - failed}/{args.runs} runs clean")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
