"""Task states on the scheduler, as small ints.

Small ints compare and index fast when compiled, and a per-group ``list[int]``
of counts indexed by state keeps the dashboard's numbers O(1) to maintain.
"""

from __future__ import annotations

from typing import Final

RELEASED: Final = 0
WAITING: Final = 1
QUEUED: Final = 2
NO_WORKER: Final = 3
PROCESSING: Final = 4
MEMORY: Final = 5
ERRED: Final = 6
FORGOTTEN: Final = 7

N_STATES: Final = 8

STATE_NAMES: Final[tuple[str, ...]] = (
    "released",
    "waiting",
    "queued",
    "no-worker",
    "processing",
    "memory",
    "erred",
    "forgotten",
)


def state_name(state: int) -> str:
    """The name of a task state, as Dask spells it."""
    if 0 <= state < N_STATES:
        return STATE_NAMES[state]
    return f"unknown({state})"


def needs_dependencies(state: int) -> bool:
    """True for states in which a task still needs its dependencies' data.

    A dependency's data may be released once no dependent is in one of these
    states and no client wants it.
    """
    return state == WAITING or state == QUEUED or state == NO_WORKER or state == PROCESSING
