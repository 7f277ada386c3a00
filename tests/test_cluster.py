"""LocalCluster: defaults, both modes, scaling, and that no process outlives it.

Processes are real (``python -m dsched scheduler|worker``); the scheduler is
asked which workers it has with the bare ``GetWorkers`` probe.
"""

from __future__ import annotations

import gc
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import anyio
import pytest

from dsched import _protocol as p
from dsched._cluster import ClusterStartError, LocalCluster, default_workers_and_threads
from dsched._probe import SchedulerProbe
from dsched._sizes import parse_bytes, parse_memory_limit, parse_resources, total_memory


def scheduler_workers(address: str) -> list[p.WorkerInfo]:
    async def ask() -> list[p.WorkerInfo]:
        async with SchedulerProbe(address, timeout=5) as probe:
            return await probe.workers()

    return anyio.run(ask)


def wait_until(condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {condition}")
        time.sleep(0.02)


def pid_gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie not yet reaped by its new parent counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def all_exited(cluster: LocalCluster) -> bool:
    procs = [*cluster.worker_processes, cluster.scheduler_process]
    return all(proc is not None and proc.returncode is not None for proc in procs)


# --- defaults and sizes ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("n_workers", "threads", "processes", "cores", "expected"),
    [
        (None, None, True, 1, (1, 1)),
        (None, None, True, 4, (4, 1)),
        (None, None, True, 6, (3, 2)),
        (None, None, True, 32, (8, 4)),
        (None, None, False, 8, (1, 8)),
        (3, None, True, 8, (3, 3)),  # threads are overcommitted rather than left idle
        (None, 2, True, 8, (4, 2)),
        (None, 2, False, 8, (1, 2)),
        (2, 5, True, 8, (2, 5)),
    ],
)
def test_default_workers_and_threads_follow_dask(
    n_workers: int | None, threads: int | None, processes: bool, cores: int, expected: tuple[int, int]
) -> None:
    assert default_workers_and_threads(n_workers, threads, processes, cores) == expected


def test_sizes_parse_like_dask() -> None:
    assert parse_bytes("4GiB") == 4 * 2**30
    assert parse_bytes("500MB") == 500_000_000
    assert parse_bytes("500 mb") == 500_000_000
    assert parse_bytes("1e9") == 10**9
    assert parse_bytes("2.5kB") == 2500
    assert parse_bytes(1024) == 1024
    for bad in ("-1GB", "4 parsecs", "", "GB", "nan"):
        with pytest.raises(ValueError, match="not a size"):
            parse_bytes(bad)
    assert parse_memory_limit(0) == parse_memory_limit("0") == parse_memory_limit(None) == 0
    assert parse_memory_limit("2GiB") == 2 * 2**30
    total = total_memory()
    assert total > 0
    assert parse_memory_limit("auto", nthreads=1, total_cores=4) == total // 4
    assert parse_memory_limit("auto", nthreads=8, total_cores=4) == total
    assert parse_memory_limit(0.5) == parse_memory_limit("0.5") == int(total * 0.5)
    assert parse_resources("GPU=2,MEM=10e9") == {"GPU": 2.0, "MEM": 1e10}
    assert parse_resources("") == {}
    with pytest.raises(ValueError, match="bad resource 'GPU'"):
        parse_resources("GPU")
    with pytest.raises(ValueError, match="bad resource"):
        parse_resources("GPU=-1")


# --- processes=True -------------------------------------------------------------------


def test_processes_start_register_scale_and_stop() -> None:
    cluster = LocalCluster(n_workers=2, threads_per_worker=2, memory_limit="1GiB", resources={"GPU": 1})
    try:
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        assert len(cluster.workers) == 2 and len(cluster.worker_processes) == 2
        infos = {w.name: w for w in scheduler_workers(cluster.scheduler_address)}
        assert sorted(infos) == ["0", "1"]
        assert sorted(w.address for w in infos.values()) == sorted(cluster.workers)
        assert all(w.nthreads == 2 and w.memory_limit == 2**30 and w.resources == {"GPU": 1.0} for w in infos.values())
        assert "workers=2, threads=4" in repr(cluster) and "running" in repr(cluster)
        pids = {proc.pid for proc in cluster.worker_processes}
        assert os.getpid() not in pids and len(pids) == 2

        cluster.scale(3)
        assert len(cluster.workers) == 3
        assert sorted(w.name for w in scheduler_workers(cluster.scheduler_address)) == ["0", "1", "2"]
        cluster.scale(1)
        assert len(cluster.workers) == 1
        # The stopped workers retired: the scheduler no longer lists them, their processes are reaped.
        assert [w.name for w in scheduler_workers(cluster.scheduler_address)] == ["0"]
        assert [proc.returncode for proc in cluster.worker_processes[1:]] == [0, 0]
        address = cluster.add_worker()
        assert address in cluster.workers and len(cluster.workers) == 2
    finally:
        cluster.close()
    assert all_exited(cluster)
    assert cluster.scheduler_process is not None and cluster.scheduler_process.returncode == 0
    assert all(proc.returncode == 0 for proc in cluster.worker_processes)  # clean exits, not kills
    assert "closed" in repr(cluster)
    cluster.close()  # idempotent


def test_context_manager_and_unclosed_cluster_leave_no_process() -> None:
    with LocalCluster(n_workers=1, threads_per_worker=1) as cluster:
        procs = [*cluster.worker_processes, cluster.scheduler_process]
        assert all(proc is not None and proc.poll() is None for proc in procs)
    assert all_exited(cluster)

    dropped = LocalCluster(n_workers=1, threads_per_worker=1)
    procs = [*dropped.worker_processes, dropped.scheduler_process]
    del dropped
    gc.collect()  # the finalizer stops what close() would have
    assert all(proc is not None and proc.returncode is not None for proc in procs)


def test_worker_exits_when_its_scheduler_dies() -> None:
    with LocalCluster(n_workers=1, threads_per_worker=1) as cluster:
        scheduler = cluster.scheduler_process
        assert scheduler is not None
        scheduler.send_signal(signal.SIGKILL)
        (worker,) = cluster.worker_processes
        worker.wait(timeout=15)
        assert worker.returncode == 0  # it noticed and shut down by itself
    assert all_exited(cluster)


def test_children_stop_when_the_parent_dies(tmp_path: Path) -> None:
    script = tmp_path / "parent.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys, time
            from dsched._cluster import LocalCluster
            cluster = LocalCluster(n_workers=2, threads_per_worker=1)
            pids = [p.pid for p in cluster.worker_processes] + [cluster.scheduler_process.pid]
            print(" ".join(map(str, pids)), flush=True)
            time.sleep(60)
            """
        )
    )
    parent = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        assert parent.stdout is not None
        pids = [int(x) for x in parent.stdout.readline().split()]
        assert len(pids) == 3 and not any(pid_gone(pid) for pid in pids)
    finally:
        parent.kill()  # no finalizer, no atexit: only the children's own watch can stop them
        parent.wait()
    wait_until(lambda: all(pid_gone(pid) for pid in pids), timeout=15)


def test_unclosed_cluster_is_stopped_at_interpreter_exit(tmp_path: Path) -> None:
    script = tmp_path / "forgetful.py"
    script.write_text(
        "from dsched._cluster import LocalCluster\n"
        "cluster = LocalCluster(n_workers=2, threads_per_worker=1)\n"
        "print(' '.join(str(p.pid) for p in [*cluster.worker_processes, cluster.scheduler_process]))\n"
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert done.returncode == 0, done.stderr
    pids = [int(x) for x in done.stdout.split()]
    assert len(pids) == 3
    # Stopped (and reaped) by the exiting interpreter itself, not later by their own parent watch.
    assert all(pid_gone(pid) for pid in pids)


def test_start_failure_raises_with_the_childs_log() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ClusterStartError, match=f"cannot listen on 127.0.0.1:{port}") as info:
            LocalCluster(n_workers=1, threads_per_worker=1, scheduler_port=port)
    assert "scheduler" in str(info.value) and "exited with code 1" in str(info.value)


# --- processes=False and asynchronous ---------------------------------------------------


def test_in_process_cluster() -> None:
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False) as cluster:
        assert cluster.worker_processes == [] and cluster.scheduler_process is None
        infos = scheduler_workers(cluster.scheduler_address)
        assert sorted(w.address for w in infos) == sorted(cluster.workers)
        assert len(cluster.workers) == 2
        cluster.scale(3)
        assert len(scheduler_workers(cluster.scheduler_address)) == 3
        cluster.scale(1)
        assert len(scheduler_workers(cluster.scheduler_address)) == 1
    assert cluster.status == "closed" and cluster.workers == []


@pytest.mark.parametrize("processes", [False, True])
def test_asynchronous_cluster(processes: bool) -> None:
    async def main() -> LocalCluster:
        async with LocalCluster(n_workers=2, threads_per_worker=1, processes=processes, asynchronous=True) as cluster:
            async with SchedulerProbe(cluster.scheduler_address) as probe:
                assert len(await probe.workers()) == 2
            await cluster.scale(3)
            assert len(cluster.workers) == 3
        return cluster

    cluster = anyio.run(main)
    assert cluster.status == "closed"
    assert all_exited(cluster) if processes else cluster.workers == []
    with pytest.raises(TypeError, match="async with"):
        with LocalCluster(asynchronous=True):
            pass
