"""Replaying a recorded scheduler: the same batches of events through a fresh core.

``replay(path)`` rebuilds ``SchedulerState`` with the recorded configuration,
feeds it every recorded batch with ``handle_events`` and checks each batch's
instructions against the recorded digest.  The first batch whose decisions
differ is reported with both instruction lists (in brief), so a change in the
core, or a difference between the compiled and interpreted builds, shows up at
the batch that caused it.  With ``step=True`` (or an ``on_batch`` callback) a
developer stops before each batch and steps into the core with pdb: run the
replay interpreted (``DSCHED_CORE=interpreted``, the default of ``dsched
replay``) for breakpoints inside ``sched_core`` to work.

:func:`state_snapshot` turns a state into plain data (tasks, workers, clients,
counters) so that two states can be compared with ``==`` or
:func:`compare_states`, e.g. a live scheduler's against its replay.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import sched_core as sc
from dsched._recording import BatchRecord, EndRecord, Header, RecordingError, RecordingReader, load_snapshot
from dsched._recording_codec import CodecError, brief_rows, decisions_digest, decode_events

__all__ = ["BatchHook", "Mismatch", "ReplayResult", "compare_states", "replay", "state_snapshot"]

BatchHook = Callable[[BatchRecord, list[sc.SchedulerEvent], sc.SchedulerState], None]
"""Called before each batch is fed: the record, its decoded events and the state."""

# Divergences after the first are usually its consequences: keep the details of a few.
MAX_DETAILED: Final = 10


@dataclass
class Mismatch:
    """A batch whose replayed instructions differ from the recorded ones."""

    batch: int
    recorded_count: int
    replayed_count: int
    recorded: list[Any] | None  # brief rows, if the recording kept them
    replayed: list[Any]
    note: str = ""

    @property
    def first_difference(self) -> int | None:
        """Index of the first differing brief row (None: only details such as who_has differ, or unknown)."""
        if self.recorded is None:
            return None
        for i in range(min(len(self.recorded), len(self.replayed))):
            if self.recorded[i] != self.replayed[i]:
                return i
        if len(self.recorded) != len(self.replayed):
            return min(len(self.recorded), len(self.replayed))
        return None

    def describe(self, context: int = 3, limit: int = 12) -> str:
        lines = [
            f"batch {self.batch}: the replay made {self.replayed_count} instructions, "
            f"the recording {self.recorded_count}, and they differ" + (f" ({self.note})" if self.note else "")
        ]
        first = self.first_difference
        if self.recorded is None:
            lines.append("  (the recording kept only a digest of its instructions)")
            lines.append("  replayed: " + _rows_text(self.replayed, 0, limit))
            return "\n".join(lines)
        if first is None:
            lines.append("  same kinds, targets and keys: they differ in details (priority, who_has, nbytes, payloads)")
            start = 0
        else:
            lines.append(f"  first difference at instruction {first}:")
            start = max(0, first - context)
        lines.append("  recorded: " + _rows_text(self.recorded, start, limit))
        lines.append("  replayed: " + _rows_text(self.replayed, start, limit))
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {
            "batch": self.batch,
            "recorded_count": self.recorded_count,
            "replayed_count": self.replayed_count,
            "first_difference": self.first_difference,
            "recorded": self.recorded,
            "replayed": self.replayed,
            "note": self.note,
        }


def _rows_text(rows: list[Any], start: int, limit: int) -> str:
    shown = rows[start : start + limit]
    text = "; ".join(" ".join(str(part) for part in row) for row in shown)
    before = f"[{start} before] " if start else ""
    after = f" [{len(rows) - start - len(shown)} more]" if len(rows) > start + len(shown) else ""
    return before + (text or "(none)") + after


@dataclass
class ReplayResult:
    """What a replay did and the state it left."""

    path: str
    header: Header
    state: sc.SchedulerState
    batches: int = 0
    events: int = 0
    instructions: int = 0
    mismatches: list[Mismatch] = field(default_factory=list)  # the first MAX_DETAILED
    n_mismatches: int = 0
    end: EndRecord | None = None
    truncated: bool = False
    until_batch: int | None = None
    error: str | None = None  # the core raised while replaying
    exception: BaseException | None = None
    invalid: str | None = None  # validate_state failed (validate=True)

    @property
    def ok(self) -> bool:
        """Every replayed batch took the recorded decisions, without error."""
        return self.n_mismatches == 0 and self.error is None and self.invalid is None

    def summary(self) -> dict[str, Any]:
        """Plain data: what was replayed, the resulting state in numbers, the divergences."""
        state = self.state
        by_state: dict[str, int] = {}
        for ts in state.tasks.values():
            by_state[ts.state_name] = by_state.get(ts.state_name, 0) + 1
        header = self.header
        return {
            "path": self.path,
            "recorded": {
                "dsched_version": header.dsched_version,
                "compiled": header.compiled,
                "python": header.python,
                "scheduler_id": header.scheduler_id,
                "started": header.started,
                "payloads": header.payloads,
                "first_batch": header.first_batch,  # > 0: started mid-run, from a snapshot
            },
            "core": "compiled" if sc.COMPILED else "interpreted",
            "batches": self.batches,
            "events": self.events,
            "instructions": self.instructions,
            "end": self.end.reason if self.end is not None else None,
            "end_message": self.end.message if self.end is not None else None,
            "truncated": self.truncated,
            "until_batch": self.until_batch,
            "tasks": len(state.tasks),
            "tasks_by_state": dict(sorted(by_state.items())),
            "workers": [
                {"address": ws.address, "nthreads": ws.nthreads, "processing": len(ws.processing), "memory": len(ws.has_what)}
                for ws in state.workers.values()
            ],
            "clients": sorted(state.clients),
            "mismatches": self.n_mismatches,
            "first_mismatch": self.mismatches[0].as_dict() if self.mismatches else None,
            "error": self.error,
            "invalid": self.invalid,
            "ok": self.ok,
        }

    def report(self) -> str:
        """A few lines for a terminal."""
        s = self.summary()
        rec = s["recorded"]
        mode = "compiled" if rec["compiled"] else "interpreted"
        if s["end"] is not None:
            ending = f"ended: {s['end']} ({s['end_message']})"
        elif self.until_batch is not None and self.header.first_batch + self.batches >= self.until_batch:
            ending = f"stopped after batch {self.until_batch} as asked"
        else:
            ending = "no end record: the recording scheduler stopped without closing it" + (
                " (a partial last batch was ignored)" if self.truncated else ""
            )
        states = ", ".join(f"{name} {n}" for name, n in s["tasks_by_state"].items())
        workers = "".join(
            f"\n  {w['address']}: {w['nthreads']} threads, {w['processing']} processing, {w['memory']} in memory"
            for w in s["workers"]
        )
        lines = [
            f"recording: {self.path} (dsched {rec['dsched_version']}, core {mode}, scheduler {rec['scheduler_id'] or '?'})"
            + (f", started mid-run: from a snapshot of the state after batch {rec['first_batch']}"
               if rec["first_batch"] else ""),
            f"replayed with the {s['core']} core: {s['batches']} batches, {s['events']} events, "
            f"{s['instructions']} instructions; {ending}",
            f"tasks: {s['tasks']}" + (f" ({states})" if states else ""),
            f"workers: {len(s['workers'])}{workers}",
            f"clients: {len(s['clients'])}" + (f" ({', '.join(s['clients'])})" if s["clients"] else ""),
        ]
        if self.n_mismatches:
            lines.append(f"DECISIONS DIFFER in {self.n_mismatches} batches; the first:")
            lines.append(self.mismatches[0].describe())
        else:
            lines.append(f"decisions: all {self.batches} batches match the recording")
        if self.error is not None:
            lines.append(f"ERROR: {self.error}")
        if self.invalid is not None:
            lines.append(f"INVALID STATE: {self.invalid}")
        return "\n".join(lines)


def replay(
    path: str | os.PathLike[str],
    *,
    step: bool = False,
    until_batch: int | None = None,
    on_batch: BatchHook | None = None,
    validate: bool = False,
) -> ReplayResult:
    """Feed a recording through a fresh ``SchedulerState`` (or, for a recording started
    mid-run, the snapshot it starts from); see :class:`ReplayResult`.

    ``until_batch`` stops after that batch (batches count from 1).  ``step``
    enters the debugger (``breakpoint()``) before each batch, in a frame where
    ``state`` and ``events`` are at hand and ``s`` steps into
    ``handle_events``; ``on_batch`` is called before each batch.  ``validate``
    runs ``sched_core.validate_state`` after each batch and stops at the first
    that breaks an invariant.  A file that is not a valid recording raises
    :class:`~dsched._recording.RecordingError`.
    """
    # As in a scheduler process: the core frees its records by reference counting,
    # and collections walking every live task would dominate a big replay.
    collecting = gc.isenabled()
    gc.disable()
    try:
        with RecordingReader(path) as reader:
            header = reader.header
            if reader.snapshot is not None:  # a recording started mid-run
                state = load_snapshot(reader.snapshot, os.fspath(path))
            else:
                state = sc.SchedulerState(header.allowed_failures, header.max_queue_depth, header.bandwidth)
            result = ReplayResult(os.fspath(path), header, state, until_batch=until_batch)
            for record in reader:
                if until_batch is not None and record.number > until_batch:
                    break
                if not _replay_batch(result, record, step, on_batch, validate):
                    break
            else:
                result.end = reader.end
                result.truncated = reader.truncated
    finally:
        if collecting:
            gc.enable()
    return result


def _replay_batch(
    result: ReplayResult, record: BatchRecord, step: bool, on_batch: BatchHook | None, validate: bool
) -> bool:
    """Feed one batch; False to stop (the core raised, or the state is invalid)."""
    try:
        events = decode_events(record.events)
    except CodecError as exc:
        raise RecordingError(f"{result.path}: batch {record.number} does not decode: {exc}") from None
    state = result.state
    if on_batch is not None:
        on_batch(record, events, state)
    try:
        instructions = _feed(state, events, step)
    except Exception as exc:
        result.batches += 1
        result.events += len(events)
        as_recorded = f" (when recorded it raised {record.error})" if record.error is not None else ""
        result.error = f"batch {record.number}: the core raised {type(exc).__name__}: {exc}{as_recorded}"
        result.exception = exc
        return False
    result.batches += 1
    result.events += len(events)
    result.instructions += len(instructions)
    note = "the core raised here when recorded" if record.error is not None else ""
    if note or len(instructions) != record.n_instructions or decisions_digest(instructions) != record.digest:
        result.n_mismatches += 1
        if len(result.mismatches) < MAX_DETAILED:
            mismatch = Mismatch(
                record.number, record.n_instructions, len(instructions), record.decisions, brief_rows(instructions), note
            )
            result.mismatches.append(mismatch)
    if validate:
        try:
            sc.validate_state(state)
        except AssertionError as exc:
            result.invalid = f"after batch {record.number}: {exc}"
            return False
    return True


def _feed(state: sc.SchedulerState, events: list[sc.SchedulerEvent], step: bool) -> list[sc.Instruction]:
    if step:
        # Stepping: `p events` shows the batch, `s` (twice) steps into the core.
        breakpoint()
    return state.handle_events(events)


# -- comparing states ----------------------------------------------------------------


def state_snapshot(state: sc.SchedulerState) -> dict[str, Any]:
    """The state as plain data: every task, worker and client, the queue and the counters."""
    tasks: dict[str, Any] = {}
    for key, ts in state.tasks.items():
        tasks[key] = {
            "state": ts.state_name,
            "who_has": [ws.address for ws in ts.who_has] if ts.who_has is not None else [],
            "processing_on": ts.processing_on.address if ts.processing_on is not None else None,
            "who_wants": [cs.client_id for cs in ts.who_wants] if ts.who_wants is not None else [],
            "dependencies": [dep.key for dep in ts.dependencies],
            "priority": ts.priority,
            "run_id": ts.run_id,
            "nbytes": ts.nbytes,
            "retries": ts.retries,
            "suspicious": ts.suspicious,
            "blamed": ts.exception_blame.key if ts.exception_blame is not None else None,
        }
    workers = {
        ws.address: {
            "name": ws.name,
            "nthreads": ws.nthreads,
            "processing": [ts.key for ts in ws.processing],
            "has_what": [ts.key for ts in ws.has_what],
            "nbytes": ws.nbytes,
            "occupancy": ws.occupancy,
            "capacity": ws.capacity,
            "latency": ws.latency,
        }
        for ws in state.worker_list
    }
    return {
        "tasks": tasks,
        "workers": workers,
        "clients": {cid: [ts.key for ts in cs.wants] for cid, cs in state.clients.items()},
        "queued": [ts.key for _, ts in sorted(state.queued.items())],
        "unrunnable": [ts.key for ts in state.unrunnable],
        "counters": {
            "batch": state.batch,
            "generation": state.generation,
            "total_nthreads": state.total_nthreads,
            "n_tasks_finished": state.n_tasks_finished,
            "n_tasks_erred": state.n_tasks_erred,
            "n_stale_messages": state.n_stale_messages,
            "n_recomputed": state.n_recomputed,
            "n_steal_requests": state.n_steal_requests,
            "n_steals": state.n_steals,
        },
    }


def compare_states(expected: sc.SchedulerState, actual: sc.SchedulerState, limit: int = 20) -> list[str]:
    """Differences between two states, one line each (at most ``limit``); empty when they agree."""
    a = state_snapshot(expected)
    b = state_snapshot(actual)
    out: list[str] = []
    for section in ("counters", "clients", "workers", "tasks"):
        left, right = a[section], b[section]
        for name in [*left, *(k for k in right if k not in left)]:
            if left.get(name) != right.get(name):
                out.append(f"{section}[{name!r}]: {left.get(name)!r} != {right.get(name)!r}")
                if len(out) >= limit:
                    return out
    for section in ("queued", "unrunnable"):
        if a[section] != b[section]:
            out.append(f"{section}: {a[section][:10]!r} != {b[section][:10]!r}")
    return out[:limit]
