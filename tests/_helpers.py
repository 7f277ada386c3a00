"""Small helpers shared by the scheduler unit tests (the simulated cluster is in _driver.py)."""

from __future__ import annotations

from _driver import Cluster


def cluster(*workers: tuple[str, int], **kwargs: object) -> Cluster:
    """A simulated cluster with the given ``(address, nthreads)`` workers added."""
    c = Cluster(**kwargs)  # type: ignore[arg-type]
    for address, nthreads in workers:
        c.add_worker(address, nthreads)
    return c
