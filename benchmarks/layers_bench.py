"""High-level graphs and Dask collections on dsched, side by side with dask.distributed.

    python benchmarks/layers_bench.py [--map-inputs 1000000] [--array-side 100]
        [--df-partitions 1000] [--repeat 3] [--dask-repeat 1] [--no-dask]
        [--only expansion,map,array,dataframe] [--json FILE]

1. expansion (here, no cluster): a Map over N inputs, a Blockwise over it and
   a tree reduction (about 2N tasks) expanded by ``sched_core.LayerExpander``
   in 50,000-task chunks with the cyclic GC off, as in the scheduler: tasks/s
   and the time to the first chunk; says whether the core is compiled.
2. map: ``client.map(inc, range(N))`` three ways: as one Map layer
   (``as_layer=True``), as N explicit tasks (``as_layer=False``), and with
   dask.distributed's ``client.map``.  For each: the bytes the client process
   sent until the first result came back (the submission; counted at each
   system's comm layer), the client time (until ``map`` returned), the time to
   ``futures[0].result()`` and the time until every result is gathered.
3. array: ``(x + x.T).sum()`` for ``x`` a random (100 side) x (100 side) array
   in 100 x 100 chunks (side**2 chunks: 10,000 by default).
4. dataframe: ``dask.datasets.timeseries`` with one partition per hour
   (1,000 partitions of 3,600 rows by default), then
   ``groupby("name").agg({"x": "sum", "y": "mean", "id": "max"}, split_out=1)``.

Every measurement but (1) runs in a fresh process with a fresh cluster: the
scheduler and two single-threaded workers, each a process of its system's
CLI (``benchmarks/_runtime_systems.py``).  dask runs with its defaults
("dask-default") and with ``worker-saturation: inf`` ("dask-tuned"); the map
runs against dask-tuned only (dask-default would take half an hour for a
million tasks).  Times are medians of ``--repeat`` runs (``--dask-repeat``
for dask); (3) and (4) check that both systems computed the same answer.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

RESULT_PREFIX = "LAYERS-BENCH-RESULT "
COLLECTION_SYSTEMS = ("dsched", "dask-default", "dask-tuned")
MAP_WAYS = ("layer", "explicit", "dask-tuned")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- (1) expansion, in this process ---------------------------------------------------


def expansion(n: int) -> dict[str, Any]:
    import sched_core as sc

    gc.disable()
    try:
        runs = []
        total = 0
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
            runs.append((total / (time.perf_counter() - t0), first))
        runs.sort()
        rate, first = runs[1]
        return {"compiled": bool(sc.COMPILED), "tasks": total, "tasks_per_s": rate, "first_chunk_s": first}
    finally:
        gc.enable()


# -- measurements in a child process ---------------------------------------------------


def count_sent_bytes(system: str) -> Callable[[], int]:
    """Count every byte this process sends through the system's comm layer (the client's, here)."""
    total = [0]
    if system == "dsched":
        from dsched._comm import Comm

        send_frame = Comm.send_frame

        async def counted_send(self: Comm, payload: bytes | bytearray) -> None:
            total[0] += len(payload) + 8  # the length prefix
            await send_frame(self, payload)

        Comm.send_frame = counted_send  # type: ignore[method-assign]
    else:
        from distributed.comm.tcp import TCP

        write = TCP.write

        async def counted_write(self: Any, msg: Any, serializers: Any = None, on_error: str = "message") -> int:
            n: int = await write(self, msg, serializers, on_error)
            total[0] += n
            return n

        TCP.write = counted_write  # type: ignore[method-assign]
    return lambda: total[0]


def measure_map(spec: dict[str, Any], client: Any, sent: Callable[[], int]) -> dict[str, Any]:
    from _runtime_workloads import inc

    n = spec["n"]
    way = spec["way"]
    options: dict[str, Any] = {} if way.startswith("dask") else {"as_layer": way == "layer"}
    client.gather(client.map(inc, range(-1000, 0), **options))  # warm up: functions imported, connections made
    before = sent()
    t0 = time.perf_counter()
    futures = client.map(inc, range(n), **options)
    client_s = time.perf_counter() - t0
    futures[0].result()
    first_s = time.perf_counter() - t0
    nbytes = sent() - before
    results = client.gather(futures)
    total_s = time.perf_counter() - t0
    if results[0] != 1 or sum(results) != n * (n + 1) // 2:
        raise RuntimeError(f"wrong results from {way}")
    return {"bytes": nbytes, "client_s": client_s, "first_s": first_s, "total_s": total_s}


def _compute(client: Any, collection: Any) -> Any:
    return client.compute(collection).result()


def array_expr(side: int) -> Any:
    import dask.array as da

    x = da.random.default_rng(0).random((side * 100, side * 100), chunks=(100, 100))
    return (x + x.T).sum()


def dataframe_expr(partitions: int, freq: str = "1s") -> Any:
    import dask
    import pandas as pd

    start = pd.Timestamp("2000-01-01")
    df = dask.datasets.timeseries(
        start=start, end=start + pd.Timedelta(hours=partitions), freq=freq, partition_freq="1h", seed=0
    )
    # split_out=1: the tree-reduction groupby-aggregation.  (dask's default for this
    # many partitions, split_out=67, shuffles: see docs/dask.md.)
    return df.groupby("name").agg({"x": "sum", "y": "mean", "id": "max"}, split_out=1)


def measure_collection(spec: dict[str, Any], client: Any) -> dict[str, Any]:
    if spec["workload"] == "array":
        make: Callable[[int], Any] = array_expr
        size, small = spec["side"], 2
    else:
        make, size, small = functools.partial(dataframe_expr, freq=spec["freq"]), spec["partitions"], 4
    _compute(client, make(small))  # warm up: numpy/pandas imported on the workers
    times = []
    value: Any = None
    for _ in range(spec["repeat"]):
        expr = make(size)
        t0 = time.perf_counter()
        value = _compute(client, expr)
        times.append(time.perf_counter() - t0)
        del expr
    if spec["workload"] == "array":
        answer: Any = float(value)
    else:
        frame = value.sort_index()
        answer = {col: [round(float(v), 6) for v in frame[col]] for col in frame.columns}
        answer["index"] = [str(i) for i in frame.index]
    return {"times_s": times, "median_s": statistics.median(times), "answer": answer}


def child_main(spec: dict[str, Any]) -> None:
    from _runtime_systems import subprocess_cluster

    system = spec["system"]
    sent = count_sent_bytes(system)
    with subprocess_cluster(system, 2) as cluster:
        if spec["workload"] == "map":
            result = measure_map(spec, cluster.client, sent)
        else:
            result = measure_collection(spec, cluster.client)
    print(RESULT_PREFIX + json.dumps({"spec": spec, **result}), flush=True)


def run_child(spec: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """One measurement in a fresh process (its own session: a timeout kills its cluster too)."""
    env = dict(os.environ)
    env.pop("DASK_DISTRIBUTED__SCHEDULER__WORKER_SATURATION", None)
    command = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    with tempfile.TemporaryFile() as stderr:
        child = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=stderr, start_new_session=True)
        try:
            stdout, _ = child.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.communicate()
            return {"spec": spec, "error": f"timed out after {timeout_s:.0f} s"}
        stderr.seek(0)
        errors = stderr.read().decode(errors="replace")
    for line in stdout.decode(errors="replace").splitlines():
        if line.startswith(RESULT_PREFIX):
            result: dict[str, Any] = json.loads(line[len(RESULT_PREFIX) :])
            return result
    tail = "\n".join(errors.splitlines()[-25:])
    return {"spec": spec, "error": f"exit code {child.returncode}, no result:\n{tail}"}


# -- the driver ---------------------------------------------------------------------------


def run_map(args: argparse.Namespace) -> list[dict[str, Any]]:
    results = []
    for way in args.map_ways.split(","):
        if way not in MAP_WAYS:
            raise SystemExit(f"--map-ways: unknown way {way!r} (choose from {', '.join(MAP_WAYS)})")
        if way.startswith("dask") and args.no_dask:
            continue
        system = way if way.startswith("dask") else "dsched"
        runs = 1 if way.startswith("dask") else args.repeat
        n = (args.dask_map_inputs or args.map_inputs) if way.startswith("dask") else args.map_inputs
        spec = {"workload": "map", "system": system, "way": way, "n": n}
        measured = []
        for _ in range(runs):
            log(f"map: {n:,} inputs as {way} ...")
            result = run_child(spec, timeout_s=300 + n * (0.003 if system.startswith("dask") else 0.0002))
            if "error" in result:
                log(f"  {result['error']}")
                measured = [result]
                break
            log(f"  first result {result['first_s']:.2f} s, all {result['total_s']:.1f} s")
            measured.append(result)
        if "error" in measured[0]:
            results.append(measured[0])
            continue
        measured.sort(key=lambda r: r["total_s"])
        results.append(measured[len(measured) // 2])
    return results


def run_collections(args: argparse.Namespace, workload: str) -> list[dict[str, Any]]:
    results = []
    for system in COLLECTION_SYSTEMS:
        if system != "dsched" and args.no_dask:
            continue
        repeat = args.repeat if system == "dsched" else args.dask_repeat
        spec = {"workload": workload, "system": system, "side": args.array_side, "partitions": args.df_partitions,
                "freq": args.df_freq, "repeat": repeat}
        log(f"{workload}: {system} ...")
        result = run_child(spec, timeout_s=600 + 300 * repeat)
        log("  " + (result["error"] if "error" in result else f"median {result['median_s']:.2f} s"))
        results.append(result)
    return results


def _fmt_bytes(n: float) -> str:
    return f"{n / 1e6:,.1f} MB" if n >= 1e5 else f"{n / 1e3:,.1f} kB"


def report(expanded: dict[str, Any] | None, maps: list[dict[str, Any]], collections: dict[str, list[dict[str, Any]]],
           args: argparse.Namespace) -> None:
    if expanded:
        mode = "compiled" if expanded["compiled"] else "interpreted"
        print(f"\n(1) expansion ({mode} core): {expanded['tasks']:,} tasks at {expanded['tasks_per_s'] / 1e6:.2f}M tasks/s, "
              f"first 50,000-task chunk after {expanded['first_chunk_s'] * 1000:.1f} ms (target >= 1M tasks/s)")
    if maps:
        print(f"\n(2) client.map(inc, range(N)), 2 worker processes x 1 thread\n")
        print("| sent as | N | client bytes | per input | client time | first result | all results | tasks/s |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for r in maps:
            way, n = r["spec"]["way"], r["spec"]["n"]
            if "error" in r:
                print(f"| {way} | {n:,} | error: {r['error'].splitlines()[-1]} | | | | | |")
                continue
            print(f"| {way} | {n:,} | {_fmt_bytes(r['bytes'])} | {r['bytes'] / n:.1f} B | {r['client_s']:.2f} s | "
                  f"{r['first_s']:.2f} s | {r['total_s']:.1f} s | {n / r['total_s']:,.0f} |")
    for workload, results in collections.items():
        title = (f"(x + x.T).sum(), {args.array_side ** 2:,} chunks of 100 x 100" if workload == "array"
                 else f"timeseries groupby-agg, {args.df_partitions:,} partitions, one row per {args.df_freq}")
        print(f"\n({3 if workload == 'array' else 4}) {title}, 2 worker processes x 1 thread\n")
        base = next((r for r in results if r["spec"]["system"] == "dsched" and "error" not in r), None)
        print("| system | median | dsched faster by | same answer |")
        print("| --- | --- | --- | --- |")
        for r in results:
            system = r["spec"]["system"]
            if "error" in r:
                print(f"| {system} | error: {r['error'].splitlines()[0]} | | |")
                continue
            ratio = f"{r['median_s'] / base['median_s']:.1f}x" if base and system != "dsched" else ""
            same = "" if base is None or system == "dsched" else ("yes" if _same(r["answer"], base["answer"]) else "NO")
            print(f"| {system} | {r['median_s']:.2f} s | {ratio} | {same} |")


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float):
        return abs(a - b) <= 1e-9 * max(abs(a), abs(b))
    return a == b  # the dataframe answers are rounded to 6 digits already


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--map-inputs", type=int, default=1_000_000)
    parser.add_argument("--dask-map-inputs", type=int, default=0, help="N for dask's map (default: --map-inputs)")
    parser.add_argument("--map-ways", default=",".join(MAP_WAYS), help="which of layer,explicit,dask-tuned to run")
    parser.add_argument("--expansion-inputs", type=int, default=1_000_000)
    parser.add_argument("--array-side", type=int, default=100, help="chunks per side: side**2 chunks of 100 x 100")
    parser.add_argument("--df-partitions", type=int, default=1000)
    parser.add_argument("--df-freq", default="1s", help="one row per this much time: 1s = 3,600 rows per partition")
    parser.add_argument("--repeat", type=int, default=3, help="runs per dsched measurement (the median is reported)")
    parser.add_argument("--dask-repeat", type=int, default=1, help="runs per dask measurement")
    parser.add_argument("--no-dask", action="store_true", help="dsched only")
    parser.add_argument("--only", default="expansion,map,array,dataframe")
    parser.add_argument("--json", type=Path, help="also write every result here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        child_main(json.loads(args.child))
        return 0
    only = set(args.only.split(","))
    expanded = expansion(args.expansion_inputs) if "expansion" in only else None
    maps = run_map(args) if "map" in only else []
    collections = {w: run_collections(args, w) for w in ("array", "dataframe") if w in only}
    report(expanded, maps, collections, args)
    if args.json:
        args.json.write_text(json.dumps({"expansion": expanded, "map": maps, **collections}, indent=2))
    failed = [r for r in maps + [r for rs in collections.values() for r in rs] if "error" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
