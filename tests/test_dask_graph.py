"""Dask tuple-format graphs -> SubmitGraph tasks, checked by running the tasks as a worker would."""

from __future__ import annotations

import operator
from typing import Any

import pytest
from _client_helpers import add, inc, total

from dsched._dask_graph import DaskGraph, build_graph, istask, stringify
from dsched._serialize import Ref, loads_args, loads_function


def run(graph: DaskGraph) -> dict[str, Any]:
    """Run the tasks in the order given, like workers that receive them in that order.

    Asserts that every task comes after its dependencies and that the
    dependencies are exactly the keys its arguments refer to.
    """
    functions = [loads_function(f) for f in graph.functions]
    data: dict[str, Any] = {}
    for task in graph.tasks:
        missing = [d for d in task.dependencies if d not in data]
        assert not missing, f"{task.key} comes before its dependencies {missing}"
        args, kwargs = loads_args(bytes(task.args), data)
        data[task.key] = functions[task.function](*args, **kwargs)
    return data


def results(dsk: dict[Any, Any], keys: Any) -> Any:
    graph = build_graph(dsk, keys)
    return graph.nest(run(graph))


def test_istask_and_stringify() -> None:
    assert istask((inc, 1)) and not istask((1, 2)) and not istask(()) and not istask([inc, 1])
    assert stringify("x") == "x"
    assert stringify(("x", 0)) == "('x', 0)"


def test_chain_diamond_and_list_arguments() -> None:
    dsk = {
        "x": 1,
        "y": (inc, "x"),
        "z": (add, "y", (inc, 10)),
        "w": (sum, ["x", "y"]),
        "left": (inc, "z"),
        "right": (operator.mul, "z", 2),
        "bottom": (add, "left", "right"),
    }
    assert results(dsk, ["z", "w", "bottom"]) == [13, 3, 14 + 26]
    assert results(dsk, "y") == 2
    assert results(dsk, [["x", "y"], ["w"]]) == [[1, 2], [3]]


def test_only_needed_tasks_are_sent_dependencies_first() -> None:
    dsk = {"a": 1, "b": (inc, "a"), "c": (inc, "b"), "unused": (inc, "c"), "other": 5}
    graph = build_graph(dsk, "c")
    assert [t.key for t in graph.tasks] == ["a", "b", "c"]
    assert [t.dependencies for t in graph.tasks] == [[], ["a"], ["b"]]
    assert graph.wanted == ["c"]


def test_tuple_keys_and_aliases() -> None:
    dsk = {("x", 0): 1, ("x", 1): (inc, ("x", 0)), "alias": ("x", 1), "s": (sum, [("x", 0), ("x", 1)])}
    graph = build_graph(dsk, [("x", 1), "alias", "s"])
    assert graph.wanted == ["('x', 1)", "alias", "s"]
    assert graph.nest(run(graph)) == [2, 2, 3]


def test_nested_tasks_in_lists_and_dicts() -> None:
    dsk = {
        "a": 2,
        "deep": (add, (inc, (inc, "a")), (operator.mul, "a", 10)),
        "listed": (total, [(inc, "a"), "a", [(inc, 0), 7]]),
        "mapping": (total, {"p": (inc, "a"), "q": ["a", 1]}),
        "literal_list": [(inc, "a"), "a"],
    }
    assert results(dsk, ["deep", "listed", "mapping", "literal_list"]) == [24, 3 + 2 + 1 + 7, 3 + 2 + 1, [3, 2]]


def test_literals_are_not_references() -> None:
    """Strings that are not keys, tuples that are not tasks, and unhashable values pass as they are."""
    dsk = {"x": 1, "y": (lambda *a: a, "not-a-key", (1, "x"), {"k": "x"}, "x")}
    ((text, tup, mapping, value),) = [results(dsk, "y")]
    assert text == "not-a-key" and tup == (1, "x") and value == 1
    assert mapping == {"k": 1}  # dict values are searched for keys (as Dask's task spec does)


def test_shared_function_pickled_once() -> None:
    dsk: dict[Any, Any] = {("leaf", i): (inc, i) for i in range(100)}
    dsk["root"] = (sum, [("leaf", i) for i in range(100)])
    graph = build_graph(dsk, "root")
    assert len(graph.functions) == 2  # inc and sum
    assert {t.function for t in graph.tasks if t.key != "root"} == {graph.tasks[0].function}
    assert graph.nest(run(graph)) == sum(range(1, 101))


def test_refs_and_unknown_keys() -> None:
    graph = build_graph({"y": (inc, Ref("held-elsewhere"))}, "y")
    assert graph.tasks[0].dependencies == ["held-elsewhere"]
    with pytest.raises(KeyError, match="not a key"):
        build_graph({"x": 1}, ["x", "nope"])


def test_cycle_is_left_for_the_scheduler() -> None:
    graph = build_graph({"a": (inc, "b"), "b": (inc, "a"), "c": (inc, "a")}, "c")
    assert sorted(t.key for t in graph.tasks) == ["a", "b", "c"]
    assert {t.key: t.dependencies for t in graph.tasks} == {"a": ["b"], "b": ["a"], "c": ["a"]}


def test_deep_chain_does_not_recurse() -> None:
    n = 5000
    dsk: dict[Any, Any] = {"k0": 0}
    for i in range(1, n):
        dsk[f"k{i}"] = (inc, f"k{i - 1}")
    graph = build_graph(dsk, f"k{n - 1}")
    assert [t.key for t in graph.tasks[:3]] == ["k0", "k1", "k2"]
    assert graph.nest(run(graph)) == n - 1


# -- tasks dask fused (dask._task_spec), nested on the client --------------------------------

ts = pytest.importorskip("dask._task_spec")


def function_names(graph: DaskGraph) -> dict[str, str]:
    """Each task's key -> the name of the function it runs (``run_nested`` for nested tasks)."""
    functions = [loads_function(f) for f in graph.functions]
    return {t.key: functions[t.function].__name__ for t in graph.tasks}


def test_a_fused_chain_runs_as_nested_calls_without_dask_ordering_it() -> None:
    chain = [
        ts.Task("a", inc, ts.TaskRef("x")),
        ts.Task("b", add, ts.TaskRef("a"), 10),
        ts.Task("c", operator.mul, ts.TaskRef("b"), 2),
    ]
    dsk = {"x": ts.DataNode("x", 1), "fused": ts.Task.fuse(*chain, key="fused")}
    graph = build_graph(dsk, "fused")
    assert function_names(graph)["fused"] == "run_nested"
    assert graph.tasks[-1].dependencies == ["x"]
    assert graph.nest(run(graph)) == ((1 + 1) + 10) * 2


def test_blockwise_placeholders_and_fused_tasks_inside_fused_tasks() -> None:
    # dask's blockwise fusion names its inputs with placeholders bound to the task's arguments,
    # and a fused chain may hold such a task as one of its inner tasks.
    block = ts.Task(
        "sum-block",
        ts._execute_subgraph,
        {"s": ts.Task("s", add, ts.TaskRef("__b0"), ts.TaskRef("t")), "t": ts.Task("t", operator.neg, ts.TaskRef("__b1"))},
        "s",
        ("__b0", "__b1"),
        ts.TaskRef("own"),
        ts.TaskRef("other"),
    )
    outer = ts.Task(
        "outer", ts._execute_subgraph, {"own": ts.Task("own", inc, 4), "sum-block": block}, "sum-block",
        ("other",), ts.TaskRef("other"),
    )
    dsk = {"other": ts.Task("other", inc, 1), "outer": outer}
    graph = build_graph(dsk, "outer")
    assert function_names(graph)["outer"] == "run_nested"
    assert {t.key: t.dependencies for t in graph.tasks}["outer"] == ["other"]
    assert graph.nest(run(graph)) == ts.execute_graph(dict(dsk))["outer"] == 5 - 2


def test_a_fused_task_using_an_inner_result_twice_is_shipped_as_dask_made_it() -> None:
    # x + x.T's diagonal blocks: both placeholders are bound to the same inner task, which
    # nesting would run twice; it runs through dask's _execute_subgraph instead.
    block = ts.Task(
        "diag", ts._execute_subgraph, {"d": ts.Task("d", add, ts.TaskRef("__b0"), ts.TaskRef("__b1"))}, "d",
        ("__b0", "__b1"), ts.TaskRef("x"), ts.TaskRef("x"),
    )
    outer = ts.Task("outer", ts._execute_subgraph, {"x": ts.Task("x", inc, 20), "diag": block}, "diag", ())
    graph = build_graph({"outer": outer}, "outer")
    assert function_names(graph)["outer"] == "_execute_subgraph"
    assert graph.nest(run(graph)) == 42


def test_dask_array_fused_blocks_are_nested_and_equal_dask() -> None:
    da = pytest.importorskip("dask.array")
    import dask
    from dask._expr import FinalizeCompute
    from dask.base import collections_to_expr

    x = da.random.default_rng(0).random((40, 40), chunks=(10, 10))
    expr: Any = FinalizeCompute(collections_to_expr([(x + x.T).sum()], True)).optimize()  # type: ignore[no-untyped-call]
    graph = build_graph(expr, list(expr.__dask_keys__()))
    names = list(function_names(graph).values())
    assert names.count("_execute_subgraph") == 4  # the diagonal blocks only
    assert names.count("run_nested") >= 16 - 4
    value = graph.nest(run(graph))
    while isinstance(value, list):  # the finalized result of one collection, among one
        (value,) = value
    expected = dask.compute((x + x.T).sum(), scheduler="sync")[0]  # type: ignore[attr-defined, no-untyped-call]
    assert value == pytest.approx(float(expected))
