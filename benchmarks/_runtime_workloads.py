"""Task functions and graphs shared by the dsched and the dask.distributed runs.

Both systems run exactly the same Python functions on the same inputs, so
any difference in the numbers is coordination cost, not work.  The worker
processes import this module by name (the driver puts benchmarks/ on their
PYTHONPATH), so the functions travel as references, not pickled code.

Every graph is built from a ``tag`` (a run's number): two runs never share a
key, so no run can be served from results a previous one left behind.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "chain_expected",
    "chain_graph",
    "inc",
    "map_expected",
    "map_inputs",
    "tree_expected",
    "tree_graph",
]

# Dask's legacy "tuple" graph format: key -> (function, *arguments), where an
# argument that is a key of the graph (or a list of such keys) stands for the
# result of that task.
Graph = dict[str, Any]

TREE_FAN_IN = 8


def inc(x: int) -> int:
    """The trivial task: cheaper than anything a scheduler does for it."""
    return x + 1


def map_inputs(n_tasks: int, tag: int) -> range:
    """Inputs of one ``map`` run; distinct per run so that keys never repeat."""
    start = tag * 10_000_000
    return range(start, start + n_tasks)


def map_expected(n_tasks: int, tag: int) -> list[int]:
    return [x + 1 for x in map_inputs(n_tasks, tag)]


def tree_leaf_count(n_tasks: int) -> int:
    """Leaves of a fan-in-8 tree with about ``n_tasks`` tasks in all (leaves * 8/7)."""
    return max(TREE_FAN_IN, n_tasks * (TREE_FAN_IN - 1) // TREE_FAN_IN)


def tree_graph(n_tasks: int, tag: int) -> tuple[Graph, str]:
    """A tree reduction: leaves ``inc(i)``, then ``sum`` of 8 at a time, level by level.

    Returns the graph and the key of its root.  With ``n_tasks=10_000`` there
    are 8,750 leaves and 10,003 tasks in 6 levels.
    """
    graph: Graph = {}
    level = [f"leaf-{tag}-{i}" for i in range(tree_leaf_count(n_tasks))]
    for i, key in enumerate(level):
        graph[key] = (inc, i)
    depth = 0
    while len(level) > 1:
        depth += 1
        parents = []
        for j in range(0, len(level), TREE_FAN_IN):
            key = f"sum-{tag}-{depth}-{j // TREE_FAN_IN}"
            graph[key] = (sum, level[j : j + TREE_FAN_IN])
            parents.append(key)
        level = parents
    return graph, level[0]


def tree_expected(n_tasks: int) -> int:
    n_leaves = tree_leaf_count(n_tasks)
    return sum(range(1, n_leaves + 1))


def chain_graph(n_steps: int, tag: int) -> tuple[Graph, str]:
    """A chain: step ``i`` is ``inc`` of step ``i - 1``; returns the graph and its last key."""
    graph: Graph = {f"step-{tag}-0": (inc, 0)}
    for i in range(1, n_steps):
        graph[f"step-{tag}-{i}"] = (inc, f"step-{tag}-{i - 1}")
    return graph, f"step-{tag}-{n_steps - 1}"


def chain_expected(n_steps: int) -> int:
    return n_steps
