"""sched_core: the scheduling core of dsched, compiled with mypyc.

Synchronous, deterministic and free of I/O: the scheduler side takes events and
returns instructions (:class:`SchedulerState`), and so does the worker side
(:class:`WorkerMachine`).  The same code runs interpreted for debugging;
:data:`COMPILED` says which build is loaded.

``DSCHED_CORE=interpreted`` in the environment makes a compiled install run
its core from the ``.py`` sources installed beside the extension modules (for
pdb and breakpoints, e.g. ``dsched replay``); :data:`COMPILED` is then False.
"""

import os as _os
import sys as _sys


def _use_interpreted_core() -> bool:
    """Honour ``DSCHED_CORE``: load ``sched_core._*`` from their sources if it says so.

    This lives here because every other module of the package is compiled
    (setup.py compiles all but ``__init__.py``) and ``sched_core`` imports
    nothing outside the standard library.  A finder placed first on
    ``sys.meta_path`` answers for the core's submodules before the path finder
    could pick the extension module that shadows each source; all of them go
    through it, so compiled and interpreted modules are never mixed.
    """
    choice = _os.environ.get("DSCHED_CORE", "").strip()
    if choice == "":
        return False
    if choice != "interpreted":
        raise ImportError(f"DSCHED_CORE must be 'interpreted' or unset, not {choice!r}")
    import importlib.abc
    import importlib.machinery
    import importlib.util

    package_dir = _os.path.dirname(_os.path.abspath(__file__))

    class _SourceFinder(importlib.abc.MetaPathFinder):
        def find_spec(
            self, fullname: str, path: object = None, target: object = None
        ) -> importlib.machinery.ModuleSpec | None:
            package, _, name = fullname.partition(".")
            if package != __name__ or not name.startswith("_") or name.startswith("__") or "." in name:
                return None
            source = _os.path.join(package_dir, name + ".py")
            if not _os.path.isfile(source):
                return None
            return importlib.util.spec_from_file_location(fullname, source)

    if not any(type(finder).__name__ == "_SourceFinder" for finder in _sys.meta_path):
        _sys.meta_path.insert(0, _SourceFinder())
    return True


_INTERPRETED_BY_REQUEST = _use_interpreted_core()

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
    RetireWorker,
    SchedulerEvent,
    StealResponse,
    TaskErred,
    TaskFinished,
    TaskSpec,
    Tick,
    WorkerAdded,
    WorkerHeartbeat,
    WorkerRemoved,
    WorkerStatusChanged,
)
from sched_core._instructions import (
    AcquireReplicas,
    ClientError,
    ClientInstruction,
    ClientKeyErred,
    ClientKeyLost,
    ClientKeysCancelled,
    ClientKeysInMemory,
    CloseWorker,
    ComputeTask,
    FreeKeys,
    Instruction,
    SchedulerError,
    StealRequest,
    WorkerInstruction,
)
from sched_core._layers import (
    APPLY,
    PIECES,
    REDUCE,
    Layer,
    LayerCall,
    LayerExpander,
    MapLayer,
    ShuffleLayer,
    TasksLayer,
    TreeReduceLayer,
    layer_key,
)
from sched_core._mode import COMPILED, check_stale_build, warn_if_stale
from sched_core._model import ClientState, TaskGroup, TaskPrefix, TaskState, WorkerState, key_group, key_split
from sched_core._scheduler import SchedulerState
from sched_core._states import STATE_NAMES, state_name
from sched_core._validate import validate_state
from sched_core._worker import WorkerMachine
from sched_core._worker_events import (
    AddReplicaMsg,
    ComputeTaskEvent,
    DataPutEvent,
    Execute,
    ExecuteFailureEvent,
    ExecuteSuccessEvent,
    FreeKeysEvent,
    GatherDep,
    GatherDepBusyEvent,
    GatherDepFailureEvent,
    GatherDepMissingEvent,
    GatherDepSuccessEvent,
    MissingDep,
    PauseEvent,
    ReleaseData,
    RemoveReplicasEvent,
    RetryBusyWorkerEvent,
    RetryBusyWorkerLater,
    StealRequestEvent,
    StealResponseMsg,
    TaskErredMsg,
    TaskFinishedMsg,
    UnpauseEvent,
    UpdateWhoHasEvent,
    WorkerEvent,
    WorkerMachineInstruction,
)
from sched_core._worker_task import WorkerTask

__version__ = "0.1.0"

if not _INTERPRETED_BY_REQUEST:  # the compiled modules, stale or not, are not what runs
    warn_if_stale()

__all__ = [
    "APPLY",
    "COMPILED",
    "PIECES",
    "REDUCE",
    "STATE_NAMES",
    "AcquireReplicas",
    "AddReplicaMsg",
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
    "CloseWorker",
    "ComputeTask",
    "ComputeTaskEvent",
    "DataPutEvent",
    "Execute",
    "ExecuteFailureEvent",
    "ExecuteSuccessEvent",
    "FreeKeys",
    "FreeKeysEvent",
    "GatherDep",
    "GatherDepBusyEvent",
    "GatherDepFailureEvent",
    "GatherDepMissingEvent",
    "GatherDepSuccessEvent",
    "GraphSubmitted",
    "Instruction",
    "KeysScattered",
    "Layer",
    "LayerCall",
    "LayerExpander",
    "MapLayer",
    "MissingData",
    "MissingDep",
    "PauseEvent",
    "ReleaseData",
    "RemoveReplicasEvent",
    "ReplicasAdded",
    "RetireWorker",
    "RetryBusyWorkerEvent",
    "RetryBusyWorkerLater",
    "SchedulerError",
    "SchedulerEvent",
    "SchedulerState",
    "ShuffleLayer",
    "StealRequest",
    "StealRequestEvent",
    "StealResponse",
    "StealResponseMsg",
    "TaskErred",
    "TaskErredMsg",
    "TaskFinished",
    "TaskFinishedMsg",
    "TaskGroup",
    "TaskPrefix",
    "TaskSpec",
    "TaskState",
    "TasksLayer",
    "Tick",
    "TreeReduceLayer",
    "UnpauseEvent",
    "UpdateWhoHasEvent",
    "WorkerAdded",
    "WorkerEvent",
    "WorkerHeartbeat",
    "WorkerInstruction",
    "WorkerMachine",
    "WorkerMachineInstruction",
    "WorkerRemoved",
    "WorkerState",
    "WorkerStatusChanged",
    "WorkerTask",
    "check_stale_build",
    "key_group",
    "key_split",
    "layer_key",
    "state_name",
    "validate_state",
    "__version__",
]
