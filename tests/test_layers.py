"""High-level graph layers expanded in sched_core: keys, dependencies, call specs, chunking."""

from __future__ import annotations

import pytest

import sched_core as sc
from sched_core import APPLY, REDUCE, LayerCall, LayerExpander, MapLayer, TasksLayer, TreeReduceLayer, layer_key


def expand_all(layers: list[sc.Layer], chunk: int = 1_000_000) -> list[sc.TaskSpec]:
    expander = LayerExpander(layers)
    out: list[sc.TaskSpec] = []
    while not expander.done:
        got = expander.next_chunk(chunk)
        assert 1 <= len(got) <= chunk
        out.extend(got)
    assert expander.next_chunk(chunk) == []
    assert len(out) == expander.total
    return out


def assert_topological(specs: list[sc.TaskSpec], known: set[str] | None = None) -> None:
    seen = set(known or ())
    for spec in specs:
        for dep in spec.dependencies:
            assert dep in seen, f"{spec.key} comes before its dependency {dep}"
        assert spec.key not in seen
        seen.add(spec.key)


def test_layer_keys_look_like_dasks_tuple_keys() -> None:
    assert layer_key("inc-abc", 3) == "('inc-abc', 3)"
    assert sc.key_split(layer_key("inc-abc12345", 3)) == "inc"


def test_map_over_inputs() -> None:
    specs = expand_all([MapLayer("inc-1", 3, "f", args=[b"a0", b"a1", b"a2"])])
    assert [s.key for s in specs] == ["('inc-1', 0)", "('inc-1', 1)", "('inc-1', 2)"]
    assert all(s.dependencies == [] for s in specs)
    call = specs[1].run_spec
    assert isinstance(call, LayerCall)
    assert (call.kind, call.function, call.args, call.keys) == (APPLY, "f", b"a1", [])


def test_blockwise_aligns_partitions_and_broadcasts_single_ones() -> None:
    layers: list[sc.Layer] = [
        MapLayer("x", 4, "load", args=[0, 1, 2, 3]),
        MapLayer("y", 4, "load", args=[4, 5, 6, 7]),
        MapLayer("scale", 1, "const", args=[10]),
        MapLayer("z", 4, "add", inputs=["x", "y", "scale"], input_partitions=[4, 4, 1]),
    ]
    specs = expand_all(layers)
    assert_topological(specs)
    z2 = next(s for s in specs if s.key == "('z', 2)")
    assert z2.dependencies == ["('x', 2)", "('y', 2)", "('scale', 0)"]
    assert isinstance(z2.run_spec, LayerCall) and z2.run_spec.keys == z2.dependencies and z2.run_spec.args is None


def test_tree_reduce_levels_and_keys() -> None:
    layers: list[sc.Layer] = [
        MapLayer("x", 20, "load", args=list(range(20))),
        TreeReduceLayer("total", "x", 20, combine="sum", aggregate="final", chunk="square", split_every=4),
    ]
    tree = layers[1]
    assert isinstance(tree, TreeReduceLayer)
    assert tree.levels() == [20, 5, 2, 1]  # chunk, combine(20->5), combine(5->2), aggregate
    specs = expand_all(layers)
    assert len(specs) == 20 + 20 + 5 + 2 + 1
    assert_topological(specs)
    by_key = {s.key: s for s in specs}
    assert by_key["('total-chunk', 7)"].dependencies == ["('x', 7)"]
    assert by_key["('total-combine-1', 1)"].dependencies == [layer_key("total-chunk", i) for i in range(4, 8)]
    assert by_key["('total-combine-2', 1)"].dependencies == [layer_key("total-combine-1", 4)]
    final = by_key["('total', 0)"]
    assert final.dependencies == [layer_key("total-combine-2", 0), layer_key("total-combine-2", 1)]
    assert isinstance(final.run_spec, LayerCall)
    assert (final.run_spec.kind, final.run_spec.function) == (REDUCE, "final")


def test_tree_reduce_small_input_is_one_aggregate() -> None:
    specs = expand_all(
        [MapLayer("x", 3, "load", args=[1, 2, 3]), TreeReduceLayer("s", "x", 3, combine="sum")]
    )
    assert [s.key for s in specs][-1] == "('s', 0)"
    assert specs[-1].dependencies == [layer_key("x", i) for i in range(3)]
    assert isinstance(specs[-1].run_spec, LayerCall) and specs[-1].run_spec.function == "sum"  # aggregate defaults to combine


def test_tasks_layer_passes_explicit_tasks_through() -> None:
    explicit = [sc.TaskSpec("a", [], b"run-a"), sc.TaskSpec("b", ["a"], b"run-b")]
    specs = expand_all([TasksLayer("misc", explicit)])
    assert specs == explicit


@pytest.mark.parametrize("chunk", [1, 7, 50, 10_000])
def test_expansion_in_chunks_gives_the_same_tasks_in_order(chunk: int) -> None:
    def layers() -> list[sc.Layer]:
        return [
            MapLayer("x", 100, "load", args=list(range(100))),
            MapLayer("y", 100, "inc", inputs=["x"], input_partitions=[100]),
            TreeReduceLayer("t", "y", 100, combine="sum", split_every=3),
            TasksLayer("extra", [sc.TaskSpec("after", ["('t', 0)"], b"run")]),
        ]

    whole = [s.key for s in expand_all(layers())]
    chunked = expand_all(layers(), chunk)
    assert [s.key for s in chunked] == whole
    assert_topological(chunked)


def test_first_chunk_comes_before_the_rest_is_expanded() -> None:
    expander = LayerExpander([MapLayer("big", 1_000_000, "f")])
    first = expander.next_chunk(1000)
    assert len(first) == 1000 and first[0].key == "('big', 0)"
    assert expander.emitted == 1000 and not expander.done and expander.total == 1_000_000


def test_bad_layers_are_refused_before_expansion() -> None:
    with pytest.raises(ValueError, match="not defined before it"):
        LayerExpander([MapLayer("y", 2, "f", inputs=["x"], input_partitions=[2])])
    with pytest.raises(ValueError, match="expects 3 partitions of 'x', which has 2"):
        LayerExpander([MapLayer("x", 2, "f"), MapLayer("y", 3, "f", inputs=["x"], input_partitions=[3])])
    with pytest.raises(ValueError, match="defined twice"):
        LayerExpander([MapLayer("x", 2, "f"), MapLayer("x", 2, "f")])
    with pytest.raises(ValueError, match="aligned"):
        MapLayer("y", 3, "f", inputs=["x"], input_partitions=[2])
    with pytest.raises(ValueError, match="argument payloads"):
        MapLayer("y", 3, "f", args=[1, 2])
    with pytest.raises(ValueError, match="split_every"):
        TreeReduceLayer("t", "x", 4, combine="sum", split_every=1)
    with pytest.raises(ValueError, match="at least one partition"):
        MapLayer("y", 0, "f")
    # A layer may read one the scheduler already has (given with its partition count).
    assert LayerExpander([MapLayer("y", 2, "f", inputs=["x"], input_partitions=[2])], {"x": 2}).total == 2


def test_expanded_layers_run_through_the_scheduler_core() -> None:
    layers: list[sc.Layer] = [
        MapLayer("x", 50, "load", args=list(range(50))),
        TreeReduceLayer("t", "x", 50, combine="sum", split_every=4),
    ]
    state = sc.SchedulerState()
    out = state.handle_events([sc.WorkerAdded("w", 2)])
    expander = LayerExpander(layers)
    submitted = 0
    while not expander.done:
        specs = expander.next_chunk(16)
        wanted = ["('t', 0)"] if expander.done else []
        # The keys later chunks depend on are held by the submitter until then.
        out += state.handle_events([sc.GraphSubmitted("c", specs, [s.key for s in specs] + wanted)])
        submitted += len(specs)
    assert submitted == expander.total
    assert not [i for i in out if isinstance(i, sc.ClientError)]
    sc.validate_state(state)
    assert len(state.tasks) == expander.total


def test_shuffle_splits_every_input_and_combines_pieces() -> None:
    layers: list[sc.Layer] = [
        MapLayer("x", 3, "load", args=[0, 1, 2]),
        sc.ShuffleLayer("sh", "x", 3, 4, split="split", combine="concat"),
    ]
    specs = expand_all(layers, chunk=2)
    assert_topological(specs)
    assert len(specs) == 3 + 3 + 4
    by_key = {s.key: s for s in specs}
    assert by_key["('sh-split', 1)"].dependencies == ["('x', 1)"]
    out2 = by_key["('sh', 2)"]
    assert out2.dependencies == [layer_key("sh-split", i) for i in range(3)]
    call = out2.run_spec
    assert isinstance(call, LayerCall)
    assert (call.kind, call.function, call.index) == (sc.PIECES, "concat", 2)
    with pytest.raises(ValueError, match="not defined before it"):
        LayerExpander([sc.ShuffleLayer("sh", "x", 3, 4, "s", "c")])
