"""End to end: a Client, a scheduler process and real worker processes over TCP on loopback.

Task functions are defined here, so workers import this module by reference
(the cluster gives its children the test process's ``sys.path``).
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from dsched import _protocol as p
from dsched._client import Client
from dsched._cluster import LocalCluster
from dsched._comm import connect, parse_address
from dsched._security import security_for


def inc(x: int) -> int:
    return x + 1


def double(x: int) -> int:
    return 2 * x


def add(x: int, y: int) -> int:
    return x + y


def slow_inc(x: int) -> int:
    time.sleep(0.01)
    return x + 1


def fail(message: str) -> None:
    raise ValueError(f"boom: {message}")


def wait_until(condition: object, timeout: float = 15.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        time.sleep(0.02)


def assert_all_exited(cluster: LocalCluster) -> None:
    procs = [*cluster.worker_processes, cluster.scheduler_process]
    assert procs and all(proc is not None and proc.returncode is not None for proc in procs)


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    cluster = LocalCluster(n_workers=2, threads_per_worker=2)
    try:
        yield cluster
    finally:
        cluster.close()
    assert_all_exited(cluster)


@pytest.fixture(scope="module")
def client(cluster: LocalCluster) -> Iterator[Client]:
    with Client(cluster) as client:
        yield client


# --- correct results ------------------------------------------------------------------


def test_independent_tasks(client: Client) -> None:
    futures = client.map(inc, range(200))
    assert client.gather(futures) == [x + 1 for x in range(200)]


def test_chain(client: Client) -> None:
    x = client.submit(inc, 0)
    for _ in range(49):
        x = client.submit(inc, x)
    assert x.result() == 50


def test_diamond(client: Client) -> None:
    a = client.submit(inc, 1)  # 2
    b = client.submit(double, a)  # 4
    c = client.submit(inc, a)  # 3
    d = client.submit(add, b, c)
    assert d.result() == 7


def test_tree_reduction(client: Client) -> None:
    layer = client.map(inc, range(1000))
    while len(layer) > 1:
        layer = [client.submit(sum, layer[i : i + 4]) for i in range(0, len(layer), 4)]
    assert layer[0].result() == sum(range(1, 1001))


def test_graph_of_ten_thousand_tasks(client: Client) -> None:
    n = 4999
    dsk: dict[str, object] = {f"x-{i}": (inc, i) for i in range(n)}
    dsk.update({f"y-{i}": (add, f"x-{i}", f"x-{(i + 1) % n}") for i in range(n)})
    dsk["total"] = (sum, [f"y-{i}" for i in range(n)])
    dsk["half"] = (double, "total")
    assert len(dsk) == 10_000
    expected = sum((i + 1) + ((i + 1) % n + 1) for i in range(n))
    assert client.get(dsk, ["total", "half"]) == [expected, 2 * expected]


def test_task_exception_carries_the_remote_traceback(client: Client) -> None:
    bad = client.submit(fail, "on purpose")
    dependent = client.submit(inc, bad)
    with pytest.raises(ValueError, match="boom: on purpose") as info:
        bad.result()
    notes = "".join(getattr(info.value, "__notes__", []))
    assert "Remote traceback" in notes and "in fail" in notes
    remote = bad.traceback()
    assert remote is not None and "in fail" in remote and "raise ValueError" in remote
    with pytest.raises(ValueError, match="boom: on purpose"):
        dependent.result()
    assert client.submit(inc, 1).result() == 2  # the cluster is unharmed


# --- failures and bad peers -----------------------------------------------------------


def test_worker_killed_mid_graph_and_the_graph_completes() -> None:
    with LocalCluster(n_workers=3, threads_per_worker=1) as cluster, Client(cluster) as client:
        n = 150
        incs = client.map(slow_inc, range(n))
        doubles = client.map(double, incs)
        total = client.submit(sum, doubles)
        wait_until(lambda: sum(f.done() for f in incs) >= n // 4, what="a quarter of the graph")
        victim = cluster.worker_processes[0]
        assert len(cluster.workers) == 3
        victim.send_signal(signal.SIGKILL)
        assert not total.done()  # the kill landed in the middle of the graph
        assert total.result(timeout=60) == sum(2 * (i + 1) for i in range(n))
        assert client.gather(doubles) == [2 * (i + 1) for i in range(n)]
        assert victim.wait(timeout=5) == -signal.SIGKILL
        assert len(cluster.workers) == 2  # the dead one is no longer listed
    assert_all_exited(cluster)


def _scheduler_log(cluster: LocalCluster) -> str:
    return cluster.get_logs()["scheduler"]


def test_garbage_bytes_close_only_that_connection(cluster: LocalCluster, client: Client) -> None:
    _, host, port = parse_address(cluster.scheduler_address)
    # An HTTP request: its first 8 bytes read as an absurd frame length, refused unread.
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: dsched\r\n\r\n")
        received = b""
        while chunk := sock.recv(1024):  # a Refused frame naming the bound, then EOF
            received += chunk
        assert b"a handshake frame may be at most" in received
    wait_until(lambda: "over max_frame_size" in _scheduler_log(cluster), what="the scheduler logging it")
    # A plausible length, then bytes that are not a handshake.
    with socket.create_connection((host, port), timeout=10) as sock:
        junk = bytes(range(200, 232))
        sock.sendall(struct.pack("<Q", len(junk)) + junk)
        reply = sock.recv(4096)
        while reply and sock.recv(4096):  # a Refused frame may come first; then EOF
            pass
    wait_until(lambda: "bad handshake" in _scheduler_log(cluster), what="the scheduler logging it")
    # The scheduler and its other connections are fine.
    assert client.submit(add, 40, 2).result() == 42
    assert cluster.scheduler_process is not None and cluster.scheduler_process.poll() is None


_DOOMED_CLIENT = """
import sys, time
from dsched._client import Client

def step(previous, path):
    time.sleep(0.2)
    with open(path, "a") as f:
        f.write("ran\\n")
    return previous + 1

client = Client(sys.argv[1])
x = client.submit(lambda: 0, key="doomed-0")
futures = [x]
for i in range(1, 30):
    x = client.submit(step, x, sys.argv[2], key=f"doomed-{i}")
    futures.append(x)
print("submitted", flush=True)
time.sleep(120)
"""


async def _who_has(address: str, keys: list[str]) -> dict[str, list[str]]:
    """Ask the scheduler where ``keys`` are, as a bare client of the protocol."""
    _, host, port = parse_address(address)
    comm = await connect(host, port)
    try:
        # The cluster's generated secret, as this process started it.
        hello = p.Hello(p.PROTOCOL_VERSION, "client", "", auth=security_for(address).secret)
        await comm.send_frame(p.encode_handshake(hello))
        assert isinstance(p.decode_reply(await comm.recv_frame()), p.Welcome)
        await comm.send_frame(p.FrameEncoder(p.CLIENT_TO_SCHEDULER).encode([p.WhoHas(1, keys)]))
        decoder = p.FrameDecoder(p.SCHEDULER_TO_CLIENT)
        with anyio.fail_after(10):
            while True:
                for msg in decoder.decode(await comm.recv_frame()):
                    if isinstance(msg, p.WhoHasReply):
                        return dict(msg.who_has)
    finally:
        await comm.aclose()


def test_killed_client_has_its_tasks_released(cluster: LocalCluster, tmp_path: Path) -> None:
    script = tmp_path / "doomed.py"
    script.write_text(textwrap.dedent(_DOOMED_CLIENT))
    ran = tmp_path / "ran.txt"
    # The script's Client finds the cluster's secret in its environment.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **cluster.security.environment()}
    proc = subprocess.Popen(
        [sys.executable, str(script), cluster.scheduler_address, str(ran)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )

    def runs() -> int:
        return len(ran.read_text().splitlines()) if ran.exists() else 0

    try:
        assert proc.stdout is not None and proc.stdout.readline() == "submitted\n", proc.stderr
        wait_until(lambda: runs() >= 2, what="the doomed chain to start")
        held = anyio.run(_who_has, cluster.scheduler_address, ["doomed-0"])
        assert held.get("doomed-0"), "the first key is in memory, held by the doomed client"
    finally:
        proc.kill()  # no goodbye: the scheduler only sees the connection drop
        proc.communicate()
    # Its data is released...
    wait_until(lambda: not anyio.run(_who_has, cluster.scheduler_address, ["doomed-0"]), what="doomed-0 released")
    # ...and the rest of its chain is never run: the count stops growing, far from 30.
    last, stable_since = runs(), time.monotonic()
    while time.monotonic() - stable_since < 1.0:
        time.sleep(0.1)
        if runs() != last:
            last, stable_since = runs(), time.monotonic()
    assert last < 29


# --- the other ways to run a cluster ---------------------------------------------------


def test_in_process_cluster_with_a_client() -> None:
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False) as cluster, Client(cluster) as client:
        futures = client.map(inc, range(100))
        assert client.submit(sum, futures).result() == sum(range(1, 101))


def test_asynchronous_cluster_and_client() -> None:
    async def main() -> int:
        async with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, asynchronous=True) as cluster:
            async with Client(cluster, asynchronous=True) as client:
                result: int = await client.submit(add, client.submit(inc, 1), 10)
                return result

    assert anyio.run(main) == 12

