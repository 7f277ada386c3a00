"""dsched.graph: high-level graphs built on the client, expanded on the scheduler."""

from __future__ import annotations

from typing import Any

import pytest

from dsched import Client, GraphError, graph


def load(i: int) -> int:
    return i


def square(x: int) -> int:
    return x * x


def add(x: int, y: int, z: int = 0) -> int:
    return x + y + z


def fail_on_three(x: int) -> int:
    if x == 3:
        raise ValueError("three")
    return x


def test_map_blockwise_and_tree_reduce(client: Client) -> None:
    g = graph.Graph()
    xs = g.map(load, range(500))
    ys = g.blockwise(square, xs)
    offset = g.map(load, [1000])
    zs = g.blockwise(add, xs, ys, offset)  # offset is broadcast
    total = g.tree_reduce(zs, combine=sum, split_every=7)
    [total_future] = client.compute_graph(g, total)
    assert total_future.key == f"('{total.name}', 0)"
    assert total_future.result() == sum(i + i * i + 1000 for i in range(500))
    assert client.gather(client.compute_graph(g, ys)[:3]) == [0, 1, 4]


def test_several_outputs_and_extra_arguments(client: Client) -> None:
    g = graph.Graph()
    xs = g.map(load, range(10), name="xs")
    plus = g.blockwise(add, xs, xs, args=(100,), name="plus")
    got_xs, got_plus = client.compute_graph(g, [xs, plus])
    assert [f.key for f in got_xs[:2]] == ["('xs', 0)", "('xs', 1)"]
    assert client.gather(got_plus) == [2 * i + 100 for i in range(10)]


def test_tree_reduce_with_chunk_and_aggregate(client: Client) -> None:
    g = graph.Graph()
    xs = g.map(load, range(100))
    mean = g.tree_reduce(
        xs,
        chunk=lambda x: (x, 1),
        combine=lambda parts: (sum(p[0] for p in parts), sum(p[1] for p in parts)),
        aggregate=lambda parts: sum(p[0] for p in parts) / sum(p[1] for p in parts),
        split_every=4,
    )
    assert client.compute_graph(g, mean)[0].result() == pytest.approx(49.5)


def test_a_failing_partition_erred_with_its_traceback(client: Client) -> None:
    g = graph.Graph()
    xs = g.map(fail_on_three, range(5))
    futures = client.compute_graph(g, xs)
    assert client.gather(futures[:3]) == [0, 1, 2]
    with pytest.raises(ValueError, match="three") as info:
        futures[3].result()
    assert any("fail_on_three" in note for note in info.value.__notes__)


def test_invalid_graphs_are_refused(client: Client) -> None:
    g = graph.Graph()
    other = graph.Graph()
    xs = g.map(load, range(3))
    with pytest.raises(ValueError, match="another graph"):
        other.blockwise(square, xs)
    with pytest.raises(ValueError, match="taken"):
        g.map(load, range(3), name=xs.name)
    with pytest.raises(ValueError, match="at least one element"):
        g.map(load, [])
    # A layer the scheduler cannot expand (misaligned inputs) is refused there, clearly.
    ys = g.map(load, range(4))
    g.maps.append(g.maps[-1].__class__("bad", 3, 0, None, [ys.name], [4]))
    g.order.append((0, len(g.maps) - 1))
    bad = graph.Collection(g, "bad", 3)
    futures: list[Any] = client.compute_graph(g, bad)
    with pytest.raises(GraphError, match="aligned"):
        futures[0].result(timeout=10)


def split_by_parity(values: list[int]) -> list[list[int]]:
    return [[v for v in values if v % 2 == 0], [v for v in values if v % 2 == 1]]


def concat(pieces: list[list[int]]) -> list[int]:
    return sorted(v for piece in pieces for v in piece)


def chunk_of(i: int) -> list[int]:
    return list(range(i * 10, i * 10 + 10))


def test_shuffle_redistributes_partitions(client: Client) -> None:
    g = graph.Graph()
    chunks = g.map(chunk_of, range(5))
    by_parity = g.shuffle(chunks, 2, split=split_by_parity, combine=concat)
    evens, odds = client.gather(client.compute_graph(g, by_parity))
    assert evens == list(range(0, 50, 2)) and odds == list(range(1, 50, 2))


def test_a_split_with_too_few_pieces_fails_clearly(client: Client) -> None:
    g = graph.Graph()
    chunks = g.map(chunk_of, range(2))
    three = g.shuffle(chunks, 3, split=split_by_parity, combine=concat)
    futures = client.compute_graph(g, three)
    assert client.gather(futures[:2])[0] == list(range(0, 20, 2))
    with pytest.raises(ValueError, match="no piece 2"):
        futures[2].result()
