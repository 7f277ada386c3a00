"""The exceptions a client's futures raise besides the task's own (named as in Dask)."""

from __future__ import annotations

from concurrent.futures import CancelledError

from dsched._comm import CommClosedError

__all__ = [
    "ClientDisconnectedError",
    "FutureCancelledError",
    "FutureLostError",
    "GraphError",
    "KilledWorker",
    "LostDataError",
    "NoWorkerError",
    "TaskFailedError",
    "failure_for",
]


class FutureCancelledError(CancelledError):
    """The future's key was cancelled (by ``cancel``, or because the client closed).

    A ``concurrent.futures.CancelledError`` (an ``Exception``), as in Dask, so it
    never interferes with the event loop's own cancellation.
    """

    def __init__(self, key: str, reason: str = "cancelled") -> None:
        super().__init__(f"{key!r}: {reason}")
        self.key = key
        self.reason = reason


class TaskFailedError(Exception):
    """The scheduler gave up on a key (it did not raise: something around it failed)."""

    def __init__(self, key: str, blamed_key: str, kind: str, message: str) -> None:
        super().__init__(message if blamed_key == key else f"{message} (while computing {key!r})")
        self.key = key
        self.blamed_key = blamed_key
        self.kind = kind
        self.message = message


class KilledWorker(TaskFailedError):
    """The task was running on too many workers that died (Dask's ``KilledWorker``)."""


class LostDataError(TaskFailedError):
    """Data with no recipe (scattered) was lost with the last worker holding it."""


class FutureLostError(LostDataError):
    """The scheduler no longer knows the future's key (it restarted, or forgot the key while the client was away).

    Raised by the futures of a client that reconnected (``reconnect_timeout``)
    for keys the scheduler it reached does not have: submit them again.
    """

    def __init__(self, key: str) -> None:
        super().__init__(
            key, key, "unknown-key",
            f"the scheduler no longer knows {key!r} (it restarted, or forgot the key while this client "
            "was disconnected): submit it again",
        )


class NoWorkerError(TaskFailedError):
    """No worker can run the task (restrictions nobody satisfies)."""


_FAILURES: dict[str, type[TaskFailedError]] = {
    "killed-worker": KilledWorker,
    "lost-data": LostDataError,
    "no-worker": NoWorkerError,
}


def failure_for(key: str, blamed_key: str, kind: str, message: str) -> TaskFailedError:
    """The exception for a scheduler's ``KeyFailed`` of this ``kind``."""
    return _FAILURES.get(kind, TaskFailedError)(key, blamed_key, kind, message)


class GraphError(ValueError):
    """The scheduler refused a submission, which changed nothing (a cycle, a missing dependency...).

    ``kind`` is the scheduler's reason ("cycle", "missing-dependency",
    "conflicting-definition", "unknown-key", "invalid-layers", or "limit-exceeded"
    for a submission over one of the scheduler's limits), ``keys`` the keys it names.
    """

    def __init__(self, kind: str, message: str, keys: list[str]) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message
        self.keys = keys


class ClientDisconnectedError(CommClosedError):
    """The client lost its scheduler connection (or was closed) before the key was done."""
