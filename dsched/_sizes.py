"""Sizes as people write them ("4GiB", "500MB", "auto") and the machine's resources.

Dask users write memory limits as strings; the same strings mean the same
numbers here: decimal units (``kB``, ``MB``, ...) are powers of 1000, binary
units (``KiB``, ``MiB``, ...) powers of 1024, and case does not matter.  A
worker's ``"auto"`` limit is its share of the machine's memory by threads, as
Dask's; a number between 0 and 1 is a fraction of the machine's memory.

Counting cores and memory honours what the process may actually use (CPU
affinity, cgroup limits, ``RLIMIT_RSS``), so defaults are sane in containers.
"""

from __future__ import annotations

import math
import os
import re
import sys
from typing import Final

__all__ = ["cpu_count", "format_bytes", "parse_bytes", "parse_memory_limit", "parse_resources", "total_memory"]

_UNITS: Final = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "m": 10**6,
    "mb": 10**6,
    "g": 10**9,
    "gb": 10**9,
    "t": 10**12,
    "tb": 10**12,
    "p": 10**15,
    "pb": 10**15,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
    "pib": 2**50,
}
_SIZE_RE: Final = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-z]*)\s*$", re.IGNORECASE)
_CGROUP_MEMORY_FILES: Final = (
    "/sys/fs/cgroup/memory.max",  # cgroups v2
    "/sys/fs/cgroup/memory/memory.limit_in_bytes",  # cgroups v1
)


def parse_bytes(text: str | int | float) -> int:
    """``"4GiB"`` -> 4294967296, ``"500MB"`` -> 500000000, ``"1e9"`` -> 10**9.

    Raises ``ValueError`` with the accepted forms for anything else (negative
    sizes included).
    """
    if isinstance(text, bool):
        raise ValueError(f"not a size: {text!r}")
    if isinstance(text, (int, float)):
        number, unit = float(text), ""
    else:
        match = _SIZE_RE.match(text)
        if match is None or match.group(2).lower() not in _UNITS:
            raise ValueError(
                f"not a size: {text!r} (write a number of bytes, optionally with a unit such as "
                "500MB, 4GiB or 1e9)"
            )
        number, unit = float(match.group(1)), match.group(2).lower()
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"not a size: {text!r} (sizes are finite and not negative)")
    return int(number * _UNITS[unit])


def format_bytes(n: int) -> str:
    """``4294967296`` -> ``"4.00 GiB"``: for messages and reprs."""
    for unit, size in (("PiB", 2**50), ("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size * 0.9:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


def cpu_count() -> int:
    """The cores this process may use: CPU affinity and cgroup CPU quota included."""
    count = os.cpu_count() or 1
    if hasattr(os, "sched_getaffinity"):
        count = len(os.sched_getaffinity(0)) or count
    quota = _cgroup_cpu_quota()
    if quota is not None:
        count = max(1, min(count, math.ceil(quota)))
    return count


def _cgroup_cpu_quota() -> float | None:
    """CPUs allowed by a cgroup quota (v2 ``cpu.max`` or v1 ``cfs_quota``), None if unlimited."""
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            return int(quota) / int(period)
        return None
    except (OSError, ValueError):
        pass
    try:
        with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") as f:
            quota_us = int(f.read())
        with open("/sys/fs/cgroup/cpu/cpu.cfs_period_us") as f:
            period_us = int(f.read())
        if quota_us > 0 and period_us > 0:
            return quota_us / period_us
    except (OSError, ValueError):
        pass
    return None


def total_memory() -> int:
    """The memory this process may use: physical memory, cgroup limit and ``RLIMIT_RSS``."""
    limit = 0
    if hasattr(os, "sysconf"):
        try:
            limit = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError):
            limit = 0
    if sys.platform == "linux":
        for path in _CGROUP_MEMORY_FILES:
            try:
                with open(path) as f:
                    value = int(f.read())
            except (OSError, ValueError):  # "max" (no limit), absent, unreadable
                continue
            if 0 < value and (limit == 0 or value < limit):
                limit = value
    try:
        import resource

        hard = resource.getrlimit(resource.RLIMIT_RSS)[1]
        if 0 < hard and (limit == 0 or hard < limit):
            limit = hard
    except (ImportError, OSError, ValueError):
        pass
    return limit


def parse_memory_limit(value: str | int | float | None, nthreads: int = 1, total_cores: int | None = None) -> int:
    """A worker's memory limit in bytes; 0 means no limit.

    * ``None``, ``0``, ``"0"``, ``"none"``: no limit;
    * ``"auto"``: this worker's share of the machine's memory, by threads
      (``total * min(1, nthreads / total_cores)``), as Dask;
    * a number between 0 and 1 (exclusive of 0, inclusive of 1): that fraction
      of the machine's memory;
    * anything else: a size for :func:`parse_bytes`.
    """
    if value is None:
        return 0
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("", "0", "none"):
            return 0
        if text == "auto":
            cores = total_cores if total_cores is not None else cpu_count()
            return int(total_memory() * min(1.0, nthreads / max(1, cores)))
        try:
            number = float(text)
        except ValueError:
            return parse_bytes(text)
        value = number
    if isinstance(value, float) and 0 < value <= 1:
        return int(total_memory() * value)
    return parse_bytes(value)


def parse_resources(text: str | None) -> dict[str, float]:
    """``"GPU=2,MEM=10e9"`` -> ``{"GPU": 2.0, "MEM": 1e10}`` (Dask's ``--resources``).

    Pairs are separated by commas or spaces.  Raises ``ValueError`` naming the
    bad pair.
    """
    resources: dict[str, float] = {}
    if not text:
        return resources
    for pair in re.split(r"[,\s]+", text.strip()):
        if not pair:
            continue
        name, sep, amount = pair.partition("=")
        name = name.strip()
        try:
            if not sep or not name:
                raise ValueError
            quantity = float(amount)
            if not math.isfinite(quantity) or quantity < 0:
                raise ValueError
        except ValueError:
            raise ValueError(
                f"bad resource {pair!r}: write NAME=AMOUNT pairs separated by commas, such as GPU=2,MEM=10e9"
            ) from None
        resources[name] = quantity
    return resources
