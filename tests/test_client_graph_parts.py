"""A big task graph (``client.get``, dask collections) sent in parts while it is converted.

Each part's keys are held until the last part is in; afterwards the client
holds only the keys it asked for, and the results are those of one message.
"""

from __future__ import annotations

import operator
import threading
from typing import Any

import pytest
from _client_helpers import BackgroundCluster, inc

from dsched import _protocol as p
from dsched._client import Client
from dsched._client_state import ClientState
from dsched._dask_graph import FIRST_PART, PARTS_MIN_SIZE, GraphPlan, build_graph
from sched_core import state_name

N = PARTS_MIN_SIZE  # leaves; with the sums above them the graph is over the threshold


def tree(n: int, name: str = "t") -> tuple[dict[Any, Any], Any]:
    """``n`` leaves ``inc(i)``, summed pairwise up to one root: ``sum(range(1, n + 1))``."""
    dsk: dict[Any, Any] = {(f"{name}-leaf", i): (inc, i) for i in range(n)}
    level: list[tuple[Any, ...]] = [(f"{name}-leaf", i) for i in range(n)]
    depth = 0
    while len(level) > 1:
        depth += 1
        nxt = []
        for j in range(0, len(level), 2):
            key = (f"{name}-sum", depth, j // 2)
            dsk[key] = (operator.add, level[j], level[j + 1]) if j + 1 < len(level) else (inc, level[j])
            nxt.append(key)
        level = nxt
    return dsk, level[0]


def expected_root(n: int) -> int:
    dsk, root = tree(n)
    values: dict[Any, Any] = {}
    for key, (func, *args) in dsk.items():  # insertion order is dependencies first
        values[key] = func(*[values.get(a, a) if isinstance(a, tuple) else a for a in args])
    return int(values[root])


def test_parts_grow_and_together_are_the_whole_graph() -> None:
    dsk, root = tree(N)
    whole = build_graph(dsk, root)
    parts = list(GraphPlan(dsk, root).parts(first=FIRST_PART, growth=4))
    assert [len(part.tasks) for part in parts[:2]] == [FIRST_PART, 4 * FIRST_PART]
    assert [t.key for part in parts for t in part.tasks] == [t.key for t in whole.tasks]
    seen: set[str] = set()
    for part in parts:
        for task in part.tasks:
            assert set(task.dependencies) <= seen | {t.key for t in part.tasks}, "a part needs a later one"
            assert 0 <= task.function < len(part.functions)
        seen.update(t.key for t in part.tasks)
        assert len(part.functions) == len(set(part.functions))  # each function once per part


def test_a_big_graph_is_sent_in_parts_and_only_the_wanted_keys_stay_held(
    client: Client, cluster: BackgroundCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes: list[int] = []
    submit = ClientState.submit

    def spy(self: ClientState, functions: list[bytes], tasks: list[p.GraphTask], wanted: Any = None) -> Any:
        sizes.append(len(tasks))
        return submit(self, functions, tasks, wanted)

    monkeypatch.setattr(ClientState, "submit", spy)
    dsk, root = tree(N)
    (future,) = client.get(dsk, [root], sync=False)
    assert future.result() == expected_root(N)
    assert len([n for n in sizes if n]) >= 2 and sizes[0] == FIRST_PART and sum(sizes) == len(dsk)
    # The parts' holds are gone: the client holds the root only, and only its result stays in
    # memory (the tasks it came from stay known as released, for its lineage).
    cluster.wait_until(lambda: in_memory(cluster) == {future.key})
    assert list(client._state.states) == [future.key]
    assert client.get(dsk, root) == expected_root(N)  # sync: the result, then nothing held
    future.release()
    cluster.wait_until(lambda: not cluster.server.state.tasks)


def in_memory(cluster: BackgroundCluster) -> set[str]:
    return {key for key, ts in cluster.server.state.tasks.items() if state_name(ts.state) == "memory"}


class Unpicklable:
    def __reduce__(self) -> Any:
        raise TypeError("this argument cannot be pickled")


def test_a_part_that_cannot_be_pickled_raises_and_lets_go_of_the_parts_sent(
    client: Client, cluster: BackgroundCluster
) -> None:
    dsk, root = tree(N)
    last_leaf = ("t-leaf", N - 1)  # reached last: in a later part than the first
    dsk[last_leaf] = (inc, Unpicklable())
    with pytest.raises(TypeError, match="cannot be pickled"):
        client.get(dsk, root)
    cluster.wait_until(lambda: not cluster.server.state.tasks, timeout=20)
    assert not client._state.states  # its releases went out before the scheduler let go


def test_parts_from_several_threads_at_once(client: Client, cluster: BackgroundCluster) -> None:
    results: list[int] = []
    errors: list[BaseException] = []

    def compute(n: int) -> None:
        try:
            dsk, root = tree(n, name=f"thread{n}")
            results.append(client.get(dsk, root))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=compute, args=(n,)) for n in (N, N + 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    assert sorted(results) == sorted([expected_root(N), expected_root(N + 1)])
    cluster.wait_until(lambda: not cluster.server.state.tasks, timeout=20)
