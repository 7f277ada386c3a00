"""Graph submission: validation (refused graphs change nothing) and ordering."""

from __future__ import annotations

import random

import pytest
from _driver import Cluster, computed_keys, computes, graph, of_type, spec
from hypothesis import given, settings
from hypothesis import strategies as st

from sched_core import (
    ClientError,
    ClientKeysInMemory,
    GraphSubmitted,
    KeysScattered,
    TaskSpec,
)


def errors(out: list) -> list[ClientError]:
    return of_type(out, ClientError)


def busy_cluster() -> Cluster:
    """Two workers and another client's work in progress."""
    c = Cluster()
    c.add_worker("a", 2)
    c.add_worker("b", 2)
    c.submit("other", {"o-1": [], "o-2": [], "o-sum": ["o-1", "o-2"]}, ["o-sum"])
    c.finish("o-1")
    return c


def assert_refused(c: Cluster, tasks: list[TaskSpec], wanted: list[str], kind: str) -> ClientError:
    """Submit a bad graph as "bad"; check the error and that nothing changed."""
    before = c.snapshot()
    generation = c.state.generation
    out = c.handle(GraphSubmitted("bad", tasks, wanted))
    [error] = errors(out)
    assert (error.client, error.kind) == ("bad", kind)
    assert len(out) == 1, out
    assert c.snapshot() == before
    assert c.state.generation == generation
    # The other client's work goes on unaffected.
    c.run()
    assert c.clients["other"].status["o-sum"] == "memory"
    return error


# ----------------------------------------------------------------------
# Validation


def test_missing_dependency() -> None:
    c = busy_cluster()
    error = assert_refused(c, [spec("x"), spec("y", ["x", "ghost"])], ["y"], "missing-dependency")
    assert error.keys == ["ghost"]
    assert "'ghost'" in error.message


def test_several_missing_dependencies_are_all_named() -> None:
    c = busy_cluster()
    error = assert_refused(c, [spec("y", ["g1", "o-1", "g2"]), spec("z", ["g3"])], ["y", "z"], "missing-dependency")
    assert error.keys == ["g1", "g2", "g3"]


def test_dependency_on_a_known_key_is_not_missing() -> None:
    c = busy_cluster()
    out = c.submit("c1", [spec("mine", ["o-1"])], ["mine"])
    [instr] = computes(out)
    assert instr.who_has == {"o-1": [c.state.tasks["o-1"].who_has[0].address]}


def is_cycle(keys: list[str], edges: dict[str, list[str]]) -> bool:
    """``keys`` walks a cycle: each depends on the next, and it closes."""
    return len(keys) >= 2 and keys[0] == keys[-1] and all(keys[i + 1] in edges[keys[i]] for i in range(len(keys) - 1))


def test_cycle_is_named_in_order() -> None:
    edges = {"root": [], "a": ["root", "c"], "b": ["a"], "c": ["b"], "out": ["c"]}
    c = busy_cluster()
    error = assert_refused(c, graph(edges), ["out"], "cycle")
    assert is_cycle(error.keys, edges), error.keys
    assert set(error.keys) == {"a", "b", "c"}
    assert len(error.keys) == 4
    assert " -> ".join(error.keys) in error.message


def test_self_dependency_is_a_cycle() -> None:
    c = busy_cluster()
    error = assert_refused(c, [spec("x", ["x"])], ["x"], "cycle")
    assert error.keys == ["x", "x"]


def test_cycle_with_no_outputs() -> None:
    # Every task is someone's dependency: no output to start the walk from.
    edges = {"a": ["b"], "b": ["a"]}
    c = busy_cluster()
    error = assert_refused(c, graph(edges), [], "cycle")
    assert is_cycle(error.keys, edges)


@settings(max_examples=50, deadline=None)
@given(st.integers(2, 40), st.randoms(use_true_random=False))
def test_random_cycle_is_found(length: int, rnd: random.Random) -> None:
    keys = [f"k{i}" for i in range(length)]
    rnd.shuffle(keys)
    edges: dict[str, list[str]] = {k: [] for k in keys}
    for i, k in enumerate(keys):
        edges[k].append(keys[(i + 1) % length])
    # Acyclic decoration around it.
    for j in range(rnd.randint(0, 10)):
        edges[f"extra-{j}"] = rnd.sample(keys, rnd.randint(1, min(3, length)))
    items = list(edges.items())
    rnd.shuffle(items)
    c = Cluster()
    c.add_worker("a", 1)
    out = c.handle(GraphSubmitted("c1", graph(dict(items)), [k for k in edges if k.startswith("extra")]))
    [error] = errors(out)
    assert error.kind == "cycle"
    assert is_cycle(error.keys, edges)
    assert set(error.keys) == set(keys)
    assert c.state.tasks == {}


def test_conflicting_run_spec() -> None:
    c = busy_cluster()
    error = assert_refused(c, [spec("o-1", run_spec=b"something else")], ["o-1"], "conflicting-definition")
    assert error.keys == ["o-1"]


def test_conflicting_dependencies() -> None:
    c = busy_cluster()
    c.submit("c1", {"p": [], "q": []}, ["p", "q"])
    c.submit("c1", [spec("r", ["p"])], ["r"])
    error = assert_refused(c, [spec("r", ["q"], run_spec=("run", "r"))], ["r"], "conflicting-definition")
    assert error.keys == ["r"]
    assert_refused(c, [spec("r", ["p", "q"], run_spec=("run", "r"))], ["r"], "conflicting-definition")


def test_conflict_within_one_submission() -> None:
    c = busy_cluster()
    error = assert_refused(c, [spec("x"), spec("x", run_spec="other")], ["x"], "conflicting-definition")
    assert error.keys == ["x"]
    error = assert_refused(c, [spec("p"), spec("x"), spec("x", ["p"])], ["x"], "conflicting-definition")
    assert error.keys == ["x"]


def test_a_key_listed_twice_identically_is_one_task() -> None:
    c = Cluster()
    c.add_worker("a", 1)
    out = c.submit("c1", [spec("x"), spec("y", ["x"]), spec("x")], ["y"])
    assert computed_keys(out) == ["x"]
    assert sorted(c.state.tasks) == ["x", "y"]
    c.run()
    assert c.clients["c1"].status == {"y": "memory"}


def test_redefining_scattered_data_as_a_task_conflicts() -> None:
    c = busy_cluster()
    c.workers["a"].data["d"] = 1
    c.handle(KeysScattered("other", ["a"], {"d": 1}))
    error = assert_refused(c, [spec("d")], ["d"], "conflicting-definition")
    assert error.keys == ["d"]


def test_wanted_key_absent() -> None:
    c = busy_cluster()
    error = assert_refused(c, [spec("x")], ["x", "absent"], "unknown-key")
    assert error.keys == ["absent"]


def test_wanting_a_known_key_outside_the_submission() -> None:
    c = busy_cluster()
    out = c.submit("c1", [spec("x")], ["x", "o-1"])
    assert errors(out) == []
    assert [i.keys for i in of_type(out, ClientKeysInMemory) if i.client == "c1"] == [["o-1"]]


def test_a_key_redefined_after_it_was_forgotten_is_new() -> None:
    c = busy_cluster()
    c.submit("c1", {"x": []})
    c.run()
    c.release("c1", ["x"])
    assert c.state_of("x") is None
    out = c.submit("c1", [spec("x", ["o-sum"], run_spec="v2")], ["x"])
    assert errors(out) == []
    [instr] = computes(out)
    assert (instr.key, instr.run_spec, list(instr.who_has)) == ("x", "v2", ["o-sum"])


def test_refused_submission_from_a_new_client_registers_no_tasks() -> None:
    c = Cluster()
    out = c.handle(GraphSubmitted("c1", [spec("a", ["b"]), spec("b", ["a"])], ["a"]))
    assert errors(out)[0].kind == "cycle"
    assert c.state.tasks == {} and c.state.groups == {}
    assert c.state.counts.as_list() == [0] * 8


# ----------------------------------------------------------------------
# Resubmission


def test_identical_resubmission_is_deduplicated() -> None:
    c = Cluster()
    c.add_worker("a", 2)
    edges = {"x": [], "y": ["x"]}
    c.submit("c1", edges, ["y"])
    out = c.submit("c2", edges, ["y"])
    assert computes(out) == []
    assert errors(out) == []
    out = c.finish("x")
    assert computed_keys(out) == ["y"]
    out = c.finish("y")
    assert sorted((i.client, i.keys) for i in of_type(out, ClientKeysInMemory)) == [("c1", ["y"]), ("c2", ["y"])]
    assert c.n_computes == 2


def test_resubmitting_a_key_in_memory_tells_only_the_resubmitting_client() -> None:
    c = Cluster()
    c.add_worker("a", 1)
    c.submit("c1", {"x": []})
    c.finish("x")
    out = c.submit("c2", {"x": []})
    assert computes(out) == []
    assert [(i.client, i.keys) for i in of_type(out, ClientKeysInMemory)] == [("c2", ["x"])]


def test_resubmission_extends_a_graph() -> None:
    c = Cluster()
    c.add_worker("a", 1)
    c.submit("c1", {"x": [], "y": ["x"]}, ["y"])
    c.finish("x")
    out = c.submit("c1", {"x": [], "y": ["x"], "z": ["y", "x"]}, ["z"])
    assert computes(out) == []
    c.finish("y")
    assert c.state_of("z") == "processing"
    c.run()
    assert c.clients["c1"].status == {"y": "memory", "z": "memory"}


# ----------------------------------------------------------------------
# Ordering


def tree_reduction(n_leaves: int, fan_in: int = 2) -> tuple[dict[str, list[str]], list[list[list[str]]]]:
    """Edges of a tree reduction, and per level the input lists of each combine."""
    edges: dict[str, list[str]] = {}
    level = [f"leaf-{i}" for i in range(n_leaves)]
    for k in level:
        edges[k] = []
    levels = []
    depth = 0
    while len(level) > 1:
        depth += 1
        nxt = []
        inputs = []
        for j in range(0, len(level), fan_in):
            key = f"combine{depth}-{j // fan_in}"
            edges[key] = level[j : j + fan_in]
            inputs.append(level[j : j + fan_in])
            nxt.append(key)
        levels.append(inputs)
        level = nxt
    return edges, levels


def priorities(c: Cluster) -> dict[str, int]:
    return {k: ts.priority for k, ts in c.state.tasks.items()}


def test_tree_reduction_finishes_one_combine_before_starting_the_next() -> None:
    edges, levels = tree_reduction(16)
    c = Cluster()
    c.submit("c1", edges, ["combine4-0"])
    p = priorities(c)
    for inputs in levels:
        for first, second in zip(inputs, inputs[1:]):
            assert max(p[k] for k in first) < min(p[k] for k in second), (first, second)
    # A combine comes right after its inputs, before the next combine's inputs.
    for depth, inputs in enumerate(levels, start=1):
        for j in range(len(inputs) - 1):
            assert p[f"combine{depth}-{j}"] < min(p[k] for k in inputs[j + 1])
        for j, group in enumerate(inputs):
            assert max(p[k] for k in group) < p[f"combine{depth}-{j}"]


def test_tree_reduction_runs_in_little_memory() -> None:
    # One thread, results reported one at a time in priority order: the
    # ordering keeps O(depth) intermediate results in memory, not O(leaves).
    edges, levels = tree_reduction(256, fan_in=4)
    c = Cluster()
    c.add_worker("a", 1)
    c.submit("c1", edges, [f"combine{len(levels)}-0"])
    peak = 0
    while c.outstanding():
        key = min((k for _, k in c.outstanding()), key=lambda k: c.state.tasks[k].priority)
        c.finish(key)
        peak = max(peak, c.state.counts.memory)
    assert c.clients["c1"].status == {"combine4-0": "memory"}
    assert peak <= 4 * len(levels) + 2, peak


def test_independent_tasks_keep_submission_order() -> None:
    rnd = random.Random(5)
    keys = [f"t-{rnd.random()}" for _ in range(50)]
    c = Cluster()
    c.submit("c1", [spec(k) for k in keys])
    p = priorities(c)
    assert sorted(keys, key=p.__getitem__) == keys


def test_independent_chains_keep_submission_order_of_their_outputs() -> None:
    edges = {}
    outputs = []
    for name in ["zeta", "alpha", "mid"]:
        edges[f"{name}-in"] = []
        edges[f"{name}-out"] = [f"{name}-in"]
        outputs.append(f"{name}-out")
    c = Cluster()
    c.submit("c1", edges, outputs)
    p = priorities(c)
    assert sorted(edges, key=p.__getitem__) == ["zeta-in", "zeta-out", "alpha-in", "alpha-out", "mid-in", "mid-out"]


def random_dag(rnd: random.Random, n: int, max_fan_in: int) -> dict[str, list[str]]:
    keys = [f"n{i}" for i in range(n)]
    edges = {}
    for i, k in enumerate(keys):
        edges[k] = rnd.sample(keys[:i], min(i, rnd.randint(0, max_fan_in)))
    items = list(edges.items())
    rnd.shuffle(items)
    return dict(items)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 300), st.integers(0, 6), st.randoms(use_true_random=False))
def test_priorities_are_unique_and_dependencies_come_first(n: int, fan_in: int, rnd: random.Random) -> None:
    edges = random_dag(rnd, n, fan_in)
    c = Cluster()
    c.submit("c1", edges)  # all wanted: a task nobody needs is forgotten at once
    p = priorities(c)
    assert len(set(p.values())) == len(p)
    for key, deps in edges.items():
        for dep in deps:
            assert p[dep] < p[key]
    # A second submission comes after the first.
    more = {f"m{i}": [rnd.choice(list(edges))] for i in range(5)}
    c.submit("c1", more)
    p2 = priorities(c)
    assert min(p2[k] for k in more) > max(p.values())
    assert len(set(p2.values())) == len(p2)


def test_priority_order_on_a_single_thread_follows_the_graph_order() -> None:
    # Tasks that become ready together run in graph order.
    c = Cluster()
    c.add_worker("a", 1)
    edges = {"src": [], **{f"use-{i}": ["src"] for i in range(8)}}
    c.submit("c1", edges, [f"use-{i}" for i in range(8)])
    order = []
    while c.outstanding():
        key = c.outstanding()[0][1]  # the worker runs in arrival order
        order.extend(computed_keys(c.finish(key)))
    assert order == [f"use-{i}" for i in range(8)]


@pytest.mark.parametrize("n", [1, 2000])
def test_deep_chain_is_ordered_without_recursion(n: int) -> None:
    edges = {"c0": []} | {f"c{i}": [f"c{i - 1}"] for i in range(1, n)}
    c = Cluster()
    c.add_worker("a", 1)
    c.submit("c1", edges, [f"c{n - 1}"])
    p = priorities(c)
    assert [k for k in sorted(p, key=p.__getitem__)] == [f"c{i}" for i in range(n)]
