"""``client.map`` sent as one Map layer (``as_layer=``), and ``compute_graph``'s task options,
against a real in-process scheduler and workers."""

from __future__ import annotations

import gc
import re
import threading

import pytest
from _client_helpers import BackgroundCluster, add, double, fail, gate, gated, inc, record

from dsched._as_completed import as_completed, wait
from dsched._client import Client
from dsched._client_errors import FutureCancelledError, GraphError
from dsched._client_tasks import MAP_LAYER_MIN_INPUTS
from dsched._future import Future
from dsched._future_sequence import FutureSequence
from dsched.graph import Graph

N = MAP_LAYER_MIN_INPUTS
EXPLICIT_KEY = re.compile(r"^(\w+)-[0-9a-f]{32}$")
LAYER_KEY = re.compile(r"^\('(\w+)-([0-9a-f]{32})', (\d+)\)$")

# Attempts per (tag, input), for the retry tests (the workers are threads of this process).
ATTEMPTS: dict[tuple[str, int], int] = {}
CALLS: dict[str, int] = {}
_LOCK = threading.Lock()


def flaky(tag: str, x: int) -> int:
    """Fails the first time it is called for ``(tag, x)``, then returns ``10 * x``."""
    with _LOCK:
        n = ATTEMPTS[(tag, x)] = ATTEMPTS.get((tag, x), 0) + 1
    if n == 1:
        raise RuntimeError(f"first attempt at {x}")
    return 10 * x


def counted(tag: str, x: int) -> int:
    with _LOCK:
        CALLS[tag] = CALLS.get(tag, 0) + 1
    return x


def fail_on_seven(x: int) -> int:
    if x == 7:
        raise KeyError(f"seven-{x}")
    return x


def affine(a: int, b: int, c: int = 0) -> int:
    return a * b + c


def layer_name(key: str) -> str:
    match = LAYER_KEY.match(key)
    assert match is not None, key
    return f"{match.group(1)}-{match.group(2)}"


def assert_layer_keys(futures: list[Future], prefix: str) -> None:
    names = {layer_name(f.key) for f in futures}
    assert len(names) == 1 and names.pop().startswith(prefix + "-")
    indices = [int(LAYER_KEY.match(f.key).group(3)) for f in futures]  # type: ignore[union-attr]
    assert indices == list(range(len(futures)))


def test_big_map_is_a_layer_and_one_less_is_not(client: Client) -> None:
    futures = client.map(inc, range(N))
    assert len(futures) == N
    assert_layer_keys(futures, "inc")
    assert client.gather(futures) == [x + 1 for x in range(N)]
    below = client.map(inc, range(N - 1))
    assert all(EXPLICIT_KEY.match(f.key).group(1) == "inc" for f in below)  # type: ignore[union-attr]
    assert len({f.key for f in below}) == N - 1
    assert client.gather(below) == [x + 1 for x in range(N - 1)]


def test_layer_true_on_small_maps_and_false_on_big_ones(client: Client) -> None:
    small = client.map(affine, [1, 2, 3, 4, 5], [10, 20, 30, 40, 50], c=7, as_layer=True)
    assert_layer_keys(small, "affine")
    assert client.gather(small) == [a * b + 7 for a, b in zip([1, 2, 3, 4, 5], [10, 20, 30, 40, 50])]
    uneven = client.map(add, [1, 2, 3], [10, 20], as_layer=True)  # zip stops at the shortest, as map does
    assert len(uneven) == 2 and client.gather(uneven) == [11, 22]
    named = client.map(inc, [1, 2], key="mine", as_layer=True)
    assert_layer_keys(named, "mine")
    assert client.gather(named) == [2, 3]
    empty = client.map(inc, [], as_layer=True)
    assert isinstance(empty, FutureSequence) and len(empty) == 0 and list(empty) == [] and empty[:] == []
    assert client.gather(empty) == [] and empty.keys() == []
    with pytest.raises(IndexError):
        empty[0]
    explicit = client.map(inc, range(N), as_layer=False)
    assert all(EXPLICIT_KEY.match(f.key).group(1) == "inc" for f in explicit)  # type: ignore[union-attr]
    assert client.gather(explicit[:: N // 10]) == [x + 1 for x in range(0, N, N // 10)]


def test_pure_layer_names(client: Client) -> None:
    first = client.map(counted, ["pure"] * 20, range(20), as_layer=True)
    assert client.gather(first) == list(range(20))
    again = client.map(counted, ["pure"] * 20, range(20), as_layer=True)
    assert [f.key for f in again] == [f.key for f in first]
    assert client.gather(again) == list(range(20))
    assert CALLS["pure"] == 20  # the second map resolved from the first's results
    # Sent twice at once (the second layer queued behind the first): computed once too.
    twice = [client.map(counted, ["twice"] * 20, range(20), as_layer=True) for _ in range(2)]
    assert client.gather(twice) == [list(range(20))] * 2 and CALLS["twice"] == 20
    # The same map once more with the first futures gone still names the same keys.
    keys = [f.key for f in first]
    del first, again
    gc.collect()
    assert [f.key for f in client.map(counted, ["pure"] * 20, range(20), as_layer=True)] == keys
    # Anything different names another layer.
    names = {
        layer_name(client.map(inc, range(20), as_layer=True)[0].key),
        layer_name(client.map(inc, range(21), as_layer=True)[0].key),
        layer_name(client.map(inc, range(1, 21), as_layer=True)[0].key),
        layer_name(client.map(double, range(20), as_layer=True)[0].key),
        layer_name(client.map(add, range(20), y=1, as_layer=True)[0].key),
        layer_name(client.map(add, range(20), y=2, as_layer=True)[0].key),
        layer_name(client.map(add, range(20), range(20), as_layer=True)[0].key),
    }
    assert len(names) == 7
    impure = [client.map(counted, ["impure"] * 5, range(5), as_layer=True, pure=False) for _ in range(2)]
    assert layer_name(impure[0][0].key) != layer_name(impure[1][0].key)
    assert client.gather(impure) == [list(range(5))] * 2 and CALLS["impure"] == 10


def test_kwargs_are_bound(client: Client) -> None:
    futures = client.map(add, range(50), y=3, as_layer=True)
    assert_layer_keys(futures, "add")
    assert client.gather(futures) == [x + 3 for x in range(50)]
    assert client.gather(client.map(affine, range(5), b=2, c=1, as_layer=True)) == [2 * x + 1 for x in range(5)]


def test_futures_among_arguments(client: Client) -> None:
    x = client.submit(inc, 1)
    fallback = client.map(add, range(N), [x] * N)  # big, but a layer cannot depend on futures
    assert all(EXPLICIT_KEY.match(f.key).group(1) == "add" for f in fallback[:100])  # type: ignore[union-attr]
    assert client.gather(fallback[-100:]) == [i + 2 for i in range(N - 100, N)]
    in_kwargs = client.map(add, range(N), y=x)
    assert EXPLICIT_KEY.match(in_kwargs[0].key) and client.gather(in_kwargs[:3]) == [2, 3, 4]
    with pytest.raises(ValueError, match="futures"):
        client.map(add, [1, 2], [x, x], as_layer=True)
    with pytest.raises(ValueError, match="futures"):
        client.map(add, [1, 2], [[x], [x]], as_layer=True)  # nested
    with pytest.raises(ValueError, match="futures"):
        client.map(add, [1, 2], y=x, as_layer=True)
    with pytest.raises(ValueError, match="key list or batch_size"):
        client.map(inc, [1, 2], key=["k-1", "k-2"], as_layer=True)
    with pytest.raises(ValueError, match="key list or batch_size"):
        client.map(inc, [1, 2], batch_size=1, as_layer=True)
    with pytest.raises(ValueError, match="quote"):
        client.map(inc, [1, 2], key="it's", as_layer=True)
    # A key list or batch_size on a big map: explicit tasks.
    batched = client.map(double, range(N), batch_size=N // 2)
    assert EXPLICIT_KEY.match(batched[0].key) and client.gather(batched[-3:]) == [2 * i for i in range(N - 3, N)]


def test_an_erring_task_in_a_layer(client: Client) -> None:
    futures = client.map(fail_on_seven, range(20), as_layer=True)
    with pytest.raises(KeyError, match="seven-7"):
        futures[7].result()
    assert futures[7].status == "error"
    assert [f.result() for i, f in enumerate(futures) if i != 7] == [i for i in range(20) if i != 7]
    assert client.gather(futures, errors="skip") == [i for i in range(20) if i != 7]
    messages = client.map(fail, ["a", "b"], as_layer=True)
    with pytest.raises(ValueError, match="b"):
        messages[1].result()


def test_retries_apply_to_every_task_of_a_layer(client: Client) -> None:
    retried = client.map(flaky, ["retried"] * 30, range(30), as_layer=True, retries=1)
    assert client.gather(retried) == [10 * x for x in range(30)]
    assert all(ATTEMPTS[("retried", x)] == 2 for x in range(30))
    once = client.map(flaky, ["once"] * 30, range(30), as_layer=True)
    with pytest.raises(RuntimeError, match="first attempt"):
        once[0].result()
    assert client.gather(once, errors="skip") == []
    assert all(f.status == "error" for f in once) and all(ATTEMPTS[("once", x)] == 1 for x in range(30))


def test_workers_restriction_applies_to_every_task_of_a_layer(client: Client, cluster: BackgroundCluster) -> None:
    for i, target in enumerate(cluster.workers):
        # (Restrictions are not part of a pure map's name: other arguments each time.)
        futures = client.map(affine, range(200), [i] * 200, as_layer=True, workers=[target.address])
        assert client.gather(futures) == [i * x for x in range(200)]
        keys = [f.key for f in futures]

        def holders() -> set[tuple[str, ...]]:
            tasks = cluster.server.state.tasks
            return {tuple(ws.address for ws in tasks[k].who_has or ()) for k in keys}

        assert cluster.portal.call(holders) == {(target.address,)}


def test_resources_and_loose_restrictions_of_a_layer(client: Client, cluster: BackgroundCluster) -> None:
    nowhere = "tcp://127.0.0.1:1"
    loose = client.map(affine, range(20), [5] * 20, as_layer=True, workers=[nowhere], allow_other_workers=True)
    assert client.gather(loose) == [5 * x for x in range(20)]
    strict = client.map(affine, range(20), [6] * 20, as_layer=True, workers=[nowhere])
    needs_gpu = client.map(affine, range(20), [7] * 20, as_layer=True, resources={"GPU": 1})
    keys = [f.key for f in strict + needs_gpu]
    cluster.wait_until(lambda: all(cluster.task_state(k) == "no-worker" for k in keys))
    assert cluster.portal.call(
        lambda: all(cluster.server.state.tasks[f.key].resource_restrictions == {"GPU": 1.0} for f in needs_gpu)
    )
    client.cancel(strict + needs_gpu)
    cluster.wait_until(lambda: not any(k in cluster.server.state.tasks for k in keys))


def test_layer_futures_as_dependencies_then_forgotten(client: Client, cluster: BackgroundCluster) -> None:
    futures = client.map(double, range(100), as_layer=True)
    total = client.submit(sum, futures)
    pair = client.submit(add, futures[3], futures[99])
    assert total.result() == sum(2 * x for x in range(100)) and pair.result() == 6 + 198
    assert client.gather([futures[0], pair]) == [0, 204]
    keys = [f.key for f in futures] + [total.key, pair.key]
    assert cluster.known(keys[0]) and cluster.known(keys[99])
    del futures, total, pair
    gc.collect()
    cluster.wait_until(lambda: not any(k in cluster.server.state.tasks for k in keys))
    big = client.map(inc, range(N))
    assert client.submit(sum, big[-10:]).result() == sum(range(N - 9, N + 1))
    keys = [f.key for f in big]
    del big
    gc.collect()
    cluster.wait_until(lambda: not any(k in cluster.server.state.tasks for k in keys))


def test_compute_graph_options(client: Client, cluster: BackgroundCluster) -> None:
    g = Graph()
    flaky_parts = g.map(flaky, ["graph"] * 10, range(10))
    [summed] = client.compute_graph(g, g.tree_reduce(flaky_parts, combine=sum), retries=1)
    assert summed.result() == 10 * sum(range(10))
    g = Graph()
    [failed] = client.compute_graph(g, g.tree_reduce(g.map(flaky, ["graph-once"] * 3, range(3)), combine=sum))
    with pytest.raises(RuntimeError, match="first attempt"):
        failed.result()
    # A restriction: every task of the graph on one worker.
    target = cluster.workers[1]
    g = Graph()
    pinned = client.compute_graph(g, g.map(double, range(50)), workers=target.address)
    assert client.gather(pinned) == [2 * x for x in range(50)]
    assert {tuple(cluster.holders(f.key)) for f in pinned} == {(target.address,)}


def test_priority_of_every_task_of_a_layer(client: Client, cluster: BackgroundCluster) -> None:
    """Submitted in the order low, default, high, higher: the scheduler orders them the other way.

    (Lower values run first; without the options the earlier submission would come first.)
    """
    graphs = [Graph() for _ in range(3)]
    low = client.compute_graph(graphs[0], graphs[0].map(record, [f"low-{i}" for i in range(20)]), priority=-5)
    default = client.compute_graph(graphs[1], graphs[1].map(record, [f"default-{i}" for i in range(20)]))
    high = client.compute_graph(graphs[2], graphs[2].map(record, [f"high-{i}" for i in range(20)]), priority=5)
    mapped = client.map(record, [f"mapped-{i}" for i in range(20)], as_layer=True, priority=7, pure=False)
    groups = [mapped, high, default, low]
    cluster.wait_until(lambda: all(f.key in cluster.server.state.tasks for g in groups for f in g))

    def priorities() -> list[tuple[int, int]]:
        tasks = cluster.server.state.tasks
        return [(min(tasks[f.key].priority for f in g), max(tasks[f.key].priority for f in g)) for g in groups]

    ranges = cluster.portal.call(priorities)
    assert all(ranges[i][1] < ranges[i + 1][0] for i in range(3)), ranges
    assert client.gather(high + low + mapped) == (
        [f"high-{i}" for i in range(20)] + [f"low-{i}" for i in range(20)] + [f"mapped-{i}" for i in range(20)]
    )


def keyword_named_layer(x: int, layer: int = 0) -> tuple[int, int]:
    return (x, layer)


def test_a_keyword_named_layer_reaches_the_function(client: Client) -> None:
    # Dask code passes unknown keywords through to the function; only ``as_layer`` is map's own.
    futures = client.map(keyword_named_layer, range(3), layer=5)
    assert client.gather(futures) == [(0, 5), (1, 5), (2, 5)]


# -- the FutureSequence a layer map returns ------------------------------------------------


def triple(x: int) -> int:
    return 3 * x


def test_a_big_map_costs_no_per_input_bookkeeping_and_frees_the_scheduler(
    client: Client, cluster: BackgroundCluster
) -> None:
    n = 100_000
    seq = client.map(triple, range(n))
    assert isinstance(seq, FutureSequence) and len(seq) == n
    # The O(1) contract, structurally: no key state, table entry or per-key list made by the call.
    assert len(client._state.states) == 0 and client._state.layers[seq.name].states is None
    assert client.gather(seq) == [3 * x for x in range(n)]
    assert len(client._state.states) == 0 and seq._futures is None  # gather made no futures either
    assert seq[-1].result() == 3 * (n - 1) and seq[5].status == "finished"
    sample = [seq.key(i) for i in (0, 1, n // 2, n - 1)]
    assert all(cluster.known(k) for k in sample)
    del seq
    gc.collect()
    cluster.wait_until(lambda: not any(k in cluster.server.state.tasks for k in sample), timeout=20)
    assert client._state.layers == {} and client._state.states == {}
    assert type(client.map(triple, range(3))) is list  # small maps: a list, as before


def test_a_sequence_where_futures_are_expected(client: Client) -> None:
    seq = client.map(inc, range(40), as_layer=True)
    assert isinstance(seq, FutureSequence)
    done, not_done = wait(seq)
    assert len(done) == 40 and not not_done and seq[0] in done
    completed = list(as_completed(seq))
    assert len(completed) == 40 and {id(f) for f in completed} == {id(f) for f in seq}
    assert client.submit(sum, seq).result() == sum(range(1, 41))
    assert client.gather(client.map(double, seq)) == [2 * (x + 1) for x in range(40)]  # futures as inputs
    nested = client.gather({"all": seq, "some": (seq[0], [seq[-1]])})
    assert nested == {"all": list(range(1, 41)), "some": (1, [40])}
    assert client.gather([seq, seq[:2]]) == [list(range(1, 41)), [1, 2]]


def test_statuses_of_futures_made_after_their_keys_ended(client: Client) -> None:
    seq = client.map(fail_on_seven, range(20), as_layer=True)
    assert client.gather(seq, errors="skip") == [i for i in range(20) if i != 7]
    assert seq._futures is None  # nothing made yet: the news was kept by the layer
    erred = seq[7]
    assert erred.status == "error" and "seven-7" in (erred.traceback() or "")
    with pytest.raises(KeyError, match="seven-7"):
        erred.result()
    assert "Remote traceback" in "".join(erred.exception().__notes__)
    assert seq[3].status == "finished" and seq[3].result() == 3
    with pytest.raises(KeyError, match="seven-7"):
        client.gather(seq)


def test_cancelling_a_sequence(client: Client, cluster: BackgroundCluster) -> None:
    try:
        seq = client.map(gated, ["cancel-seq"] * 8, range(8), as_layer=True, pure=False)
        before = seq[2]
        cluster.wait_until(lambda: all(seq.key(i) in cluster.server.state.tasks for i in range(8)))
        client.cancel(seq)
        assert before.status == "cancelled" and [f.status for f in seq] == ["cancelled"] * 8
        with pytest.raises(FutureCancelledError):
            seq[5].result()
        keys = seq.keys()
        cluster.wait_until(lambda: not any(k in cluster.server.state.tasks for k in keys), timeout=20)
    finally:
        gate("cancel-seq").set()


def test_a_refused_layer_fails_its_sequence(client: Client, cluster: BackgroundCluster) -> None:
    limit = cluster.server.max_layer_tasks
    cluster.server.max_layer_tasks = 5
    try:
        seq = client.map(inc, range(10), as_layer=True)
        before = seq[0]
        error = before.exception(timeout=10)
        assert isinstance(error, GraphError) and "max_layer_tasks" in str(error)
        assert seq[9].status == "error" and isinstance(seq[9].exception(), GraphError)
        with pytest.raises(GraphError):
            client.gather(seq)
    finally:
        cluster.server.max_layer_tasks = limit
    assert client.gather(client.map(inc, range(10), as_layer=True)) == list(range(1, 11))


def test_the_same_pure_map_twice_each_sequence_holds_its_keys(client: Client, cluster: BackgroundCluster) -> None:
    first = client.map(triple, range(30), as_layer=True)
    second = client.map(triple, range(30), as_layer=True)
    assert first.name == second.name and client.gather(first) == client.gather(second)
    keys = first.keys()
    del first
    gc.collect()
    client.gather(client.submit(inc, 1))  # a round trip: the release (if any) reached the scheduler
    assert all(cluster.known(k) for k in keys) and second[29].result() == 87
    kept = second[0]
    second.release()
    cluster.wait_until(lambda: not any(k in cluster.server.state.tasks for k in keys[1:]), timeout=20)
    assert cluster.known(keys[0]) and kept.result() == 0
    del kept
    gc.collect()
    cluster.wait_until(lambda: keys[0] not in cluster.server.state.tasks, timeout=20)
