"""Chaos: a 50,000-task graph computed while worker processes are SIGKILLed and replaced.

Kills follow a seeded random schedule, but nothing asserted depends on where
or when they land: every result is correct, the task that kills its own worker
is erred with KilledWorker after ``allowed_failures + 1`` deaths, and once the
client lets go nothing is left on the scheduler or the workers.
(``benchmarks/chaos.py`` runs the same thing longer, by hand.)
"""

from __future__ import annotations

from _chaos_harness import run_chaos

from dsched._client_errors import KilledWorker

N_INPUTS = 16_666  # 50,013 tasks
WORKERS = 4
KILLS = 12
ALLOWED_FAILURES = 10
SEED = 6


def test_graph_survives_random_worker_kills() -> None:
    report = run_chaos(
        N_INPUTS, workers=WORKERS, kills=KILLS, seed=SEED,
        allowed_failures=ALLOWED_FAILURES, timeout=240,
    )
    print(f"\nchaos: {report.summary()}")
    assert report.monkey_error is None
    assert report.n_tasks >= 50_000
    assert report.unfinished == 0
    assert not report.wrong, list(report.wrong.items())[:5]
    # The monkey's kills all landed while the graph was computed.
    assert report.kills == report.kills_before_root == KILLS
    # The killer took down allowed_failures + 1 workers, then was given up on;
    # its dependent is erred with the same error; the rest of the graph completed.
    assert isinstance(report.killer_error, KilledWorker)
    assert "'killer'" in str(report.killer_error) and f"allowed: {ALLOWED_FAILURES}" in str(report.killer_error)
    assert isinstance(report.after_killer_error, KilledWorker)
    assert report.deaths == KILLS + ALLOWED_FAILURES + 1
    # Once the client let go: no task, replica, assignment or hold on the
    # scheduler (its state validated), no result on any worker.
    assert not any(report.leftovers.values()), report.leftovers


# --- bugs the chaos runs found ------------------------------------------------------------


_FIRST_GET_SCRIPT = """
import gc, operator, weakref
from dsched._dask_graph import build_graph

class Marker:
    pass

def submit():
    marker = Marker()  # stands for the futures a client.get(sync=False) makes after building
    build_graph({"x": (operator.add, 1, 2)}, ["x"])  # the first call imports dask
    return weakref.ref(marker)

ref = submit()
gc.collect()
print("alive" if ref() is not None else "freed")
"""


def test_first_dask_graph_does_not_keep_the_callers_locals_alive() -> None:
    # Importing dask stores a traceback; imported in the caller's stack, it kept
    # the frames of the first client.get - and so its futures - alive forever.
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _FIRST_GET_SCRIPT], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "freed", out.stderr
