"""High-level graphs: how fast sched_core expands layers, and what a layer saves the client.

    python benchmarks/layers_bench.py [--n 1000000] [--e2e 100000]

1. Expansion: a Map over N inputs, a Blockwise over it and a tree reduction
   (about 2N tasks) expanded by ``sched_core.LayerExpander`` in 50,000-task
   chunks, with the cyclic GC off as in the scheduler: tasks/s and the time
   to the first chunk.  Reports whether the core is compiled.
2. Client side: the bytes of the submission message and the client time to
   build it, for a map over ``--e2e`` inputs sent as one layer
   (``dsched.graph``) against as explicit tasks (``Client.map``'s message).
3. End to end on a local cluster (2 worker processes): time to the first
   result and total time for the layer version and for ``client.map``.
"""

from __future__ import annotations

import argparse
import gc
import time

import sched_core as sc
from dsched import Client, LocalCluster, graph
from dsched import _protocol as p
from dsched._serialize import dumps_args, dumps_function


def inc(x: int) -> int:
    return x + 1


def expansion(n: int) -> None:
    gc.disable()
    try:
        rates = []
        for _ in range(3):
            layers: list[sc.Layer] = [
                sc.MapLayer("x", n, 0, [b"a"] * n),
                sc.MapLayer("y", n, 1, None, ["x"], [n]),
                sc.TreeReduceLayer("t", "y", n, 2, 2, None, 16),
            ]
            t0 = time.perf_counter()
            expander = sc.LayerExpander(layers)
            first = -1.0
            total = 0
            while not expander.done:
                total += len(expander.next_chunk(50_000))
                if first < 0:
                    first = time.perf_counter() - t0
            rates.append((total / (time.perf_counter() - t0), first))
        rates.sort()
        rate, first = rates[1]
        print(f"expansion ({'compiled' if sc.COMPILED else 'interpreted'} core): {total:,} tasks, "
              f"median {rate / 1e6:.2f}M tasks/s, first chunk after {first * 1000:.1f} ms")
    finally:
        gc.enable()


def client_side(n: int) -> None:
    encoder = p.FrameEncoder(p.CLIENT_TO_SCHEDULER)
    t0 = time.perf_counter()
    g = graph.Graph()
    xs = g.map(inc, range(n))
    layer_bytes = len(encoder.encode([g.message([xs])]))
    layer_time = time.perf_counter() - t0
    t0 = time.perf_counter()
    function = dumps_function(inc)
    tasks = []
    for i in range(n):
        payload, _ = dumps_args((i,))
        tasks.append(p.GraphTask(f"inc-{i:032x}", [], 0, payload))
    explicit_bytes = len(encoder.encode([p.SubmitGraph([function], tasks, [t.key for t in tasks])]))
    explicit_time = time.perf_counter() - t0
    print(f"client side, {n:,} inputs: one layer {layer_bytes:,} B in {layer_time * 1000:.0f} ms "
          f"({layer_bytes / n:.1f} B/input); explicit tasks {explicit_bytes:,} B in {explicit_time * 1000:.0f} ms "
          f"({explicit_bytes / n:.1f} B/input)")


def end_to_end(n: int) -> None:
    with LocalCluster(n_workers=2, threads_per_worker=1) as cluster, Client(cluster) as client:
        client.gather(client.map(inc, range(1000)))
        for label in ("layer", "client.map"):
            t0 = time.perf_counter()
            if label == "layer":
                g = graph.Graph()
                futures = client.compute_graph(g, g.map(inc, range(n)))
            else:
                futures = client.map(inc, range(n, 2 * n))
            futures[0].result()
            first = time.perf_counter() - t0
            client.gather(futures)
            total = time.perf_counter() - t0
            print(f"end to end, {n:,} inputs as {label}: first result {first:.2f} s, all {total:.2f} s ({n / total:,.0f} tasks/s)")
            del futures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000, help="inputs of the expansion benchmark")
    parser.add_argument("--e2e", type=int, default=100_000, help="inputs of the client and end-to-end benchmarks")
    args = parser.parse_args()
    expansion(args.n)
    client_side(args.e2e)
    end_to_end(args.e2e)


if __name__ == "__main__":
    main()
