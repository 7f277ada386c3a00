"""The client's side of ``client.map`` over many inputs sent as one layer: wall and CPU time.

    python benchmarks/map_client_bench.py [--inputs 1000000]

One process, a ``LocalCluster`` of 2 workers x 1 thread.  Prints the time of
the ``map`` call, of the first result, of all results (``client.gather``),
this process's CPU time for the call and for the gather, and the time and CPU
to release the keys.  To compare with another version of dsched, run it with
that version first on ``PYTHONPATH`` (for example an extracted
``git archive <commit> dsched``).
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _runtime_workloads import inc  # noqa: E402

from dsched import Client, LocalCluster  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", type=int, default=1_000_000)
    n = parser.parse_args().inputs
    with LocalCluster(n_workers=2, threads_per_worker=1) as cluster, Client(cluster) as client:
        client.gather(client.map(inc, range(-1000, 0), as_layer=True))  # warm up
        cpu0, t0 = time.process_time(), time.perf_counter()
        futures = client.map(inc, range(n), as_layer=True)
        cpu1, t1 = time.process_time(), time.perf_counter()
        futures[0].result()
        cpu2, t2 = time.process_time(), time.perf_counter()
        results = client.gather(futures)
        cpu3, t3 = time.process_time(), time.perf_counter()
        if sum(results) != n * (n + 1) // 2:
            raise SystemExit("wrong results")
        del results, futures
        gc.collect()
        client.submit(inc, 1).result()  # after the release reached the scheduler
        cpu4, t4 = time.process_time(), time.perf_counter()
    print(f"client.map(inc, range({n:,}), as_layer=True), {sys.implementation.name} {sys.version.split()[0]}")
    print(f"  map call      {t1 - t0:6.2f} s   (CPU {cpu1 - cpu0:.2f} s)")
    print(f"  first result  {t2 - t0:6.2f} s after the call")
    print(f"  all results   {t3 - t0:6.2f} s after the call   (client CPU during gather {cpu3 - cpu2:.2f} s)")
    print(f"  release       {t4 - t3:6.2f} s   (CPU {cpu4 - cpu3:.2f} s)")


if __name__ == "__main__":
    main()
