"""Static checks of the public runtime API (run by mypy, never executed)."""

from typing import assert_type

import dsched
from dsched import Client, DoneAndNotDoneFutures, Future, FutureSequence, LocalCluster, as_completed, wait


def inc(x: int) -> int:
    return x + 1


def client_api(client: Client) -> None:
    future = client.submit(inc, 1, key="inc-1", pure=False, retries=2, priority=10, workers=["w"], resources={"GPU": 1})
    assert_type(future, Future)
    assert_type(future.key, str)
    assert_type(future.status, str)
    assert_type(future.done(), bool)
    assert_type(future.cancelled(), bool)
    assert_type(future.traceback(), str | None)
    futures = client.map(inc, range(10), batch_size=1000)
    # A big map (sent as one layer) returns a FutureSequence, made lazily; a small one a list.
    assert_type(futures, list[Future] | FutureSequence)
    assert_type(futures[0], Future)
    assert_type(futures[1:], list[Future])
    assert_type([f.key for f in futures], list[str])
    # wait() and as_completed() also serve asynchronous clients (then they return
    # awaitables), so their results are not narrowed here.
    wait(futures, timeout=1.0, return_when="FIRST_COMPLETED")
    as_completed(futures, with_results=False)
    assert_type(DoneAndNotDoneFutures(set(futures), set()).done, set[Future])
    client.submit(inc, "not checked at submission: arguments are the function's business")
    client.close()


def cluster_api() -> None:
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False) as cluster:
        assert_type(cluster.scheduler_address, str)
        with Client(cluster) as client:
            assert_type(client, Client)
    assert_type(dsched.Scheduler, type[dsched.SchedulerServer])
    assert_type(dsched.KilledWorker("x", "y", "killed-worker", "worker died 3 times"), dsched.KilledWorker)
