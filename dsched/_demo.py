"""The workload of ``dsched demo``: many small tasks with dependencies, checked against the known answer.

The graph, for ``n`` inputs and a fan-in of ``F``::

    inc(i)        for i in range(n)        n tasks, no dependencies
    square(inc_i) for each of them         n tasks, one dependency each
    sum(...)      F squares (or sums) at a time, layer after layer, down to one

so it exercises what a scheduler must do well with tiny tasks: ``map`` at
scale, dependencies kept on the worker that made them (locality), and a tree
reduction moving data between workers.  The answer is ``1^2 + ... + n^2``.

Progress comes from the futures themselves: a done-callback per future counts
completions (on the client's event loop thread), and the caller's thread
redraws a bar from that count.
"""

from __future__ import annotations

import dataclasses
import io
import threading
import time
from collections.abc import Callable
from typing import IO, Any, Final

from dsched._client import Client
from dsched._future import Future

__all__ = ["DemoPlan", "DemoResult", "ProgressBar", "inc", "plan_demo", "run_workload", "square"]

FAN_IN: Final = 100
_BAR_WIDTH: Final = 30


def inc(x: int) -> int:
    return x + 1


def square(x: int) -> int:
    return x * x


def _reduction_tasks(n: int, fan_in: int) -> int:
    """How many ``sum`` tasks reduce ``n`` values to one, ``fan_in`` at a time."""
    count = 0
    while n > 1:
        n = -(-n // fan_in)
        count += n
    return count


@dataclasses.dataclass(frozen=True)
class DemoPlan:
    n_inputs: int
    fan_in: int

    @property
    def total_tasks(self) -> int:
        return 2 * self.n_inputs + _reduction_tasks(self.n_inputs, self.fan_in)

    @property
    def expected(self) -> int:
        """``1^2 + 2^2 + ... + n^2``."""
        n = self.n_inputs
        return n * (n + 1) * (2 * n + 1) // 6


def plan_demo(tasks: int, fan_in: int = FAN_IN) -> DemoPlan:
    """The largest graph of at most ``tasks`` tasks (at least one input)."""
    n = max(1, tasks // 2)
    while n > 1 and DemoPlan(n, fan_in).total_tasks > tasks:
        n -= 1 + (DemoPlan(n, fan_in).total_tasks - tasks) // 3
    return DemoPlan(max(1, n), fan_in)


class ProgressBar:
    """A one-line bar redrawn with ``\\r`` on a terminal; a line every ``interval`` seconds otherwise."""

    def __init__(self, total: int, stream: IO[str], *, tty: bool | None = None, interval: float = 1.0) -> None:
        self.total = max(1, total)
        self.stream = stream
        self.tty = _isatty(stream) if tty is None else tty
        self.interval = interval
        self.started = time.perf_counter()
        self._last_line = -1.0
        self._width = 0

    def render(self, done: int) -> str:
        fraction = min(1.0, done / self.total)
        filled = int(fraction * _BAR_WIDTH)
        elapsed = time.perf_counter() - self.started
        rate = done / elapsed if elapsed > 0 else 0.0
        bar = "#" * filled + "." * (_BAR_WIDTH - filled)
        return f"[{bar}] {fraction:4.0%}  {done:,}/{self.total:,} tasks  {elapsed:5.1f}s  {rate:,.0f} tasks/s"

    def update(self, done: int) -> None:
        if self.tty:
            self.stream.write("\r" + self._padded(self.render(done)))
            self.stream.flush()
            return
        now = time.perf_counter()
        if now - self._last_line >= self.interval:
            self._last_line = now
            self.stream.write(self.render(done) + "\n")
            self.stream.flush()

    def finish(self, done: int) -> None:
        line = self.render(done)
        self.stream.write(("\r" + self._padded(line) if self.tty else line) + "\n")
        self.stream.flush()

    def _padded(self, line: str) -> str:
        """The line, padded to cover a longer one drawn before it."""
        self._width = max(self._width, len(line))
        return line.ljust(self._width)


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError, io.UnsupportedOperation):
        return False


@dataclasses.dataclass(frozen=True)
class DemoResult:
    plan: DemoPlan
    result: Any
    seconds: float  # from the first submission to the result in hand

    @property
    def correct(self) -> bool:
        return bool(self.result == self.plan.expected)

    @property
    def tasks_per_second(self) -> float:
        return self.plan.total_tasks / self.seconds if self.seconds > 0 else float("inf")


class _Counter:
    """Completed futures, counted by done-callbacks on the client's loop thread."""

    def __init__(self) -> None:
        self.done = 0
        self._lock = threading.Lock()

    def __call__(self, future: Future) -> None:
        with self._lock:
            self.done += 1


def _submit(client: Client, plan: DemoPlan) -> tuple[list[Future], Future]:
    incs = client.map(inc, range(plan.n_inputs))
    layer = client.map(square, incs)
    futures = [*incs, *layer]
    while len(layer) > 1:
        layer = [client.submit(sum, layer[i : i + plan.fan_in]) for i in range(0, len(layer), plan.fan_in)]
        futures += layer
    return futures, layer[0]


def run_workload(
    client: Client, plan: DemoPlan, progress: ProgressBar | None = None, *, poll: float = 0.1,
    on_submitted: Callable[[float], None] | None = None,
) -> DemoResult:
    """Submit the graph, draw progress until the last task is done, fetch and return the result."""
    started = time.perf_counter()
    futures, final = _submit(client, plan)
    if on_submitted is not None:
        on_submitted(time.perf_counter() - started)
    counter = _Counter()
    for future in futures:
        future.add_done_callback(counter)
    while not final.done():
        if progress is not None:
            progress.update(counter.done)
        time.sleep(poll)
    result = final.result()
    seconds = time.perf_counter() - started
    if progress is not None:
        deadline = time.monotonic() + 1.0  # the last callbacks are on their way
        while counter.done < len(futures) and time.monotonic() < deadline:
            time.sleep(0.01)
        progress.finish(counter.done)
    for future in futures:
        future.release()
    return DemoResult(plan, result, seconds)
