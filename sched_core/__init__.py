"""sched_core: the scheduling core of dsched, compiled with mypyc.

Synchronous, deterministic and free of I/O: the scheduler side takes events and
returns instructions (:class:`SchedulerState`), and so does the worker side
(:class:`WorkerMachine`).  The same code runs interpreted for debugging;
:data:`COMPILED` says which build is loaded.
"""

from sched_core._events import (
    CancelKeys,
    ClientAdded,
    ClientReleasesKeys,
    ClientRemoved,
    ClientWantsKeys,
    GraphSubmitted,
    KeysScattered,
    MissingData,
    ReplicasAdded,
    SchedulerEvent,
    StealResponse,
    TaskErred,
    TaskFinished,
    TaskSpec,
    Tick,
    WorkerAdded,
    WorkerHeartbeat,
    WorkerRemoved,
)
from sched_core._instructions import (
    ClientError,
    ClientInstruction,
    ClientKeyErred,
    ClientKeyLost,
    ClientKeysCancelled,
    ClientKeysInMemory,
    ComputeTask,
    FreeKeys,
    Instruction,
    SchedulerError,
    StealRequest,
    WorkerInstruction,
)
from sched_core._mode import COMPILED, check_stale_build, warn_if_stale
from sched_core._model import ClientState, TaskGroup, TaskPrefix, TaskState, WorkerState, key_group, key_split
from sched_core._scheduler import SchedulerState
from sched_core._states import STATE_NAMES, state_name
from sched_core._validate import validate_state

__version__ = "0.1.0"

warn_if_stale()

__all__ = [
    "COMPILED",
    "STATE_NAMES",
    "CancelKeys",
    "ClientAdded",
    "ClientError",
    "ClientInstruction",
    "ClientKeyErred",
    "ClientKeyLost",
    "ClientKeysCancelled",
    "ClientKeysInMemory",
    "ClientReleasesKeys",
    "ClientRemoved",
    "ClientState",
    "ClientWantsKeys",
    "ComputeTask",
    "FreeKeys",
    "GraphSubmitted",
    "Instruction",
    "KeysScattered",
    "MissingData",
    "ReplicasAdded",
    "SchedulerError",
    "SchedulerEvent",
    "SchedulerState",
    "StealRequest",
    "StealResponse",
    "TaskErred",
    "TaskFinished",
    "TaskGroup",
    "TaskPrefix",
    "TaskSpec",
    "TaskState",
    "Tick",
    "WorkerAdded",
    "WorkerHeartbeat",
    "WorkerInstruction",
    "WorkerRemoved",
    "WorkerState",
    "__version__",
    "check_stale_build",
    "key_group",
    "key_split",
    "state_name",
    "validate_state",
]
