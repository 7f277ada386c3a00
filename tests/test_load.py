"""Load: 200 workers and 100 clients join one scheduler at once, then every client runs a workload.

The scenario is the load benchmark's (``benchmarks/load_bench.py``, which
also times it against dask.distributed): a ``dsched scheduler`` process, the
workers in a few processes, the clients in two, and ``/health`` probed 20
times a second throughout.  Here only behaviour is checked: everyone joins,
every answer is right, no probe fails (a probe gives up after 5 s), the
scheduler survives and forgets everything once the clients leave.  The
latency figures are the benchmark's to report, not this test's to assert.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("load_bench", BENCHMARKS / "load_bench.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("load_bench", module)
    spec.loader.exec_module(module)
    return module


def test_200_workers_and_100_clients_at_once_then_a_workload(tmp_path: Path) -> None:
    bench = load_bench()
    run = bench.run_load("dsched", workers=200, clients=100, tasks=20, worker_procs=4, client_procs=2,
                         hz=20.0, workdir=tmp_path)
    assert run["workers_ready"] == 200 and run["clients_connected"] == 100
    assert run["errors"] == [] and run["wrong"] == 0 and run["answers_right"] == 100
    assert run["scheduler_alive"]
    health = run["health"]
    for phase in ("idle", "join", "workload", "all"):
        assert health[phase]["probes"] >= 1, (phase, health)
    assert health["all"]["failures"] == 0, health
    assert run["tasks_left"] == 0, run
    assert run["longest_step_ms"] > 0  # the scheduler timed its batches (the benchmark reports the figure)
