"""``dsched demo``: start a local cluster, run 100,000 small tasks with dependencies, check the answer."""

from __future__ import annotations

import logging
import sys
import time
from typing import Annotated

import typer

__all__ = ["register"]


def _plural(n: int, one: str, many: str = "") -> str:
    return f"{n} {one if n == 1 else (many or one + 's')}"


def register(app: typer.Typer) -> None:
    @app.command()
    def demo(
        tasks: Annotated[int, typer.Option(min=3, help="How many tasks to run in total.")] = 100_000,
        workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 2,
        threads: Annotated[int, typer.Option(min=1, help="Threads per worker.")] = 1,
    ) -> None:
        """Start a local cluster and run a graph of small tasks on it, with a progress bar.

        The graph: inc over n inputs, square of each result, then a tree of sums
        of 100 at a time down to one value, checked against 1^2 + ... + n^2.
        Exits with status 1 if the answer is wrong or a task failed.
        """
        from dsched._client import Client
        from dsched._cluster import ClusterStartError, LocalCluster
        from dsched._demo import ProgressBar, plan_demo, run_workload

        plan = plan_demo(tasks)
        out, err = sys.stdout, sys.stderr
        typer.echo(
            f"dsched demo: {plan.total_tasks:,} tasks ({plan.n_inputs:,} inc, {plan.n_inputs:,} square, "
            f"{plan.total_tasks - 2 * plan.n_inputs:,} sum) on {_plural(workers, 'worker process', 'worker processes')} x {_plural(threads, 'thread')}"
        )
        started = time.perf_counter()
        try:
            cluster = LocalCluster(n_workers=workers, threads_per_worker=threads, silence_logs=logging.WARNING)
        except ClusterStartError as exc:
            typer.echo(f"dsched demo: the cluster did not start: {exc}", err=True)
            raise typer.Exit(1) from None
        with cluster, Client(cluster) as client:
            typer.echo(f"cluster started in {time.perf_counter() - started:.2f}s at {cluster.scheduler_address}")
            progress = ProgressBar(plan.total_tasks, err)
            try:
                outcome = run_workload(client, plan, progress)
            except Exception as exc:  # a task failed: show it, as the user's own code would see it
                err.write("\n")
                typer.echo(f"dsched demo: the computation failed: {type(exc).__name__}: {exc}", err=True)
                raise typer.Exit(1) from None
        total = time.perf_counter() - started
        verdict = "correct" if outcome.correct else f"WRONG (expected {plan.expected})"
        print(f"result {outcome.result} is {verdict}", file=out)
        print(
            f"{plan.total_tasks:,} tasks in {outcome.seconds:.2f}s: {outcome.tasks_per_second:,.0f} tasks/s "
            f"(total time with cluster start and stop: {total:.2f}s)",
            file=out,
        )
        if not outcome.correct:
            raise typer.Exit(1)
