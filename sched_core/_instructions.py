"""Instructions the scheduler core emits.

Worker instructions carry the worker's address, client instructions the
client's id; the runtime groups them per connection and writes one frame per
connection per loop tick.  Instructions are read-only: the dictionaries in a
:class:`ComputeTask` may be shared between instructions.
"""

from __future__ import annotations


class Instruction:
    """Base class of everything the scheduler core asks the runtime to do."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"


class WorkerInstruction(Instruction):
    worker: str

    def __init__(self, worker: str) -> None:
        self.worker = worker


class ClientInstruction(Instruction):
    client: str

    def __init__(self, client: str) -> None:
        self.client = client


class ComputeTask(WorkerInstruction):
    """Run ``key`` on ``worker``; ``who_has`` says where each dependency lives.

    ``run_id`` identifies this assignment; the worker's report of the result
    must carry it back (see :class:`TaskFinished`).
    """

    key: str
    run_spec: object
    priority: int
    who_has: dict[str, list[str]]
    nbytes: dict[str, int]
    resources: dict[str, float] | None
    run_id: int

    def __init__(
        self,
        worker: str,
        key: str,
        run_spec: object,
        priority: int,
        who_has: dict[str, list[str]],
        nbytes: dict[str, int],
        resources: dict[str, float] | None,
        run_id: int,
    ) -> None:
        self.worker = worker
        self.key = key
        self.run_spec = run_spec
        self.priority = priority
        self.who_has = who_has
        self.nbytes = nbytes
        self.resources = resources
        self.run_id = run_id

    def __repr__(self) -> str:
        return f"<ComputeTask {self.key!r} on {self.worker!r}>"


class FreeKeys(WorkerInstruction):
    """Forget these keys on ``worker``: drop their data, cancel them if running."""

    keys: list[str]

    def __init__(self, worker: str, keys: list[str]) -> None:
        self.worker = worker
        self.keys = keys

    def __repr__(self) -> str:
        return f"<FreeKeys {self.keys!r} on {self.worker!r}>"


class StealRequest(WorkerInstruction):
    """Ask ``worker`` to give up ``key`` if it has not started it.

    The answer (:class:`StealResponse`) must echo ``run_id``.
    """

    key: str
    run_id: int

    def __init__(self, worker: str, key: str, run_id: int) -> None:
        self.worker = worker
        self.key = key
        self.run_id = run_id

    def __repr__(self) -> str:
        return f"<StealRequest {self.key!r} from {self.worker!r}>"


class AcquireReplicas(WorkerInstruction):
    """Fetch copies of these keys from the workers listed and keep them (a retiring worker's results).

    ``who_has`` maps each key to the workers holding it; ``nbytes`` their sizes.
    The worker reports the copies it stored as replicas added.
    """

    who_has: dict[str, list[str]]
    nbytes: dict[str, int]

    def __init__(self, worker: str, who_has: dict[str, list[str]], nbytes: dict[str, int]) -> None:
        self.worker = worker
        self.who_has = who_has
        self.nbytes = nbytes

    def __repr__(self) -> str:
        return f"<AcquireReplicas {len(self.who_has)} keys on {self.worker!r}>"


class CloseWorker(WorkerInstruction):
    """The worker is retired: tell it to close (its results have copies elsewhere, or nowhere to go)."""

    reason: str

    def __init__(self, worker: str, reason: str) -> None:
        self.worker = worker
        self.reason = reason

    def __repr__(self) -> str:
        return f"<CloseWorker {self.worker!r}: {self.reason}>"


class ClientKeysInMemory(ClientInstruction):
    """These keys the client holds are computed (their futures are done)."""

    keys: list[str]

    def __init__(self, client: str, keys: list[str]) -> None:
        self.client = client
        self.keys = keys

    def __repr__(self) -> str:
        return f"<ClientKeysInMemory {len(self.keys)} keys for {self.client!r}>"


class ClientKeyErred(ClientInstruction):
    """A key the client holds erred.

    ``blamed_key`` is the task that raised (``key`` itself, or a dependency).
    ``exception``/``traceback`` are the worker's opaque payloads, or a
    :class:`SchedulerError` when the scheduler itself gave up on the task.
    """

    key: str
    blamed_key: str
    exception: object
    traceback: object

    def __init__(self, client: str, key: str, blamed_key: str, exception: object, traceback: object) -> None:
        self.client = client
        self.key = key
        self.blamed_key = blamed_key
        self.exception = exception
        self.traceback = traceback

    def __repr__(self) -> str:
        return f"<ClientKeyErred {self.key!r} (blamed on {self.blamed_key!r}) for {self.client!r}>"


class ClientKeyLost(ClientInstruction):
    """Data the client scattered was lost with every worker holding it."""

    key: str

    def __init__(self, client: str, key: str) -> None:
        self.client = client
        self.key = key


class ClientKeysCancelled(ClientInstruction):
    keys: list[str]

    def __init__(self, client: str, keys: list[str]) -> None:
        self.client = client
        self.keys = keys


class ClientError(ClientInstruction):
    """A request from the client was refused; nothing it asked for changed.

    ``kind`` is a short machine-readable word ("missing-dependency", "cycle",
    "conflicting-definition", "unknown-key", "invalid-graph").
    """

    kind: str
    message: str
    keys: list[str]

    def __init__(self, client: str, kind: str, message: str, keys: list[str]) -> None:
        self.client = client
        self.kind = kind
        self.message = message
        self.keys = keys

    def __repr__(self) -> str:
        return f"<ClientError {self.kind}: {self.message}>"


class SchedulerError:
    """Why the scheduler itself failed a task (in place of a worker's exception payload).

    ``kind`` is "killed-worker" (the task was running on too many workers that
    died), "lost-data" (a scattered input was lost) or "no-worker".
    """

    kind: str
    message: str

    def __init__(self, kind: str, message: str) -> None:
        self.kind = kind
        self.message = message

    def __repr__(self) -> str:
        return f"SchedulerError({self.kind!r}, {self.message!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SchedulerError) and other.kind == self.kind and other.message == self.message

    def __hash__(self) -> int:
        return hash((self.kind, self.message))
