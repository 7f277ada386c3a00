"""Retiring workers: the core's plan (copies first, then close) and the runtime around it."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from anyio.abc import TaskStatus

from _client_helpers import BackgroundCluster, background_cluster, inc
from _driver import computed_keys, freed, graph
from _helpers import cluster
import sched_core as sc
from dsched._client import Client
from dsched._worker import Worker


def _retire(c: object, address: str) -> list[sc.Instruction]:
    return c.handle(sc.RetireWorker(address))  # type: ignore[attr-defined,no-any-return]


def test_only_copies_move_before_the_worker_is_closed() -> None:
    c = cluster(("a", 1), ("b", 1), ("c", 1))
    c.submit("client", graph({"x": [], "y": []}), wanted=["x", "y"])
    x_on, y_on = c.running_on("x")[0], c.running_on("y")[0]
    c.finish("x")
    c.finish("y")
    if x_on != y_on:
        c.replicate("y", x_on)  # y has a second copy; x only one
    out = _retire(c, x_on)
    (acquire,) = [i for i in out if isinstance(i, sc.AcquireReplicas)]
    assert acquire.worker != x_on and acquire.who_has == {"x": [x_on]}
    assert c.closed == []  # not before x has a copy elsewhere
    c.replicate("x", acquire.worker)
    assert c.closed == [x_on]
    c.remove_worker(x_on, expected=True)
    assert c.state.tasks["x"].state_name == "memory"
    assert {ws.address for ws in c.state.tasks["x"].who_has or []} == {acquire.worker}
    assert c.state.n_recomputed == 0


def test_retiring_worker_gets_no_new_tasks_and_gives_back_what_it_had() -> None:
    c = cluster(("a", 1), ("b", 1))
    c.submit("client", graph({"x": [], "y": []}), wanted=["x", "y"])
    doomed = c.running_on("x")[0]
    out = _retire(c, doomed)
    assert "x" in computed_keys(out)
    assert "x" in freed(out, doomed)
    assert c.running_on("x") != [doomed]
    c.submit("client", graph({"z": []}), wanted=["z"])
    assert c.state.tasks["z"].processing_on.address != doomed
    # Nothing only it holds: it is told to close at once.
    assert c.closed == [doomed]


def test_a_late_result_from_the_retiring_worker_is_stale() -> None:
    c = cluster(("a", 1), ("b", 1))
    c.submit("client", graph({"x": []}), wanted=["x"])
    doomed = c.running_on("x")[0]
    run_id = c.last_run_id(doomed, "x")
    _retire(c, doomed)
    before = c.state.n_stale_messages
    c.handle(sc.TaskFinished(doomed, "x", 10, 0.1, run_id))
    assert c.state.n_stale_messages == before + 1
    assert c.state.tasks["x"].state_name == "processing"


def test_a_move_whose_target_dies_is_asked_of_another_worker() -> None:
    c = cluster(("a", 1), ("b", 1), ("c", 1))
    c.submit("client", graph({"x": []}), wanted=["x"])
    holder = c.running_on("x")[0]
    c.finish("x")
    (first,) = [i for i in _retire(c, holder) if isinstance(i, sc.AcquireReplicas)]
    out = c.remove_worker(first.worker)
    (second,) = [i for i in out if isinstance(i, sc.AcquireReplicas)]
    assert second.worker not in (holder, first.worker)
    c.replicate("x", second.worker)
    assert c.closed == [holder]


def test_nowhere_to_go_closes_at_once_and_the_data_is_lost_as_usual() -> None:
    c = cluster(("a", 1), ("b", 1))
    c.submit("client", graph({"x": []}), wanted=["x"])
    holder = c.running_on("x")[0]
    other = "b" if holder == "a" else "a"
    c.finish("x")
    _retire(c, other)  # nothing there: closed at once
    out = _retire(c, holder)  # the only other worker is retiring too: no target
    assert not [i for i in out if isinstance(i, sc.AcquireReplicas)]
    assert sorted(c.closed) == ["a", "b"]


def test_copies_are_spread_over_the_least_loaded_workers() -> None:
    c = cluster(("a", 1), ("b", 1), ("c", 1))
    keys = [f"k{i}" for i in range(6)]
    c.submit("client", graph({k: [] for k in keys}, workers=["a"]), wanted=keys)
    for k in keys:
        c.finish(k, "a")
    out = _retire(c, "a")
    acquires = {i.worker: sorted(i.who_has) for i in out if isinstance(i, sc.AcquireReplicas)}
    assert set(acquires) == {"b", "c"}
    assert sorted(acquires["b"] + acquires["c"]) == sorted(keys)
    assert abs(len(acquires["b"]) - len(acquires["c"])) <= 1


def test_a_released_key_need_not_move() -> None:
    c = cluster(("a", 1), ("b", 1))
    c.submit("client", graph({"x": []}, workers=["a"]), wanted=["x"])
    c.finish("x", "a")
    _retire(c, "a")
    assert c.closed == []
    c.release("client", ["x"])
    assert c.closed == ["a"]


def test_a_paused_worker_is_no_target_and_a_retiring_one_stays_paused() -> None:
    c = cluster(("a", 1), ("b", 1), ("c", 1))
    c.submit("client", graph({"x": []}, workers=["a"]), wanted=["x"])
    c.finish("x", "a")
    c.handle(sc.WorkerStatusChanged("b", True))
    (acquire,) = [i for i in _retire(c, "a") if isinstance(i, sc.AcquireReplicas)]
    assert acquire.worker == "c"
    c.handle(sc.WorkerStatusChanged("a", False))
    assert c.state.workers["a"].paused and c.state.workers["a"].retiring


# --- the runtime: in-process workers --------------------------------------------------------


def _executed(cluster: BackgroundCluster) -> int:
    return sum(int(w.info()["executed"]) for w in cluster.workers)


def _recomputed(cluster: BackgroundCluster) -> int:
    return int(cluster.portal.call(lambda: cluster.server.state.n_recomputed))


def test_client_retire_workers_keeps_the_data_it_alone_held() -> None:
    with background_cluster(n_workers=3, nthreads=1) as cluster, Client(cluster.address) as client:
        doomed = cluster.workers[0].address
        future = client.submit(inc, 41, workers=[doomed])
        assert future.result(timeout=10) == 42
        assert cluster.holders(future.key) == [doomed]
        executed = _executed(cluster)

        assert client.retire_workers([doomed], timeout=20) == [doomed]

        holders = cluster.holders(future.key)
        assert holders and doomed not in holders
        assert doomed not in client.scheduler_info()["workers"]
        assert client.gather(future) == 42
        assert _executed(cluster) == executed  # copied, not computed again
        assert _recomputed(cluster) == 0


def test_retire_by_name_and_unknown_workers() -> None:
    with background_cluster(n_workers=2, nthreads=1) as cluster, Client(cluster.address) as client:
        worker = cluster.workers[1]
        assert client.retire_workers(["no-such-worker"], timeout=5) == []
        assert client.retire_workers(worker.name, timeout=20) == [worker.address]
        assert list(client.scheduler_info()["workers"]) == [cluster.workers[0].address]


async def _serve_worker(address: str, stop: anyio.Event, *, task_status: TaskStatus[Worker]) -> None:
    async with Worker(address, nthreads=1, name="leaving") as worker:
        task_status.started(worker)
        await stop.wait()  # then leaving the block closes it, as a program ending would


def test_a_worker_closing_by_itself_hands_its_results_over_first() -> None:
    with background_cluster(n_workers=1, nthreads=1) as cluster, Client(cluster.address) as client:
        (staying,) = cluster.workers
        stop = cluster.portal.call(anyio.Event)
        running, leaving = cluster.portal.start_task(_serve_worker, cluster.address, stop)
        cluster.wait_until(lambda: leaving.address in cluster.server.state.workers)
        futures = client.map(inc, range(20), workers=[leaving.address])
        assert client.gather(futures) == list(range(1, 21))
        executed = leaving.info()["executed"] + staying.info()["executed"]

        cluster.portal.call(stop.set)
        running.result(timeout=20)  # Worker.close() returned: the scheduler let it go

        cluster.wait_until(lambda: leaving.address not in cluster.server.state.workers)
        assert [cluster.holders(f.key) for f in futures] == [[staying.address]] * len(futures)
        assert client.gather(futures) == list(range(1, 21))
        assert leaving.info()["executed"] + staying.info()["executed"] == executed
        assert _recomputed(cluster) == 0


def test_the_last_worker_retires_at_once_and_its_results_are_recomputed_later() -> None:
    with background_cluster(n_workers=1, nthreads=1) as cluster, Client(cluster.address) as client:
        (only,) = cluster.workers
        future = client.submit(inc, 1)
        assert future.result(timeout=10) == 2
        assert client.retire_workers([only.address], timeout=20) == [only.address]
        state = cluster.portal.call(cluster.task_state, future.key)
        assert state in ("queued", "no-worker")  # wanted again, and nowhere to run until a worker joins


# --- the runtime: worker processes ----------------------------------------------------------


def count_run(path: str, value: int) -> int:
    """A task that leaves a line in ``path`` each time it runs."""
    with open(path, "a") as f:
        f.write("ran\n")
    return value


def test_sigterm_retires_a_worker_process_and_scheduler_shutdown_stops_the_rest(tmp_path: Path) -> None:
    import signal

    from dsched._cluster import LocalCluster

    runs = tmp_path / "runs.txt"
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None, profile_interval=None) as cluster:
        with Client(cluster) as client:
            leaving, staying = cluster.worker_processes
            info = client.scheduler_info()["workers"]
            by_name = {w["name"]: address for address, w in info.items()}
            future = client.submit(count_run, str(runs), 7, workers=[by_name["0"]], pure=False)
            assert future.result(timeout=30) == 7

            leaving.send_signal(signal.SIGTERM)
            assert leaving.wait(timeout=30) == 0  # retired: its result went to the other worker first
            assert client.gather(future) == 7
            assert runs.read_text() == "ran\n"  # fetched from the copy, not computed again
            assert list(client.scheduler_info()["workers"]) == [by_name["1"]]

            # Stopping the scheduler stops its workers too.
            scheduler = cluster.scheduler_process
            assert scheduler is not None
            scheduler.send_signal(signal.SIGTERM)
            assert scheduler.wait(timeout=30) == 0
            assert staying.wait(timeout=30) == 0


def test_scaling_a_cluster_down_keeps_every_result() -> None:
    from dsched._cluster import LocalCluster

    with LocalCluster(
        n_workers=4, threads_per_worker=1, processes=False, dashboard_address=None, profile_interval=None
    ) as cluster, Client(cluster) as client:
        futures = client.map(inc, range(200))
        assert client.gather(futures) == list(range(1, 201))
        cluster.scale(1)  # three workers retire: what only they held moves to the last one
        assert len(client.scheduler_info()["workers"]) == 1
        assert client.gather(futures) == list(range(1, 201))
        server = cluster._backend.server
        assert server is not None
        assert server.state.n_recomputed == 0  # an int read from here: the cluster is idle


# --- the server's side: a retirement that cannot finish -------------------------------------


@pytest.mark.anyio
async def test_a_retirement_that_cannot_finish_is_closed_at_its_timeout() -> None:
    from dsched import _protocol as p
    from dsched._scheduler_server import SchedulerServer
    from test_scheduler_server import fake_client, fake_worker, task

    async with SchedulerServer() as server:
        server.retirements.timeout = 0.3
        holder = await fake_worker(server, "tcp://holder:1")
        client = await fake_client(server, "c1")
        await client.send(p.SubmitGraph([b"fn"], [task("k", [])], ["k"]))
        (compute,) = await holder.expect(p.Compute)
        await holder.send(p.TaskFinished("k", 10, 0.1, compute.run_id))
        await client.expect(p.KeysInMemory)
        receiver = await fake_worker(server, "tcp://receiver:1")

        await holder.send(p.Close("leaving"))
        (acquire,) = await receiver.expect(p.AcquireReplicas)
        assert acquire.who_has == {"k": ["tcp://holder:1"]}
        # The receiver never fetches: the holder is let go at the timeout all the same.
        (bye,) = await holder.expect(p.Close, timeout=5)
        assert bye.reason == "retirement timed out" and server.retirements.n_forced == 1
        await holder.comm.aclose()
        # What only it held is computed again where it can be.
        (again,) = await receiver.expect(p.Compute, timeout=5)
        assert again.key == "k"
        assert server.state.workers["tcp://receiver:1"].alive and "tcp://holder:1" not in server.state.workers
