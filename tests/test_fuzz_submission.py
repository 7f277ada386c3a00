"""Fuzzing the graph-submission path with generated invalid (and absurd) graphs.

Against the core (``SchedulerState`` fed the events the server builds, in the
simulated cluster of ``_driver.py``, which validates the state after every
batch) and against a live ``SchedulerServer``: every invalid submission is
refused with a ``ClientError`` naming why, changes nothing (the state snapshot
is identical), and another client's tasks go on to finish.  Bad layer
parameters raise ``ValueError`` in the core, a ``ClientError`` from the server,
or (when the message itself breaks the schema) a ``Close`` with the reason.

Inputs tried per run: the constants below, quoted in the closing note of issue 6.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from typing import Any, Final

import anyio
import pytest
from _driver import Cluster, spec
from test_scheduler_server import Peer, fake_client, fake_worker

import sched_core as sc
from dsched import _protocol as p
from dsched._comm import CommClosedError
from dsched._limits import Limits
from dsched._scheduler_server import SchedulerServer

CORE_SUBMISSIONS: Final = 2_000  # generated submissions against the core
CORE_LAYER_SETS: Final = 5_000  # generated layer parameter sets against LayerExpander
CORE_REQUEST_RUNS: Final = 200  # runs of 60 generated requests (scatter, want, release, cancel) each
LIVE_SUBMISSIONS: Final = 300  # generated invalid SubmitGraph / SubmitLayers at a live server
LIVE_SCHEMA_BREAKERS: Final = 30  # layer messages that break the schema, one connection each
# Another seed tries other inputs: DSCHED_FUZZ_SEED=7 pytest tests/test_fuzz_*.py
SEED: Final = int(os.environ.get("DSCHED_FUZZ_SEED", "62026"))

# The kinds of refusal an invalid explicit graph may get.
GRAPH_ERRORS: Final = {"cycle", "missing-dependency", "conflicting-definition", "unknown-key"}

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# -- generators -----------------------------------------------------------------------------


def random_dag(rng: random.Random, prefix: str, n: int) -> dict[str, list[str]]:
    """``{key: dependencies}`` of a random DAG, dependencies before dependents."""
    keys = [f"{prefix}-{i}" for i in range(n)]
    return {key: rng.sample(keys[:i], rng.randint(0, min(i, 3))) for i, key in enumerate(keys)}


def invalid_graph(rng: random.Random, prefix: str, taken: dict[str, list[str]]) -> tuple[str, dict[str, list[str]], list[str], dict[str, Any]]:
    """``(expected kind, {key: deps}, wanted, run_spec overrides)`` of an invalid submission.

    ``taken``: another client's graph, whose keys a submission may collide with.
    """
    dag = random_dag(rng, prefix, rng.randint(1, 12))
    keys = list(dag)
    wanted = [keys[-1]]
    overrides: dict[str, Any] = {}
    kind = rng.randrange(6)
    if kind == 0:  # a cycle: an early task depends on a later one that (indirectly) needs it
        if len(keys) < 2:
            dag[keys[0]] = [keys[0]]
        else:
            i, j = sorted(rng.sample(range(len(keys)), 2))
            if keys[i] not in dag[keys[j]]:
                dag[keys[j]].append(keys[i])
            dag[keys[i]].append(keys[j])
        return "cycle", dag, wanted, overrides
    if kind == 1:  # a self-dependency
        key = rng.choice(keys)
        dag[key].append(key)
        return "cycle", dag, wanted, overrides
    if kind == 2:  # a dependency nobody defines
        dag[rng.choice(keys)].append(f"missing-{rng.random()}")
        return "missing-dependency", dag, wanted, overrides
    if kind == 3:  # another client's key, defined differently
        other = rng.choice(list(taken))
        dag[other] = taken[other] + [keys[0]] if rng.random() < 0.5 else list(taken[other])
        if dag[other] == taken[other]:
            overrides[other] = ("other function", other)
        return "conflicting-definition", dag, wanted, overrides
    if kind == 4:  # a wanted key that is nowhere
        return "unknown-key", dag, [*wanted, f"nowhere-{rng.random()}"], overrides
    # the same key twice in one submission, defined differently
    return "duplicate", dag, wanted, overrides


def specs_of(dag: dict[str, list[str]], overrides: dict[str, Any], duplicate: bool, rng: random.Random) -> list[sc.TaskSpec]:
    specs = [spec(k, d, run_spec=overrides.get(k, ("run", k))) for k, d in dag.items()]
    if duplicate:
        twin = rng.choice(specs)
        specs.insert(rng.randint(0, len(specs)), spec(twin.key, twin.dependencies, run_spec=("twin", twin.key)))
    return specs


def absurd_specs(rng: random.Random, prefix: str) -> list[sc.TaskSpec]:
    """A valid graph with extreme options the wire allows: accepted, and harmless."""
    out = []
    for key, deps in random_dag(rng, prefix, rng.randint(1, 6)).items():
        out.append(spec(
            key, deps,
            priority=rng.choice([2**63 - 1, -(2**63), 2**64 - 1, 0]),
            retries=rng.choice([0, 2**63 - 1, 2**64 - 1]),
            resources=rng.choice([None, {"GPU": float("inf")}, {"x": 1e308}, {"": 0.0}]),
            workers=rng.choice([None, ["tcp://nowhere:1"], []]),
            allow_other_workers=rng.random() < 0.5,
        ))
    return out


# -- the core -------------------------------------------------------------------------------


def test_invalid_graphs_change_nothing_in_the_core() -> None:
    rng = random.Random(SEED)
    cluster = Cluster()
    cluster.add_worker("tcp://w1:1", 2)
    cluster.add_worker("tcp://w2:1", 1)
    cluster.add_client("good")
    good = random_dag(rng, "good", 30)
    cluster.submit("good", [spec(k, d) for k, d in good.items()], list(good)[-5:])
    cluster.add_client("bad")
    refused = accepted = 0
    for i in range(CORE_SUBMISSIONS):
        if rng.random() < 0.1:
            specs = absurd_specs(rng, f"absurd{i}")
            out = cluster.handle(sc.GraphSubmitted("bad", specs, [specs[-1].key]))
            assert not [x for x in out if isinstance(x, sc.ClientError)]
            accepted += 1
            continue
        known = {k: d for k, d in good.items() if k in cluster.state.tasks}
        expected, dag, wanted, overrides = invalid_graph(rng, f"bad{i}", known)
        before = cluster.snapshot()
        out = cluster.handle(sc.GraphSubmitted("bad", specs_of(dag, overrides, expected == "duplicate", rng), wanted))
        errors = [x for x in out if isinstance(x, sc.ClientError)]
        assert len(errors) == 1 and errors[0].client == "bad", (i, expected, out)
        if expected != "duplicate":
            assert errors[0].kind == expected, (i, errors[0])
        assert errors[0].kind in GRAPH_ERRORS and errors[0].message
        assert out == errors  # nothing else happened
        assert cluster.snapshot() == before, (i, expected)
        refused += 1
        if i % 50 == 0:
            cluster.run(rng)  # progress in between: refusals also hold against a moving state
    assert refused > 0.8 * CORE_SUBMISSIONS and accepted > 0
    cluster.remove_client("bad")
    cluster.run()
    assert {k for k in cluster.state.tasks} >= set(list(good)[-5:])
    assert all(cluster.state_of(k) == "memory" for k in list(good)[-5:])
    sc.validate_state(cluster.state)


def test_another_clients_requests_on_colliding_keys_keep_the_core_consistent() -> None:
    """Scatters onto another client's keys (held, running, waiting), wants, releases and
    cancels of them, and absurd graphs, interleaved with the work: the state stays valid
    after every batch and the good client's keys still finish."""
    for seed in range(SEED, SEED + CORE_REQUEST_RUNS):
        rng = random.Random(seed)
        cluster = Cluster(check=False, lossy=True)  # a scatter may claim data a worker lacks
        cluster.add_worker("tcp://w1:1", 2)
        cluster.add_worker("tcp://w2:1", 1)
        cluster.add_client("good")
        cluster.add_client("bad")
        good = random_dag(rng, "g", 15)
        wanted = list(good)[-3:]
        cluster.submit("good", [spec(k, d) for k, d in good.items()], wanted)
        keys = [*good, "x0", "x1", "nowhere"]
        for step in range(60):
            picked = rng.sample(keys, rng.randint(0, 3))
            kind = rng.randrange(6)
            if kind == 0:
                workers = rng.sample(["tcp://w1:1", "tcp://w2:1", "tcp://gone:1"], rng.randint(0, 2))
                nbytes = {key: rng.choice([0, 10, 2**62]) for key in picked}
                for address in workers:  # the data is there, as PutData left it
                    if address in cluster.workers:
                        cluster.workers[address].data.update(nbytes)
                cluster.handle(sc.KeysScattered("bad", workers, nbytes))
            elif kind == 1:
                cluster.handle(sc.ClientWantsKeys("bad", picked))
            elif kind == 2:
                cluster.handle(sc.ClientReleasesKeys("bad", picked))
            elif kind == 3:
                cluster.handle(sc.CancelKeys("bad", picked, rng.random() < 0.3))
            elif kind == 4 and cluster.outstanding():
                address, key = rng.choice(cluster.outstanding())
                cluster.handle_list(cluster.finished_event(key, address))
            elif kind == 5:
                specs = absurd_specs(rng, f"a{step}")
                cluster.handle(sc.GraphSubmitted("bad", specs, [specs[-1].key]))
        cluster.remove_client("bad")
        cluster.run()
        sc.validate_state(cluster.state)
        log = cluster.log("good")
        for key in wanted:  # never left waiting: finished while held, or told it was cancelled (by a force)
            ts = cluster.state.tasks.get(key)
            if ts is not None and any(cs.client_id == "good" for cs in ts.who_wants or []):
                assert ts.state_name in ("memory", "erred"), (seed, ts)
            else:
                assert key in log.cancelled, (seed, key)


LAYER_NAMES: Final = ["a", "b", "c", "a-chunk", "a-split", "a-combine-1"]


def random_layers(rng: random.Random) -> list[sc.Layer]:
    """Layers built from random parameters, mostly sane, often not; may raise ValueError.

    Sane: fresh names, inputs defined earlier with their partition counts (or 1,
    broadcast).  Not: negative or zero counts, split_every below 2, argument and
    partition counts that disagree, inputs never defined, names reused or colliding
    with another layer's intermediate keys.
    """
    defined: dict[str, int] = {}
    layers: list[sc.Layer] = []

    def count(sane: bool) -> int:
        return rng.choice([1, 2, 3, 5, 8]) if sane else rng.choice([-2, -1, 0, 1, 2, 3, 5, 8])

    def some_input(sane: bool) -> tuple[str, int]:
        if sane and defined:
            name = rng.choice(list(defined))
            return name, defined[name]
        return rng.choice(LAYER_NAMES), count(False)

    for _ in range(rng.randint(1, 4)):
        sane = rng.random() < 0.85
        name = f"l{len(layers)}" if sane else rng.choice(LAYER_NAMES)
        kind = rng.randrange(3)
        if kind == 0:
            inputs = [some_input(sane) for _ in range(rng.randint(0, 2) if defined or not sane else 0)]
            if sane:  # aligned with the first input; others aligned too, or broadcast (one partition)
                n = inputs[0][1] if inputs else count(True)
                inputs = [(source, k) for source, k in inputs if k in (1, n)]
            else:
                n = count(False)
            parts = [k for _, k in inputs]
            if not sane and rng.random() < 0.3:
                parts.append(count(False))  # partition counts that do not match the inputs
            args: list[object] | None = [b"x"] * (n if sane else count(False)) if rng.random() < 0.3 else None
            layers.append(sc.MapLayer(name, n, b"f", args, [source for source, _ in inputs], parts))
        elif kind == 1 and (defined or not sane):
            source, parts_in = some_input(sane)
            chunk = b"c" if rng.random() < 0.5 else None
            split = rng.choice([2, 3, 8]) if sane else rng.choice([-1, 0, 1, 2, 3, 8])
            layers.append(sc.TreeReduceLayer(name, source, parts_in, b"g", b"h", chunk, split))
        elif defined or not sane:
            source, parts_in = some_input(sane)
            layers.append(sc.ShuffleLayer(name, source, parts_in, count(sane), b"s", b"t"))
        else:
            layers.append(sc.MapLayer(name, count(sane), b"f"))
        defined[name] = layers[-1].npartitions
    return layers


def test_bad_layer_parameters_raise_value_error_or_expand_soundly() -> None:
    rng = random.Random(SEED)
    expanded = 0
    for i in range(CORE_LAYER_SETS):
        try:
            expander = sc.LayerExpander(random_layers(rng))
        except ValueError as exc:
            assert str(exc), i
            continue
        seen: set[str] = set()
        n = 0
        while not expander.done:
            chunk = expander.next_chunk(rng.choice([1, 3, 100]))
            assert chunk, i
            for task in chunk:
                # Dependencies first: every input layer was given, and expanded, before.
                assert all(dep in seen for dep in task.dependencies), (i, task.key, task.dependencies)
                seen.add(task.key)
                n += 1
        assert n == expander.total, i
        expanded += 1
    assert expanded > 0.05 * CORE_LAYER_SETS


def test_expanded_layers_go_through_the_core_without_breaking_it() -> None:
    rng = random.Random(SEED + 1)
    cluster = Cluster()
    cluster.add_worker("tcp://w1:1", 2)
    cluster.add_client("good")
    cluster.submit("good", {"('a', 0)": [], "('a', 1)": []})
    cluster.add_client("bad")
    for i in range(300):
        try:
            expander = sc.LayerExpander(random_layers(rng), {"a": 2})
        except ValueError:
            continue
        specs = expander.next_chunk(10_000)
        before = cluster.snapshot()
        out = cluster.handle(sc.GraphSubmitted("bad", specs, [s.key for s in specs[-1:]]))
        errors = [x for x in out if isinstance(x, sc.ClientError)]
        if errors:  # colliding layer keys, or an input nobody defined: refused whole
            assert errors[0].kind in GRAPH_ERRORS and cluster.snapshot() == before
        cluster.run(rng)
        cluster.handle(sc.ClientReleasesKeys("bad", [s.key for s in specs]))
    cluster.run()
    assert cluster.state_of("('a', 0)") == "memory" and cluster.state_of("('a', 1)") == "memory"


# -- a live server --------------------------------------------------------------------------


def _graph_message(rng: random.Random, i: int, taken: dict[str, list[str]]) -> tuple[str, p.SubmitGraph]:
    expected, dag, wanted, overrides = invalid_graph(rng, f"live{i}", taken)
    tasks = [p.GraphTask(k, d, 0, b"args-" + k.encode() if k not in overrides else b"other") for k, d in dag.items()]
    if expected == "duplicate":
        twin = rng.choice(tasks)
        tasks.append(p.GraphTask(twin.key, twin.dependencies, 0, b"a twin, defined differently"))
    return expected, p.SubmitGraph([b"fn"], tasks, wanted)


def _layers_message(rng: random.Random, i: int) -> p.SubmitLayers:
    """Schema-valid layers that are wrong together: unknown inputs, mismatched partition
    counts, duplicate names, argument counts, unknown wanted layers, too many tasks."""
    name = f"L{i}"
    kind = rng.randrange(6)
    maps = [p.MapLayerSpec(name, 4, 0)]
    wanted_layers = [name]
    if kind == 0:
        maps.append(p.MapLayerSpec(name + "x", 4, 0, inputs=["nowhere"], input_partitions=[4]))
    elif kind == 1:
        maps.append(p.MapLayerSpec(name + "x", 4, 0, inputs=[name], input_partitions=[3]))
    elif kind == 2:
        maps.append(p.MapLayerSpec(name, 2, 0))
    elif kind == 3:
        maps[0] = p.MapLayerSpec(name, 4, 0, args=[b"x"] * 3)
    elif kind == 4:
        wanted_layers = ["no-such-layer"]
    else:
        maps[0] = p.MapLayerSpec(name, 10**12, 0)
    order = [(0, j) for j in range(len(maps))]
    return p.SubmitLayers([b"fn"], maps, [], order, [], wanted_layers)


def _schema_breaker(rng: random.Random) -> bytes:
    """A SubmitLayers frame that breaks the schema: negative counts, split_every of 0 or 1,
    out-of-range function or order indices (encoded by hand: the Structs would refuse)."""
    import msgspec

    kind = rng.randrange(4)
    map_spec: list[Any] = ["m", 4, 0, None, [], []]
    reduction: list[Any] = ["r", "m", 4, 0, 0, -1, 8]
    order: list[Any] = [[0, 0], [1, 0]]
    if kind == 0:
        map_spec[1] = rng.choice([0, -1, -(2**40)])
    elif kind == 1:
        reduction[6] = rng.choice([0, 1, -5])
    elif kind == 2:
        map_spec[2] = rng.choice([1, 7, 2**63])
    else:
        order = rng.choice([[[0, 0], [1, 5]], [[3, 0], [1, 0]], [[0, 0]], [[0, 0], [0, 0], [1, 0]]])
    message = [17, [b"fn"], [map_spec], [reduction], order, [], ["r"]]
    return msgspec.msgpack.encode([-1, [message]])


async def test_a_live_server_refuses_generated_invalid_submissions_to_their_client_only() -> None:
    rng = random.Random(SEED)
    async with SchedulerServer(max_layer_tasks=10_000, limits=Limits(max_key_length=200)) as server:
        w = await fake_worker(server, "tcp://w:1")
        good = await fake_client(server, "good")
        taken = {"g0": [], "g1": ["g0"], "g2": ["g0", "g1"]}
        await good.send(p.SubmitGraph([b"fn"], [p.GraphTask(k, d, 0, b"args-" + k.encode()) for k, d in taken.items()], ["g2"]))
        bad = await fake_client(server, "bad")
        expected_kinds: list[str] = []
        for i in range(LIVE_SUBMISSIONS):
            if rng.random() < 0.3:
                await bad.send(_layers_message(rng, i))
                expected_kinds.append("layers")
            else:
                kind, message = _graph_message(rng, i, taken)
                await bad.send(message)
                expected_kinds.append(kind)
        errors = await bad.expect(p.ClientError, LIVE_SUBMISSIONS, timeout=30)
        # Layers are refused as they arrive, graphs after the core's batch: compare as multisets.
        expected = Counter("conflicting-definition" if k == "duplicate" else k for k in expected_kinds)
        got = Counter("layers" if e.kind in ("invalid-layers", "limit-exceeded") else e.kind for e in errors)
        assert got == expected
        assert all(e.message for e in errors)
        # The schema breakers: each on a connection of its own, told why and dropped.
        for _ in range(LIVE_SCHEMA_BREAKERS):
            breaker = await fake_client(server, "")
            await breaker.comm.send_frame(_schema_breaker(rng))
            (goodbye,) = await breaker.expect(p.Close)
            assert goodbye.reason.startswith("invalid client->scheduler frame")
            with pytest.raises(CommClosedError), anyio.fail_after(5):
                await breaker.comm.recv_frame()
        # Nothing of the bad client's is known; the good client's graph runs to the end.
        with anyio.fail_after(5):
            while set(server.clients) != {"good", "bad"}:
                await anyio.sleep(0.01)
        assert set(server.state.tasks) == set(taken)
        sc.validate_state(server.state)
        await _run_to_completion(w, ["g0", "g1", "g2"])
        (done,) = await good.expect(p.KeysInMemory)
        assert done.keys == ["g2"]
        assert not bad.inbox and server.refused["max_layer_tasks"] > 0


async def _run_to_completion(worker: Peer, keys: list[str]) -> None:
    for key in keys:
        (compute,) = await worker.expect(p.Compute)
        assert compute.key == key
        await worker.send(p.TaskFinished(key, 8, 0.0, compute.run_id))


def test_a_dependency_listed_twice_is_one_edge() -> None:
    # Found by the layer fuzzer: a map over two inputs that are the same layer lists a
    # dependency twice; counted twice, the task became ready twice and was queued twice.
    cluster = Cluster()
    cluster.add_worker("tcp://w1:1", 1)
    cluster.add_client("c")
    cluster.submit("c", [spec("x"), *[spec(f"y{i}", ["x", "x"]) for i in range(4)]], ["y0", "y1", "y2", "y3"])
    ts = cluster.state.tasks["y0"]
    assert [d.key for d in ts.dependencies] == ["x"] and cluster.state.tasks["x"].n_dependents == 4
    # The same definition again (duplicates included) is the same task, not a conflict.
    out = cluster.submit("c", [spec("y0", ["x", "x"])], ["y0"])
    assert not [x for x in out if isinstance(x, sc.ClientError)]
    cluster.run()  # validates the state after every batch
    assert all(cluster.state_of(f"y{i}") == "memory" for i in range(4))
    assert cluster.n_computes == 5
