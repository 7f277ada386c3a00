"""dsched: a distributed task scheduler in the style of dask.distributed.

Common Dask code runs after changing one import::

    from dsched import Client, LocalCluster, as_completed, wait

The scheduling logic lives in the separate package ``sched_core`` (sans-I/O,
compiled with mypyc); ``dsched`` is the runtime around it.
"""

from dsched._as_completed import ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION, DoneAndNotDoneFutures, as_completed, wait
from dsched._client import Client
from dsched._client_errors import (
    ClientDisconnectedError,
    FutureCancelledError,
    FutureLostError,
    GraphError,
    KilledWorker,
    LostDataError,
    NoWorkerError,
    TaskFailedError,
)
from dsched._cluster import LocalCluster
from dsched._future import Future
from dsched._future_sequence import FutureSequence
from dsched._limits import Limits
from dsched._scheduler_server import SchedulerServer
from dsched._security import Security, SecurityError
from dsched._serialize import RemoteError, SerializationError
from dsched import graph
from dsched._version import __version__ as __version__
from dsched._worker import Worker

# Dask's name for the scheduler server.
Scheduler = SchedulerServer

__all__ = [
    "ALL_COMPLETED",
    "FIRST_COMPLETED",
    "FIRST_EXCEPTION",
    "Client",
    "ClientDisconnectedError",
    "DoneAndNotDoneFutures",
    "Future",
    "FutureCancelledError",
    "FutureLostError",
    "FutureSequence",
    "GraphError",
    "KilledWorker",
    "Limits",
    "LocalCluster",
    "LostDataError",
    "NoWorkerError",
    "RemoteError",
    "Scheduler",
    "SchedulerServer",
    "Security",
    "SecurityError",
    "SerializationError",
    "TaskFailedError",
    "Worker",
    "__version__",
    "as_completed",
    "graph",
    "wait",
]
