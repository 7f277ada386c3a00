"""Dask collections on dsched: every result must equal dask's synchronous scheduler.

The matrix runs real dask.array, dask.dataframe, dask.bag and dask.delayed
workloads (as dask 2026 builds them: task-spec graphs, with some legacy
tuples) through ``dask.compute(..., scheduler=client.get)``, ``client.compute``
and ``client.persist`` on one in-process cluster of two workers.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import dask
import dask.array as da
import dask.bag as db
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest

from dsched._client import Client
from dsched._cluster import LocalCluster
from dsched._dask_graph import build_graph
from dsched._future import Future

CALLS: list[int] = []
_calls_lock = threading.Lock()


def counted_double(block: Any) -> Any:
    """A block function that records each call (workers run in this process)."""
    with _calls_lock:
        CALLS.append(1)
    return block * 2


def add_one(i: int) -> int:
    return i + 1


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    with LocalCluster(n_workers=2, processes=False) as cluster, Client(cluster) as c:
        yield c


def same(got: Any, expected: Any) -> None:
    if isinstance(expected, pd.DataFrame):
        pd.testing.assert_frame_equal(_rows(got), _rows(expected))
    elif isinstance(expected, pd.Series):
        pd.testing.assert_series_equal(got.sort_index(), expected.sort_index())
    elif isinstance(expected, np.ndarray) or np.isscalar(expected):
        np.testing.assert_allclose(got, expected)
    else:
        assert got == expected


def _rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows in a defined order (a shuffle's or merge's row order is not): sorted by index and values.

    A merge's output index is positional within each partition, so only its values are compared.
    """
    if isinstance(frame.index, pd.RangeIndex) or frame.index.name is None and frame.index.has_duplicates:
        frame = frame.reset_index(drop=True)
    else:
        frame = frame.reset_index()
    return frame.sort_values(list(frame.columns)).reset_index(drop=True)


def _array() -> da.Array:
    return da.random.default_rng(42).random((60, 60), chunks=(15, 20))


def _frame() -> dd.DataFrame:
    rng = np.random.default_rng(7)
    pdf = pd.DataFrame({"k": rng.integers(0, 9, 400), "v": rng.random(400), "w": np.arange(400)})
    return dd.from_pandas(pdf, npartitions=8)


def _bag() -> db.Bag:
    return db.from_sequence(range(200), npartitions=7)


def _delayed() -> Any:
    parts = [dask.delayed(add_one)(i) for i in range(20)]
    pairs = [dask.delayed(lambda a, b: a * b)(parts[i], parts[-i - 1]) for i in range(10)]
    return dask.delayed(sum)(pairs)


WORKLOADS: dict[str, Callable[[], Any]] = {
    "array-sum": lambda: _array().sum(),
    "array-mean-axis0": lambda: _array().mean(axis=0),
    "array-std-axis1": lambda: _array().std(axis=1),
    "array-x-plus-xT": lambda: _array() + _array().T,
    "array-xxT-sum": lambda: (_array() + _array().T).sum(),
    "array-matmul": lambda: _array() @ _array().T,
    "array-rechunk": lambda: _array().rechunk((7, 60)),
    "frame-groupby-agg": lambda: _frame().groupby("k").agg({"v": "sum", "w": "max"}),
    "frame-groupby-mean": lambda: _frame().groupby("k").v.mean(),
    "frame-merge": lambda: _frame().merge(_frame()[["k", "w"]].rename(columns={"w": "w2"}), on="k"),
    "frame-set-index": lambda: _frame().set_index("w"),
    "frame-shuffle": lambda: _frame().shuffle("k"),
    "bag-map-filter": lambda: _bag().map(add_one).filter(lambda i: i % 3 == 0),
    "bag-fold": lambda: _bag().map(add_one).fold(lambda a, b: a + b),
    "bag-frequencies": lambda: _bag().map(lambda i: i % 5).frequencies(),
    "delayed": _delayed,
}


@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_dask_compute_with_client_get_equals_sync(client: Client, name: str) -> None:
    collection = WORKLOADS[name]()
    (expected,) = dask.compute(collection, scheduler="sync")
    (got,) = dask.compute(collection, scheduler=client.get)
    same(got, expected)


@pytest.mark.parametrize("name", ["array-xxT-sum", "frame-groupby-agg", "bag-frequencies", "delayed"])
def test_client_compute_returns_a_future_of_the_finalized_result(client: Client, name: str) -> None:
    collection = WORKLOADS[name]()
    future = client.compute(collection)
    assert isinstance(future, Future)
    same(future.result(), dask.compute(collection, scheduler="sync")[0])


def test_client_compute_several_collections_and_held_futures(client: Client) -> None:
    x = _array()
    first = client.compute(x.sum())
    assert first.result() == pytest.approx(float(x.sum().compute(scheduler="sync")))
    # dask fuses x.sum() differently inside this bigger graph; the held future above must not conflict.
    total, mean = client.compute([x.sum(), x.mean()])
    assert total.result() == pytest.approx(first.result())
    assert mean.result() == pytest.approx(float(x.mean().compute(scheduler="sync")))


def test_persist_keeps_partitions_on_the_cluster_and_does_not_recompute(client: Client) -> None:
    x = da.arange(100, chunks=10).map_blocks(counted_double)
    CALLS.clear()
    persisted = client.persist(x)
    assert isinstance(persisted, da.Array) and persisted.chunks == x.chunks
    assert all(isinstance(v, Future) for v in dict(persisted.dask).values())
    np.testing.assert_array_equal(persisted.compute(scheduler=client.get), np.arange(100) * 2)
    assert client.compute(persisted.sum()).result() == 9900
    assert len(CALLS) == 10  # once per block: computing the persisted array again fetched its blocks


def test_persist_dataframe_and_bag(client: Client) -> None:
    frame = _frame()
    persisted = client.persist(frame)
    assert isinstance(persisted, dd.DataFrame) and persisted.npartitions == frame.npartitions
    same(client.compute(persisted.groupby("k").v.sum()).result(), frame.groupby("k").v.sum().compute(scheduler="sync"))
    bag = client.persist(_bag().map(add_one))
    assert sorted(bag.compute(scheduler=client.get)) == list(range(1, 201))


def test_a_persisted_collection_sends_no_task_for_its_partitions(client: Client) -> None:
    persisted = client.persist(da.ones((20,), chunks=5))
    expr = dask.base.collections_to_expr([persisted.sum()]).optimize()
    graph = build_graph(expr, list(dask.core.flatten(expr.__dask_keys__())))
    held = {f.key for f in dict(persisted.dask).values()}
    assert not held & {t.key for t in graph.tasks}
    assert held <= {d for t in graph.tasks for d in t.dependencies}


def test_shared_functions_are_pickled_once(client: Client) -> None:
    x = da.ones((100, 100), chunks=10)  # 100 chunks
    expr = dask.base.collections_to_expr([(x + 1).sum(axis=0)], optimize_graph=False)
    graph = build_graph(expr, list(dask.core.flatten(expr.__dask_keys__())))
    assert len(graph.tasks) > 200
    assert len(graph.functions) < 20


def test_as_default_and_set_as_default_are_restored_on_close(client: Client) -> None:
    before = dask.config.get("scheduler", None)
    with Client(client.scheduler_address, set_as_default=True) as other:
        assert dask.config.get("scheduler") == other.get
        assert _array().sum().compute() == pytest.approx(float(_array().sum().compute(scheduler="sync")))
    assert dask.config.get("scheduler", None) == before
    client.as_default()
    try:
        assert dask.config.get("scheduler") == client.get
        assert _bag().map(add_one).sum().compute() == sum(range(1, 201))
    finally:
        client._restore_dask_default()
    assert dask.config.get("scheduler", None) == before


def test_task_errors_reach_dask_compute(client: Client) -> None:
    def fail(block: Any) -> Any:
        raise ValueError("bad block")

    with pytest.raises(ValueError, match="bad block"):
        dask.compute(da.ones(10, chunks=5).map_blocks(fail), scheduler=client.get)
    with pytest.raises(TypeError, match="not a Dask collection"):
        client.compute([1, 2])
