"""The synchronous Client against a real scheduler and workers (in-process, over TCP on loopback)."""

from __future__ import annotations

import gc
import operator
import re
import threading
import types
from typing import Any

import msgspec
import pytest
from _client_helpers import (
    RAN,
    BackgroundCluster,
    add,
    background_cluster,
    double,
    fail,
    gate,
    gated,
    inc,
    record,
    total,
)

from dsched import _client_loop
from dsched import _protocol as p
from dsched._as_completed import FIRST_COMPLETED, as_completed, wait
from dsched._client import Client
from dsched._client_errors import (
    ClientDisconnectedError,
    FutureCancelledError,
    GraphError,
    KilledWorker,
    LostDataError,
)
from dsched._client_state import ClientState, run_notifications
from dsched._future import Future, KeyState
from dsched._serialize import Ref, RemoteError, dumps_exception

KEY = re.compile(r"^(\w+)-[0-9a-f]{32}$")


def test_submit_map_gather(client: Client) -> None:
    future = client.submit(inc, 1)
    assert future.result() == 2
    assert future.status == "finished" and future.done()
    assert repr(future) == f"<Future: finished, key: {future.key}>"
    futures = client.map(add, range(100), range(100, 200))
    assert client.gather(futures) == [x + y for x, y in zip(range(100), range(100, 200))]
    assert client.map(add, [1, 2], y=10) and client.gather(client.map(add, [1, 2], y=10)) == [11, 12]
    # Nested structures keep their shape.
    a, b = client.map(inc, [1, 2])
    assert client.gather({"a": a, "rest": [b, (a, 5)], "s": {b}}) == {"a": 2, "rest": [3, (2, 5)], "s": {3}}
    assert client.gather(a) == 2


def test_keys_pure_and_impure(client: Client) -> None:
    first, second = client.submit(inc, 5), client.submit(inc, 5)
    assert first.key == second.key and KEY.match(first.key).group(1) == "inc"  # type: ignore[union-attr]
    assert first is not second and first.result() == second.result() == 6
    assert client.submit(inc, 6).key != first.key
    assert client.submit(inc, 5, pure=False).key != first.key
    assert client.map(inc, [5])[0].key == first.key  # map and submit name a call alike
    assert client.submit(lambda x: x, 1).key.startswith("lambda-")
    assert client.submit(inc, 1, key="my-key").key == "my-key"
    assert [f.key for f in client.map(inc, [1, 2], key=["k1", "k2"])] == ["k1", "k2"]
    assert all(f.key.startswith("prefix-") for f in client.map(inc, [1, 2], key="prefix"))
    impure = client.map(inc, [1, 1], pure=False)
    assert impure[0].key != impure[1].key and client.gather(impure) == [2, 2]


def test_futures_as_dependencies_nested_anywhere(client: Client) -> None:
    x, y, z = client.map(inc, [1, 2, 3])
    assert client.submit(total, {"a": x, "b": [y, (z, 10)]}).result() == 2 + 3 + 4 + 10
    chained = client.submit(double, client.submit(add, x, y=y))
    assert chained.result() == 2 * (2 + 3)
    assert client.submit(sum, client.map(double, range(10))).result() == 90


def test_exception_reraised_with_remote_traceback(client: Client) -> None:
    future = client.submit(fail, "boom")
    with pytest.raises(ValueError, match="boom") as info:
        future.result()
    notes = "".join(getattr(info.value, "__notes__", []))
    assert "Remote traceback" in notes and "in fail" in notes
    assert future.status == "error"
    assert isinstance(future.exception(), ValueError)
    assert "boom" in (future.traceback() or "")
    # A dependent task fails with its dependency's exception.
    dependent = client.submit(inc, future)
    with pytest.raises(ValueError, match="boom"):
        dependent.result()
    good = client.submit(inc, 1)
    with pytest.raises(ValueError, match="boom"):
        client.gather([good, future])
    assert client.gather([good, future], errors="skip") == [2]
    assert client.submit(inc, 3).exception() is None


def test_get_dask_graphs(client: Client) -> None:
    dsk = {"x": 1, "y": (inc, "x"), "z": (operator.add, "y", (inc, 10)), "w": (sum, ["x", "y"])}
    assert client.get(dsk, ["z", "w"]) == [13, 3]
    assert client.get(dsk, [["z"], ["w", "x"]]) == [[13], [3, 1]]
    diamond = {("a", 0): 1, ("b", 0): (inc, ("a", 0)), ("b", 1): (double, ("a", 0)), "c": (add, ("b", 0), ("b", 1))}
    assert client.get(diamond, "c") == 4
    assert client.get(diamond, [("b", 1), "c"]) == [2, 4]
    futures = client.get(dsk, ["y", "z"], sync=False)
    assert all(isinstance(f, Future) for f in futures) and client.gather(futures) == [2, 13]


def test_get_releases_its_keys(client: Client, cluster: BackgroundCluster) -> None:
    assert client.get({"rel-a": 1, "rel-b": (inc, "rel-a")}, "rel-b") == 2
    cluster.wait_until(lambda: "rel-b" not in cluster.server.state.tasks and "rel-a" not in cluster.server.state.tasks)


def test_get_cycle_and_missing_dependency(client: Client) -> None:
    with pytest.raises(GraphError, match="cycle") as info:
        client.get({"p": (inc, "q"), "q": (inc, "p"), "out": (inc, "p")}, "out")
    assert info.value.kind == "cycle" and isinstance(info.value, ValueError)
    with pytest.raises(GraphError) as info:
        client.get({"m": (inc, Ref("never-submitted"))}, "m")
    assert info.value.kind == "missing-dependency" and "never-submitted" in info.value.keys
    # The client still works, and the refused keys can be defined afresh.
    assert client.get({"p": 1, "out": (inc, "p")}, "out") == 2


def test_conflicting_definition_from_another_client(client: Client, cluster: BackgroundCluster) -> None:
    held = client.submit(inc, 1, key="shared-key")
    assert held.result() == 2
    with Client(cluster.address) as other:
        with pytest.raises(GraphError) as info:
            other.submit(inc, 2, key="shared-key").result(timeout=5)
        assert info.value.kind == "conflicting-definition"
        assert other.submit(inc, 1, key="shared-key").result() == 2  # the same definition is fine


def test_cancel(client: Client) -> None:
    name = "cancel-gate"
    future = client.submit(gated, name, 1, pure=False)
    client.cancel(future)
    assert future.cancelled() and future.status == "cancelled" and future.done()
    with pytest.raises(FutureCancelledError):
        future.result()
    gate(name).set()
    other = client.submit(gated, "cancel-gate-2", 2, pure=False)
    other.cancel()
    with pytest.raises(FutureCancelledError):
        client.gather([other])
    gate("cancel-gate-2").set()


def test_as_completed_in_completion_order(client: Client) -> None:
    slow = client.submit(gated, "ac-slow", "slow", pure=False)
    fast = client.submit(gated, "ac-fast", "fast", pure=False)
    seq = as_completed([slow, fast])
    assert seq.count() == 2
    gate("ac-fast").set()
    assert next(seq) is fast
    third = client.submit(inc, 41)
    seq.add(third)
    assert next(seq) is third
    gate("ac-slow").set()
    assert next(seq) is slow
    with pytest.raises(StopIteration):
        next(seq)
    pairs = list(as_completed(client.map(inc, range(5)), with_results=True))
    assert sorted(result for _, result in pairs) == [1, 2, 3, 4, 5]
    erred = client.submit(fail, "nope")
    ((future, error),) = list(as_completed([erred], with_results=True, raise_errors=False))
    assert future is erred and isinstance(error, ValueError)


def test_wait(client: Client) -> None:
    fast = client.submit(inc, 1)
    slow = client.submit(gated, "wait-gate", 0, pure=False)
    done, not_done = wait([fast, slow], return_when=FIRST_COMPLETED)
    assert done == {fast} and not_done == {slow}
    with pytest.raises(TimeoutError):
        wait([slow], timeout=0.05)
    gate("wait-gate").set()
    done, not_done = wait([fast, slow])
    assert done == {fast, slow} and not not_done


def test_scatter_then_submit(client: Client, cluster: BackgroundCluster) -> None:
    [x] = client.scatter([10])
    assert x.status == "finished" and x.key.startswith("int-")
    assert client.submit(inc, x).result() == 11
    assert x.result() == 10
    mapping = client.scatter({"sc-a": [1, 2], "sc-b": 3})
    assert set(mapping) == {"sc-a", "sc-b"} and mapping["sc-a"].key == "sc-a"
    assert client.submit(total, mapping).result() == 6
    single = client.scatter("text")
    assert isinstance(single, Future) and single.result() == "text"
    twins = client.scatter([7, 7])
    assert twins[0].key == twins[1].key
    spread = client.scatter(list(range(4)))
    assert len({cluster.holders(f.key)[0] for f in spread}) == 2  # round robin over both workers
    [everywhere] = client.scatter([[1, 2, 3]], broadcast=True)
    assert len(cluster.holders(everywhere.key)) == 2
    [placed] = client.scatter(["placed"], workers=[cluster.workers[1].address])
    assert cluster.holders(placed.key) == [cluster.workers[1].address]
    assert client.scatter([5], hash=False)[0].key != client.scatter([5], hash=False)[0].key


def test_garbage_collected_futures_are_forgotten(client: Client, cluster: BackgroundCluster) -> None:
    future = client.submit(inc, 1000)
    assert future.result() == 1001
    twin = client.submit(inc, 1000)
    key = future.key
    del future
    gc.collect()
    assert cluster.known(key)  # the twin still holds it
    del twin
    gc.collect()
    cluster.wait_until(lambda: key not in cluster.server.state.tasks)
    keys = [f.key for f in client.map(inc, range(2000, 2100))]  # dropped at once
    cluster.wait_until(lambda: not any(k in cluster.server.state.tasks for k in keys))
    released = client.submit(inc, 3000)
    released.release()
    released.release()
    cluster.wait_until(lambda: released.key not in cluster.server.state.tasks)


def test_restrictions_and_priority(cluster: BackgroundCluster) -> None:
    target = cluster.workers[1]
    with Client(cluster.address) as client:
        pinned = client.submit(inc, 77, workers=[target.address])
        pinned.result()
        assert cluster.holders(pinned.key) == [target.address]
        by_name = client.submit(inc, 78, workers=target.name)
        by_name.result()
        assert cluster.holders(by_name.key) == [target.address]
        # Block every thread of the pinned worker, then queue a low and a high priority task behind.
        blockers = [client.submit(gated, "prio-gate", i, workers=target.address, pure=False) for i in range(2)]
        cluster.wait_until(lambda: all(cluster.task_state(b.key) == "processing" for b in blockers))
        RAN.clear()
        low = client.submit(record, "low", workers=target.address, priority=-5)
        high = client.submit(record, "high", workers=target.address, priority=5)
        cluster.wait_until(lambda: all(k in cluster.server.state.tasks for k in (low.key, high.key)))
        gate("prio-gate").set()
        client.gather([low, high, *blockers])
        assert RAN == ["high", "low"]


def test_wait_for_workers_scheduler_info_nthreads(client: Client, cluster: BackgroundCluster) -> None:
    client.wait_for_workers(2, timeout=5)
    with pytest.raises(TimeoutError):
        client.wait_for_workers(3, timeout=0.1)
    info = client.scheduler_info()
    assert set(info["workers"]) == {w.address for w in cluster.workers}
    entry = info["workers"][cluster.workers[0].address]
    assert entry["nthreads"] == 2 and entry["name"] == "w0" and "memory_limit" in entry
    assert client.nthreads() == {w.address: 2 for w in cluster.workers}
    assert client.id and client.scheduler_address == cluster.address
    assert cluster.address in repr(client) and client.id in repr(client)


def test_close_leaves_no_client(cluster: BackgroundCluster) -> None:
    client = Client(cluster.address, name="closing-client")
    assert client.id == "closing-client"
    future = client.submit(inc, 12345)
    future.result()
    pending = client.submit(gated, "close-gate", 1, pure=False)
    cluster.wait_until(lambda: "closing-client" in cluster.server.state.clients)
    client.close()
    client.close()  # idempotent
    assert client.status == "closed"
    assert pending.cancelled()
    cluster.wait_until(lambda: "closing-client" not in cluster.server.state.clients and not cluster.server.clients)
    cluster.wait_until(lambda: future.key not in cluster.server.state.tasks)
    gate("close-gate").set()
    with pytest.raises(ClientDisconnectedError):
        client.submit(inc, 1)


def test_lost_scheduler_fails_pending_futures() -> None:
    with background_cluster(n_workers=1, nthreads=1) as cluster:
        client = Client(cluster.address)
        done = client.submit(inc, 1)
        done.result()
        pending = client.submit(gated, "lost-gate", 1, pure=False)
        seen: list[str] = []
        pending.add_done_callback(lambda f: seen.append(threading.current_thread().name))
        cluster.stop()
        with pytest.raises(ClientDisconnectedError):
            pending.result(timeout=5)
        assert pending.status == "error"
        assert seen == ["dsched-client-loop"]  # callbacks run on the client's loop thread
        with pytest.raises(ClientDisconnectedError):
            client.gather([done])
        client.close()
        gate("lost-gate").set()


def test_many_keys_in_small_get_data_chunks(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_client_loop, "GET_DATA_CHUNK", 7)
    monkeypatch.setattr(_client_loop, "MIN_PIPELINED_FETCH", 5)  # fetch while the rest compute
    futures = client.map(double, range(500))
    assert client.gather(futures) == [2 * x for x in range(500)]
    assert client.submit(sum, futures).result() == sum(2 * x for x in range(500))
    assert client.map(inc, range(10), batch_size=3) and client.gather(client.map(inc, range(10), batch_size=3)) == list(
        range(1, 11)
    )


def test_bad_calls(client: Client) -> None:
    with pytest.raises(TypeError):
        client.submit(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        client.map(inc)
    with pytest.raises(ValueError):
        client.gather([], errors="ignore")
    with pytest.raises(ValueError):
        client.map(inc, [1, 2], key=["only-one"])
    with pytest.raises(TypeError):
        Client(12345)
    with pytest.raises(TypeError, match="pickled inside"):
        import pickle

        pickle.dumps(client.submit(inc, 1))


def test_client_of_a_cluster_object_and_of_a_local_cluster(cluster: BackgroundCluster) -> None:
    fake_cluster = types.SimpleNamespace(scheduler_address=cluster.address)
    with Client(fake_cluster) as client:
        assert client.submit(inc, 1).result() == 2
    with Client(processes=False, n_workers=1, threads_per_worker=1) as client:
        own: Any = client.cluster
        assert client.submit(inc, 2).result() == 3
    assert own.status == "closed"


# -- the bookkeeping alone (ClientState), no network ----------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.done: list[tuple[str, str]] = []

    def key_done(self, state: KeyState) -> None:
        self.done.append((state.key, state.status))


def graph_task(key: str, deps: tuple[str, ...] = ()) -> p.GraphTask:
    return p.GraphTask(key, list(deps), 0, b"args")


def test_state_holds_release_and_resubmit_in_order() -> None:
    state = ClientState()
    (a,) = state.submit([b"f"], [graph_task("a")])
    (again,) = state.submit([b"f"], [graph_task("a")])
    assert again is a and a.refs == 2
    (sent,) = state.drain()
    assert isinstance(sent, p.SubmitGraph) and sent.wanted == ["a"] and len(sent.tasks) == 1  # once
    state.queue_release(a)
    assert state.drain() == []  # one future still holds it
    state.queue_release(a)
    (release,) = state.drain()
    assert release == p.ReleaseKeys(["a"]) and "a" not in state.states
    (fresh,) = state.submit([b"f"], [graph_task("a")])
    assert fresh is not a and isinstance(state.drain()[0], p.SubmitGraph)
    # Released in the same tick as other messages: the release comes last, batched.
    state.submit([b"f"], [graph_task("b"), graph_task("c")])
    state.queue_release(fresh)
    messages = state.drain()
    assert [type(m) for m in messages] == [p.SubmitGraph, p.ReleaseKeys]


def test_state_applies_scheduler_news() -> None:
    state = ClientState()
    done, erred, failed, lost, cancelled = state.submit(
        [b"f"], [graph_task(k) for k in ("done", "erred", "failed", "lost", "cancelled")]
    )
    recorder = Recorder()
    assert state.watch([done, erred, failed, lost, cancelled], recorder) == []
    exception, text = dumps_exception(KeyError("missing"))
    notes = state.handle(
        [
            p.KeysInMemory(["done", "unknown-key"]),
            p.KeyErred("erred", "erred", exception, text),
            p.KeyFailed("failed", "other", "killed-worker", "worker died 3 times"),
            p.KeyLost("lost"),
            p.KeysCancelled(["cancelled"]),
        ]
    )
    run_notifications(notes)
    assert recorder.done == [
        ("done", "finished"), ("erred", "error"), ("failed", "error"), ("lost", "lost"), ("cancelled", "cancelled")
    ]
    assert isinstance(erred.error(), KeyError) and "Remote traceback" in "".join(erred.error().__notes__)
    killed = failed.error()
    assert isinstance(killed, KilledWorker) and killed.blamed_key == "other" and "worker died" in str(killed)
    assert isinstance(lost.error(), LostDataError)
    assert isinstance(cancelled.error(), FutureCancelledError) and "cancelled" not in state.states
    # A payload that is not a msgpack bin fails only that key.
    (bad,) = state.submit([b"f"], [graph_task("bad")])
    state.handle([p.KeyErred("bad", "bad", msgspec.Raw(msgspec.msgpack.encode(5)), "")])
    assert bad.status == "error" and isinstance(bad.error(), RemoteError)


def test_state_refusal_fails_the_submission_it_names() -> None:
    state = ClientState()
    (unrelated,) = state.submit([b"f"], [graph_task("ok")])
    (out,) = state.submit([b"f"], [graph_task("p", ("q",)), graph_task("q", ("p",)), graph_task("out", ("p",))], ["out"])
    (dependent,) = state.submit([b"f"], [graph_task("d", ("gone",))])
    run_notifications(state.handle([p.ClientError("cycle", "p -> q -> p", ["p", "q", "p"])]))
    error = out.error()
    assert out.status == "error" and isinstance(error, GraphError) and error.kind == "cycle"
    assert "out" not in state.states and unrelated.status == "pending"
    state.handle([p.ClientError("missing-dependency", "no 'gone'", ["gone"])])
    assert dependent.status == "error" and dependent.error().kind == "missing-dependency"  # type: ignore[attr-defined]
    state.handle([p.ClientError("unknown-key", "never sent", ["zzz"])])  # matches nothing: logged only
    assert unrelated.status == "pending"


def test_state_fail_all_and_closed() -> None:
    state = ClientState()
    pending, finished = state.submit([b"f"], [graph_task("pending"), graph_task("finished")])
    state.handle([p.KeysInMemory(["finished"])])
    run_notifications(state.fail_all(ClientDisconnectedError("gone"), cancelled=False))
    assert pending.status == "error" and isinstance(pending.error(), ClientDisconnectedError)
    assert finished.status == "finished"
    with pytest.raises(ClientDisconnectedError):
        state.submit([b"f"], [graph_task("later")])
