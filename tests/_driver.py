"""A small simulated cluster around a ``SchedulerState``, shared by the scheduler tests.

``Cluster`` feeds events to the scheduler core and plays the workers and the
clients: it carries out every instruction the core returns, in order, on a
model of each worker (what it runs, what data it holds, what messages it has
sent that the scheduler has not read yet) and records what each client was
told.  After every ``handle_events`` it runs ``sched_core.validate_state`` and
checks the core against the model:

* a ``ComputeTask`` goes only to a live worker, names exactly the task's
  dependencies, and every dependency is, at that moment, held by one of the
  workers listed in ``who_has`` (with the nbytes that worker reported);
* a worker is never asked to compute a key it is already computing;
* after each batch, a worker holds what the scheduler thinks it holds and runs
  what the scheduler thinks it processes, up to the news still in its outbox
  (a ``FreeKeys`` that came after a ``ComputeTask`` of the same key on the same
  worker shows up here);
* nothing is processing on, or held by, a removed worker;
* after a one-event batch, every client notification names a key in the
  matching state, held by that client.

A worker carries out instructions in the order they come.  ``finished_event``
and ``erred_event`` make a worker's report of a task (updating the model at
once); tests deliver it at once (``finish``, ``err``) or queue it in the
worker's ``outbox`` (``post``) to deliver later (``deliver``), each worker's
messages in order.  A steal request is answered when it arrives (a task not
yet started is given up at once) and the answer waits in the outbox.  A worker
asked to compute a key it already holds (a fetched copy) reports it finished
at once.  The tasks a removed worker was running (``zombies``) and its
undelivered messages (``zombie_messages``) can be delivered after its removal,
as stale news.

A worker reports ``MissingData`` instead of a result when none of the holders
it was told about has a dependency.  With ``lossy`` set, a test may also make
a worker lose data behind the scheduler's back (``lose``).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence

import sched_core
from sched_core import (
    ClientAdded,
    ClientError,
    ClientKeyErred,
    ClientKeyLost,
    ClientKeysCancelled,
    ClientKeysInMemory,
    ClientReleasesKeys,
    ClientRemoved,
    ClientWantsKeys,
    CancelKeys,
    KeysScattered,
    MissingData,
    ComputeTask,
    FreeKeys,
    GraphSubmitted,
    Instruction,
    ReplicasAdded,
    SchedulerEvent,
    SchedulerState,
    StealRequest,
    StealResponse,
    TaskErred,
    TaskFinished,
    TaskSpec,
    WorkerAdded,
    WorkerRemoved,
)


def spec(key: str, deps: Sequence[str] = (), **kwargs: object) -> TaskSpec:
    """A TaskSpec with an opaque run_spec derived from the key."""
    run_spec = kwargs.pop("run_spec", ("run", key))
    return TaskSpec(key, list(deps), run_spec, **kwargs)  # type: ignore[arg-type]


def graph(edges: dict[str, Sequence[str]], **kwargs: object) -> list[TaskSpec]:
    """TaskSpecs from ``{key: [dependency keys]}``, in dict order."""
    return [spec(k, d, **kwargs) for k, d in edges.items()]


def of_type(out: Iterable[Instruction], cls: type) -> list:
    return [i for i in out if isinstance(i, cls)]


def computes(out: Iterable[Instruction]) -> list[ComputeTask]:
    return of_type(out, ComputeTask)


def computed_keys(out: Iterable[Instruction]) -> list[str]:
    return [i.key for i in out if isinstance(i, ComputeTask)]


def freed(out: Iterable[Instruction], worker: str | None = None) -> list[str]:
    """Keys of every FreeKeys in ``out`` (to ``worker`` only, if given)."""
    return [k for i in out if isinstance(i, FreeKeys) and (worker is None or i.worker == worker) for k in i.keys]


class SimWorker:
    """What one worker does and holds, as the driver models it."""

    def __init__(self, address: str, nthreads: int) -> None:
        self.address = address
        self.nthreads = nthreads
        self.running: dict[str, ComputeTask] = {}  # outstanding ComputeTasks
        self.started: set[str] = set()  # running keys that began executing
        self.data: dict[str, int] = {}  # key -> nbytes
        # Steal answers not yet delivered, and the keys given up by them.
        self.outbox: list[StealResponse] = []
        self.given_up: set[str] = set()
        # The latest scheduler batch this worker has carried out; its reports
        # carry it so that the scheduler can tell which ones crossed its news.
        self.seen_batch = 0

    def __repr__(self) -> str:
        return f"<SimWorker {self.address} running={len(self.running)} data={len(self.data)}>"


class ClientLog:
    """Everything the core told one client."""

    def __init__(self, client: str) -> None:
        self.client = client
        self.messages: list[Instruction] = []
        self.status: dict[str, str] = {}  # last word on each key
        self.erred: dict[str, ClientKeyErred] = {}
        self.errors: list[ClientError] = []
        self.cancelled: list[str] = []
        self.lost: list[str] = []

    def in_memory(self) -> set[str]:
        return {k for k, s in self.status.items() if s == "memory"}


class DriverError(AssertionError):
    pass


class Cluster:
    """A SchedulerState with simulated workers and clients around it."""

    def __init__(self, check: bool = True, lossy: bool = False, **kwargs: object) -> None:
        self.state = SchedulerState(**kwargs)  # type: ignore[arg-type]
        self.check = check
        self.lossy = lossy
        self.workers: dict[str, SimWorker] = {}
        self.dead: dict[str, SimWorker] = {}
        # (worker, key, run_id) of tasks a removed worker was running: their
        # results can still arrive, late; and its undelivered messages.
        self.zombies: list[tuple[str, str, int]] = []
        self.zombie_messages: list[SchedulerEvent] = []
        # What each client holds, as the clients see it.
        self.wants: dict[str, set[str]] = {}
        self.deps: dict[str, list[str]] = {}
        self.clients: dict[str, ClientLog] = {}
        self.history: list[Instruction] = []
        self.n_batches = 0
        self._buried: dict[str, dict[str, int]] = {}
        self.n_computes = 0
        self._worker_counter = 0
        self.acquisitions: list[sched_core.AcquireReplicas] = []  # copies asked for (retiring workers)
        self.closed: list[str] = []  # workers told to close (retired)

    # ------------------------------------------------------------------
    # Feeding events

    def handle(self, *events: SchedulerEvent) -> list[Instruction]:
        return self.handle_list(list(events))

    def handle_list(self, events: list[SchedulerEvent]) -> list[Instruction]:
        state = self.state
        for ev in events:
            if isinstance(ev, GraphSubmitted):
                for ts in ev.tasks:
                    if ts.key not in state.tasks:
                        self.deps[ts.key] = list(ts.dependencies)
        alive_before = set(self.workers)
        known_before = set(state.tasks)
        # Data of workers removed in this batch: instructions made before the
        # removal (earlier in the batch) may still name them as holders.
        self._buried: dict[str, dict[str, int]] = {}
        for ev in events:
            if isinstance(ev, WorkerAdded):
                old = self.workers.pop(ev.address, None)
                if old is not None:
                    # The same address again: the old process is gone.
                    self._bury(old)
                self.dead.pop(ev.address, None)
                if ev.nthreads >= 1:
                    self.workers[ev.address] = SimWorker(ev.address, ev.nthreads)
                elif old is not None:
                    self.dead[ev.address] = old
            elif isinstance(ev, WorkerRemoved):
                sim = self.workers.pop(ev.address, None)
                if sim is not None:
                    self.dead[ev.address] = sim
                    self._bury(sim)
            elif isinstance(ev, StealResponse):
                sim = self.workers.get(ev.worker)
                if sim is not None:
                    sim.given_up.discard(ev.key)
        out = state.handle_events(events)
        self._update_wants(events, out, known_before)
        self.n_batches += 1
        sched_core.validate_state(state)
        self._apply(out, alive_before)
        for sim in self.workers.values():
            sim.seen_batch = state.batch
        if self.check:
            self.check_consistency()
            if len(events) == 1:
                self._check_client_messages(out)
        return out

    def _bury(self, sim: SimWorker) -> None:
        self._buried.setdefault(sim.address, {}).update(sim.data)
        for key, instr in sim.running.items():
            self.zombies.append((sim.address, key, instr.run_id))
        self.zombie_messages.extend(sim.outbox)
        sim.running = {}
        sim.started = set()
        sim.data = {}
        sim.outbox = []
        sim.given_up = set()

    def _update_wants(self, events: list[SchedulerEvent], out: list[Instruction], known: set[str]) -> None:
        refused = {i.client for i in out if isinstance(i, ClientError)}
        for ev in events:
            if isinstance(ev, GraphSubmitted):
                if ev.client not in refused:
                    self.wants.setdefault(ev.client, set()).update(ev.wanted)
            elif isinstance(ev, ClientWantsKeys):
                self.wants.setdefault(ev.client, set()).update(k for k in ev.keys if k in known)
            elif isinstance(ev, KeysScattered):
                self.wants.setdefault(ev.client, set()).update(ev.nbytes)
            elif isinstance(ev, ClientReleasesKeys):
                self.wants.get(ev.client, set()).difference_update(ev.keys)
            elif isinstance(ev, CancelKeys):
                for client in list(self.wants) if ev.force else [ev.client]:
                    self.wants.get(client, set()).difference_update(ev.keys)
            elif isinstance(ev, ClientRemoved):
                self.wants.pop(ev.client, None)
            known.update(self.state.tasks)

    def _apply(self, out: list[Instruction], alive_before: set[str]) -> None:
        self.history.extend(out)
        for instr in out:
            if isinstance(instr, ComputeTask):
                self._on_compute(instr, alive_before)
            elif isinstance(instr, FreeKeys):
                sim = self.workers.get(instr.worker)
                if sim is None:
                    if self.check and instr.worker not in self.dead:
                        raise DriverError(f"{instr!r} to a worker that never existed")
                    continue
                for key in instr.keys:
                    sim.running.pop(key, None)
                    sim.started.discard(key)
                    sim.data.pop(key, None)
                    sim.given_up.discard(key)
            elif isinstance(instr, StealRequest):
                sim = self.workers.get(instr.worker)
                if sim is None:
                    if self.check and instr.worker not in alive_before:
                        raise DriverError(f"{instr!r} to a removed worker")
                    continue
                key = instr.key
                if key in sim.running:
                    if key in sim.started:
                        answer = "executing"
                    else:
                        del sim.running[key]
                        sim.given_up.add(key)
                        answer = "ready"
                elif key in sim.data:
                    answer = "memory"
                else:
                    answer = None
                sim.outbox.append(StealResponse(sim.address, key, answer, instr.run_id))
            elif isinstance(instr, sched_core.ClientInstruction):
                self._on_client_message(instr)
            elif isinstance(instr, sched_core.AcquireReplicas):
                self.acquisitions.append(instr)  # carried out by the test (``replicate``), or not
            elif isinstance(instr, sched_core.CloseWorker):
                self.closed.append(instr.worker)
            else:
                raise DriverError(f"unexpected instruction {instr!r}")

    def _on_compute(self, instr: ComputeTask, alive_before: set[str]) -> None:
        self.n_computes += 1
        sim = self.workers.get(instr.worker)
        if sim is None:
            if self.check and instr.worker not in alive_before:
                raise DriverError(f"{instr!r} sent to a removed or unknown worker")
            return  # removed later in the same batch
        if not self.check:
            sim.running[instr.key] = instr
            sim.given_up.discard(instr.key)
            return
        if instr.key in sim.running:
            raise DriverError(f"{instr!r}: the worker is already computing {instr.key!r}")
        sim.given_up.discard(instr.key)
        expected_deps = self.deps.get(instr.key)
        if expected_deps is not None and sorted(instr.who_has) != sorted(set(expected_deps)):
            raise DriverError(f"{instr!r}: who_has names {sorted(instr.who_has)}, dependencies are {expected_deps}")
        if sorted(instr.nbytes) != sorted(instr.who_has):
            raise DriverError(f"{instr!r}: nbytes and who_has name different keys")
        for dep, holders in instr.who_has.items():
            ok = False
            for address in holders:
                holder = self.workers.get(address)
                data = holder.data if holder is not None and dep in holder.data else self._buried.get(address, {})
                if dep in data:
                    if data[dep] != instr.nbytes[dep]:
                        raise DriverError(
                            f"{instr!r}: nbytes[{dep!r}]={instr.nbytes[dep]}, the worker reported {data[dep]}"
                        )
                    ok = True
            if not ok:
                raise DriverError(
                    f"{instr!r} issued while dependency {dep!r} is held by none of {holders} "
                    f"(live holders: {[w for w, s in self.workers.items() if dep in s.data]})"
                )
        if instr.key in sim.data:
            # It has the result already (a copy it fetched): done at once.
            sim.outbox.append(TaskFinished(sim.address, instr.key, sim.data[instr.key], 0.0, instr.run_id))
            return
        sim.running[instr.key] = instr

    def _on_client_message(self, instr: Instruction) -> None:
        client = instr.client  # type: ignore[attr-defined]
        log = self.log(client)
        log.messages.append(instr)
        if isinstance(instr, ClientKeysInMemory):
            for key in instr.keys:
                log.status[key] = "memory"
        elif isinstance(instr, ClientKeyErred):
            log.status[instr.key] = "erred"
            log.erred[instr.key] = instr
        elif isinstance(instr, ClientKeyLost):
            log.status[instr.key] = "lost"
            log.lost.append(instr.key)
        elif isinstance(instr, ClientKeysCancelled):
            for key in instr.keys:
                log.status[key] = "cancelled"
            log.cancelled.extend(instr.keys)
        elif isinstance(instr, ClientError):
            log.errors.append(instr)

    def _check_client_messages(self, out: list[Instruction]) -> None:
        """After a one-event batch, each notification matches the key's state."""
        tasks = self.state.tasks
        for instr in out:
            if isinstance(instr, ClientKeysInMemory):
                if len(set(instr.keys)) != len(instr.keys):
                    raise DriverError(f"{instr!r} names a key twice: {instr.keys}")
                for key in instr.keys:
                    ts = tasks.get(key)
                    if ts is None or ts.state_name != "memory":
                        raise DriverError(f"{instr.client} told {key!r} is in memory; it is {ts!r}")
                    if ts.who_wants is None or instr.client not in [c.client_id for c in ts.who_wants]:
                        raise DriverError(f"{instr.client} told about {key!r}, which it does not hold")
            elif isinstance(instr, ClientKeyErred):
                ts = tasks.get(instr.key)
                if ts is None or ts.state_name != "erred":
                    raise DriverError(f"{instr!r} but the key is {ts!r}")
                if ts.who_wants is None or instr.client not in [c.client_id for c in ts.who_wants]:
                    raise DriverError(f"{instr!r}: the client does not hold the key")

    def log(self, client: str) -> ClientLog:
        log = self.clients.get(client)
        if log is None:
            log = self.clients[client] = ClientLog(client)
        return log

    # ------------------------------------------------------------------
    # Consistency of the model with the core

    def check_consistency(self) -> None:
        state = self.state
        if set(state.workers) != set(self.workers):
            raise DriverError(f"scheduler knows workers {sorted(state.workers)}, alive are {sorted(self.workers)}")
        for address, ws in state.workers.items():
            sim = self.workers[address]
            # What the scheduler cannot know yet: the news in the outbox.
            reported: set[str] = set()
            new_data: set[str] = set()
            for ev in sim.outbox:
                if isinstance(ev, TaskFinished):
                    reported.add(ev.key)
                    new_data.add(ev.key)
                elif isinstance(ev, TaskErred):
                    reported.add(ev.key)
                elif isinstance(ev, ReplicasAdded):
                    new_data.update(ev.keys)
            held = {ts.key for ts in ws.has_what}
            data = set(sim.data)
            if not held <= data <= held | new_data:
                raise DriverError(
                    f"{address}: scheduler thinks it holds {sorted(held - data)[:10]} it does not, "
                    f"and not {sorted(data - held - new_data)[:10]} which it does"
                )
            processing = {ts.key for ts in ws.processing}
            running = set(sim.running)
            # A task given up on a steal request, or done, is still processing
            # there until the news is delivered.
            if not running <= processing <= running | sim.given_up | reported:
                raise DriverError(
                    f"{address}: scheduler thinks it processes "
                    f"{sorted(processing - running - sim.given_up - reported)[:10]} "
                    f"it does not, and not {sorted(running - processing)[:10]} which it does"
                )
            for ts in ws.has_what:
                if sim.data[ts.key] != ts.nbytes:
                    raise DriverError(f"{ts!r}: nbytes {ts.nbytes}, the worker reported {sim.data[ts.key]}")

    # ------------------------------------------------------------------
    # Conveniences: workers

    def add_worker(self, address: str | None = None, nthreads: int = 1, **kwargs: object) -> list[Instruction]:
        if address is None:
            address = self.new_address()
        return self.handle(WorkerAdded(address, nthreads, **kwargs))  # type: ignore[arg-type]

    def new_address(self) -> str:
        while True:
            self._worker_counter += 1
            address = f"w{self._worker_counter}"
            if address not in self.workers and address not in self.dead:
                return address

    def remove_worker(self, address: str, expected: bool = False) -> list[Instruction]:
        return self.handle(WorkerRemoved(address, expected))

    # ------------------------------------------------------------------
    # Conveniences: clients

    def submit(
        self, client: str, tasks: list[TaskSpec] | dict[str, Sequence[str]], wanted: Sequence[str] | None = None
    ) -> list[Instruction]:
        if isinstance(tasks, dict):
            tasks = graph(tasks)
        if wanted is None:
            wanted = [t.key for t in tasks]
        return self.handle(GraphSubmitted(client, tasks, list(wanted)))

    def release(self, client: str, keys: Sequence[str]) -> list[Instruction]:
        return self.handle(ClientReleasesKeys(client, list(keys)))

    def add_client(self, client: str) -> list[Instruction]:
        return self.handle(ClientAdded(client))

    def remove_client(self, client: str) -> list[Instruction]:
        return self.handle(ClientRemoved(client))

    # ------------------------------------------------------------------
    # Conveniences: workers doing work

    def replicate(self, key: str, worker: str) -> list[Instruction]:
        """``worker`` copies ``key`` from a holder and tells the scheduler."""
        holders = self.holders(key)
        assert holders, f"nobody holds {key!r}"
        self.workers[worker].data[key] = self.workers[holders[0]].data[key]
        sim = self.workers[worker]
        return self.handle(ReplicasAdded(worker, [key], {key: sim.data[key]}, sim.seen_batch))

    def running_on(self, key: str) -> list[str]:
        return [a for a, sim in self.workers.items() if key in sim.running]

    def holders(self, key: str) -> list[str]:
        return [a for a, sim in self.workers.items() if key in sim.data]

    def _worker_for(self, key: str, worker: str | None) -> str:
        if worker is not None:
            return worker
        where = self.running_on(key)
        if len(where) != 1:
            raise DriverError(f"{key!r} is running on {where}, not on exactly one worker")
        return where[0]

    def finished_event(
        self, key: str, worker: str | None = None, nbytes: int = 100, duration: float = 0.1, fetch: bool = True
    ) -> list[SchedulerEvent]:
        """The worker's side of finishing ``key``: update the model, make the messages.

        With ``fetch`` the worker first copies the dependencies it lacked from
        their holders and reports the new replicas.
        """
        address = self._worker_for(key, worker)
        sim = self.workers.get(address)
        events: list[SchedulerEvent] = []
        run_id = self.last_run_id(address, key)
        if sim is not None:
            instr = sim.running.get(key)
            if instr is not None:
                missing: list[SchedulerEvent] = []
                for dep, holders in instr.who_has.items():
                    if dep in sim.data:
                        continue
                    if not any(h in self.workers and dep in self.workers[h].data for h in holders):
                        # None of the workers it was told about has it (they
                        # left, or lost it): the worker reports each of them.
                        if not self.lossy and not any(dep in w.data for w in self.workers.values()):
                            raise DriverError(f"{key!r} is to run on {address} but {dep!r} is lost everywhere")
                        if not holders:
                            raise DriverError(f"{instr!r} names no holder of {dep!r}")
                        missing.extend(MissingData(address, dep, h, sim.seen_batch) for h in holders)
                if missing:
                    return missing  # the task cannot run yet
                fetched = []
                for dep, holders in instr.who_has.items():
                    for h in holders:
                        holder = self.workers.get(h)
                        if holder is not None and dep in holder.data:
                            if fetch and dep not in sim.data:
                                sim.data[dep] = holder.data[dep]
                                fetched.append(dep)
                            break
                if fetched:
                    events.append(ReplicasAdded(address, fetched, {k: sim.data[k] for k in fetched}, sim.seen_batch))
            sim.running.pop(key, None)
            sim.started.discard(key)
            sim.data[key] = nbytes
        events.append(TaskFinished(address, key, nbytes, duration, run_id))
        return events

    def erred_event(self, key: str, worker: str | None = None, exception: object = None) -> TaskErred:
        address = self._worker_for(key, worker)
        sim = self.workers.get(address)
        run_id = self.last_run_id(address, key)
        if sim is not None:
            sim.running.pop(key, None)
            sim.started.discard(key)
        return TaskErred(address, key, exception if exception is not None else f"boom-{key}", f"tb-{key}", run_id)

    def last_run_id(self, worker: str, key: str) -> int:
        """The run id of the latest ComputeTask of ``key`` sent to ``worker`` (-1 if none)."""
        sim = self.workers.get(worker)
        if sim is not None and key in sim.running:
            return sim.running[key].run_id
        for instr in reversed(self.history):
            if isinstance(instr, ComputeTask) and instr.worker == worker and instr.key == key:
                return instr.run_id
        return -1

    def finish(
        self, key: str, worker: str | None = None, nbytes: int = 100, duration: float = 0.1, fetch: bool = True
    ) -> list[Instruction]:
        return self.handle_list(self.finished_event(key, worker, nbytes, duration, fetch))

    def err(self, key: str, worker: str | None = None, exception: object = None) -> list[Instruction]:
        return self.handle(self.erred_event(key, worker, exception))

    def start(self, key: str) -> None:
        """The worker running ``key`` begins executing it (a steal can no longer take it)."""
        self.workers[self._worker_for(key, None)].started.add(key)

    def steal_responses(self) -> list[SchedulerEvent]:
        """Every undelivered steal answer, taken out of the workers' outboxes."""
        events: list[SchedulerEvent] = []
        for sim in self.workers.values():
            events.extend(sim.outbox)
            sim.outbox = []
        return events

    def lose(self, key: str, worker: str) -> None:
        """``worker`` loses its copy of ``key`` without telling the scheduler."""
        assert self.lossy, "a Cluster(lossy=True) is needed to lose data"
        del self.workers[worker].data[key]

    def outstanding(self) -> list[tuple[str, str]]:
        """(worker, key) of every ComputeTask not yet answered, in a stable order."""
        return [(a, k) for a, sim in self.workers.items() for k in sim.running]

    def post(self, events: list[SchedulerEvent]) -> None:
        """Queue worker messages (made by ``finished_event`` and the like) in their worker's outbox."""
        for ev in events:
            address = ev.worker  # type: ignore[attr-defined]
            sim = self.workers.get(address)
            if sim is None:
                self.zombie_messages.append(ev)
            else:
                sim.outbox.append(ev)

    def deliver(self, rng: random.Random | None = None) -> list[SchedulerEvent]:
        """Take messages out of the outboxes, keeping each worker's order.

        Without ``rng``, everything; with it, a random prefix of each outbox,
        the workers' messages interleaved at random.
        """
        streams: list[list[SchedulerEvent]] = []
        for sim in self.workers.values():
            if not sim.outbox:
                continue
            n = len(sim.outbox) if rng is None else rng.randint(0, len(sim.outbox))
            streams.append(sim.outbox[:n])
            sim.outbox = sim.outbox[n:]
        if rng is None:
            return [ev for stream in streams for ev in stream]
        events: list[SchedulerEvent] = []
        streams = [st for st in streams if st]
        positions = [0] * len(streams)
        while streams:
            i = rng.randrange(len(streams))
            events.append(streams[i][positions[i]])
            positions[i] += 1
            if positions[i] == len(streams[i]):
                del streams[i]
                del positions[i]
        return events

    def run(
        self,
        rng: random.Random | None = None,
        fail: Iterable[str] = (),
        nbytes: int = 100,
        duration: float = 0.1,
        max_rounds: int = 100_000,
    ) -> int:
        """Finish (or, for keys in ``fail``, err) outstanding work until there is none.

        Without ``rng`` each round finishes everything outstanding in one
        batch; with it, a random nonempty subset in random order.  Returns the
        number of rounds.
        """
        fail = set(fail)
        rounds = 0
        while True:
            work = self.outstanding()
            news = self.deliver()
            if news:
                self.handle_list(news)
                continue
            if not work:
                return rounds
            rounds += 1
            if rounds > max_rounds:
                raise DriverError("no quiescence")
            if rng is not None:
                rng.shuffle(work)
                work = work[: rng.randint(1, len(work))]
            events: list[SchedulerEvent] = []
            for address, key in work:
                if key in fail:
                    events.append(self.erred_event(key, address))
                else:
                    events.extend(self.finished_event(key, address, nbytes, duration))
            self.handle_list(events)

    # ------------------------------------------------------------------
    # Reading the state

    def state_of(self, key: str) -> str | None:
        return self.state.task_state(key)

    def states(self) -> dict[str, str]:
        return {k: ts.state_name for k, ts in self.state.tasks.items()}

    def snapshot(self) -> dict[str, tuple]:
        """Everything about each task that a refused request must not change."""
        return {
            k: (
                ts.state_name,
                ts.priority,
                [d.key for d in ts.dependencies],
                ts.n_dependents,
                ts.n_waiting,
                ts.n_waiters,
                sorted(c.client_id for c in ts.who_wants or []),
                sorted(w.address for w in ts.who_has or []),
                ts.processing_on.address if ts.processing_on is not None else None,
                sorted(d.key for d in ts.dependents or [] if d.state_name != "forgotten"),
            )
            for k, ts in self.state.tasks.items()
        } | {"<groups>": tuple(sorted((n, g.n_tasks) for n, g in self.state.groups.items()))}

    def assert_empty(self) -> None:
        """Nothing is left: no task, group, queue entry, or worker assignment."""
        state = self.state
        assert state.tasks == {}, list(state.tasks.values())[:10]
        assert state.groups == {}, list(state.groups.values())[:10]
        assert state.queued == {}
        assert state.unrunnable == {}
        for ws in state.workers.values():
            assert ws.processing == {}, ws
            assert ws.has_what == {}, ws
            assert ws.nbytes == 0, ws
            assert ws.occupancy == 0.0, ws
        for cs in state.clients.values():
            assert cs.wants == {}, cs
        assert state.counts.as_list()[:7] == [0] * 7, state.counts
        for sim in self.workers.values():
            assert sim.running == {} and sim.data == {}, sim
