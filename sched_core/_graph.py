"""Validating and ordering a submitted graph.

A submission is checked as a whole before the scheduler's state changes:
unknown dependencies, cycles and keys redefined differently are refused.  The
same depth-first walk that finds cycles also gives the static priorities.

Ordering: a post-order depth-first walk from the graph's outputs, outputs in
submission order, dependencies in their listed order.  Every output's inputs are
thus computed together and right before it, so a reduction consumes its inputs
soon after they are made, keeping few intermediate results in memory (the goal
of dask.order, in a much simpler form).  Independent tasks keep submission
order.
"""

from __future__ import annotations

from typing import Final

from sched_core._events import TaskSpec
from sched_core._model import NO_DEPENDENCIES, TaskGroup, TaskState

# Before ordering, a new task's priority encodes its index in the submission
# as ``UNSEEN - index`` (so any value <= UNSEEN means "not yet visited"); the
# walk marks tasks on its stack with ON_STACK and then gives each its order >= 0.
ON_STACK: Final = -1
UNSEEN: Final = -2

# A cycle or a list of missing keys is named in full up to this many keys.
MAX_KEYS_IN_MESSAGE: Final = 20


class GraphError:
    """Why a submission was refused; see :class:`sched_core.ClientError`."""

    kind: str
    message: str
    keys: list[str]

    def __init__(self, kind: str, message: str, keys: list[str]) -> None:
        self.kind = kind
        self.message = message
        self.keys = keys

    def __repr__(self) -> str:
        return f"<GraphError {self.kind}: {self.message}>"


class NewTasks:
    """The tasks a submission adds, in submission order, with their specs."""

    tasks: list[TaskState]
    specs: list[TaskSpec]
    wanted: list[TaskState]  # the tasks the client asked to hold, resolved
    # Indices (in ``tasks``) of the tasks that have dependencies: the passes
    # over edges skip the rest, which on a big map is every task.
    with_dependencies: list[int]

    def __init__(self) -> None:
        self.tasks = []
        self.specs = []
        self.wanted = []
        self.with_dependencies = []


def parse_submission(
    specs: list[TaskSpec], wanted: list[str], tasks: dict[str, TaskState], unregistered: TaskGroup
) -> NewTasks | GraphError:
    """Create the submission's new tasks, linked and ordered.

    New tasks are inserted into ``tasks`` straight away (one dict operation per
    key instead of a second dict of new keys); if the submission is refused
    they are removed again, so on error ``tasks`` is as it was.  New tasks get
    ``unregistered`` as their group (the caller registers them) and their order
    index as ``priority``.  Edges to already known tasks are linked both ways
    (and unlinked again on error).
    """
    result = NewTasks()
    error = _create_tasks(specs, tasks, unregistered, result)
    if error is None:
        error = _link_dependencies(tasks, unregistered, result)
    if error is None:
        for key in wanted:
            wanted_task = tasks.get(key)
            if wanted_task is not None:
                result.wanted.append(wanted_task)
            else:
                error = GraphError(
                    "unknown-key",
                    f"wanted key {key!r} is neither in the graph nor known to the scheduler",
                    [key],
                )
                break
    if error is None and result.with_dependencies:
        cycle = _order(result.tasks, unregistered)
        if cycle is not None:
            shown_keys = cycle if len(cycle) <= MAX_KEYS_IN_MESSAGE else cycle[:MAX_KEYS_IN_MESSAGE] + ["..."]
            error = GraphError(
                "cycle",
                "graph has a cycle: " + " -> ".join(shown_keys) + " (each depends on the next)",
                cycle,
            )
    if error is not None:
        _unlink_known_dependencies(result.tasks, unregistered)
        for ts in result.tasks:
            del tasks[ts.key]
            # Break the links among the discarded tasks: no cycles left to the GC.
            ts.dependencies = NO_DEPENDENCIES
            ts.dependents = None
        return error
    return result


def _create_tasks(
    specs: list[TaskSpec], tasks: dict[str, TaskState], unregistered: TaskGroup, result: NewTasks
) -> GraphError | None:
    for spec in specs:
        key = spec.key
        existing = tasks.get(key)
        if existing is None:
            index = len(result.tasks)
            ts = TaskState(key, spec.run_spec, unregistered, UNSEEN - index)
            tasks[key] = ts
            result.tasks.append(ts)
            result.specs.append(spec)
            if spec.dependencies:
                result.with_dependencies.append(index)
        elif existing.group is unregistered:
            # A key listed twice in one submission must be defined the same way.
            twin = result.specs[UNSEEN - existing.priority]
            if twin.run_spec != spec.run_spec or twin.dependencies != spec.dependencies:
                return _conflict(key)
        elif not _same_definition(existing, spec):
            return _conflict(key)
    return None


def _link_dependencies(tasks: dict[str, TaskState], unregistered: TaskGroup, result: NewTasks) -> GraphError | None:
    missing: list[str] = []
    for i in result.with_dependencies:
        ts = result.tasks[i]
        dep_keys = result.specs[i].dependencies
        deps: list[TaskState] = []
        for dep_key in dep_keys:
            dep = tasks.get(dep_key)
            if dep is None:
                missing.append(dep_key)
                continue
            dependents = dep.dependents
            if dependents is None:
                dep.dependents = [ts]
            elif dependents and dependents[len(dependents) - 1] is ts:
                # Listed twice (f(x, x)): one edge.  Every edge counts towards
                # n_waiting and n_dependents, so a second one would make ts ready
                # twice.  A duplicate is always this task's last link to ``dep``.
                continue
            else:
                dependents.append(ts)
            dep.n_dependents += 1
            deps.append(dep)
        ts.dependencies = deps
    if not missing:
        return None
    shown = ", ".join(repr(k) for k in missing[:MAX_KEYS_IN_MESSAGE])
    more = f" and {len(missing) - MAX_KEYS_IN_MESSAGE} more" if len(missing) > MAX_KEYS_IN_MESSAGE else ""
    return GraphError(
        "missing-dependency",
        f"graph depends on keys that are neither in the graph nor known to the scheduler: {shown}{more}",
        missing,
    )


def graph_order(ts: TaskState) -> int:
    """A new task's position in the submission's order (valid after parsing).

    A submission without edges is not walked: its order is submission order,
    still encoded in ``priority`` as ``UNSEEN - index``.
    """
    priority = ts.priority
    return priority if priority >= 0 else UNSEEN - priority


def _unlink_known_dependencies(new_tasks: list[TaskState], unregistered: TaskGroup) -> None:
    # Undo the links to already known tasks, last first, so each pop removes
    # exactly the entry its task appended.
    for i in range(len(new_tasks) - 1, -1, -1):
        ts = new_tasks[i]
        deps = ts.dependencies
        for j in range(len(deps) - 1, -1, -1):
            dep = deps[j]
            if dep.group is not unregistered:
                dependents = dep.dependents
                if dependents is not None and dependents and dependents[-1] is ts:
                    dependents.pop()
                    dep.n_dependents -= 1
                    if not dependents:
                        dep.dependents = None


def _same_definition(ts: TaskState, spec: TaskSpec) -> bool:
    if ts.run_spec is None or ts.run_spec != spec.run_spec:
        return False
    deps = ts.dependencies
    spec_deps = spec.dependencies
    if len(deps) != len(spec_deps):
        # Linking kept the first of keys listed twice: compare with the same.
        spec_deps = list(dict.fromkeys(spec_deps))
        if len(deps) != len(spec_deps):
            return False
    for i in range(len(deps)):
        if deps[i].key != spec_deps[i]:
            return False
    return True


def _conflict(key: str) -> GraphError:
    return GraphError(
        "conflicting-definition",
        f"key {key!r} is already defined differently; a key names one computation, "
        "so resubmitting it must use the same function, arguments and dependencies",
        [key],
    )


def _index_of(tasks: list[TaskState], ts: TaskState) -> int:
    # Only reached for keys listed twice in one submission, which is rare.
    for i in range(len(tasks)):
        if tasks[i] is ts:
            return i
    return -1


def _order(tasks: list[TaskState], unregistered: TaskGroup) -> list[str] | None:
    """Number new tasks in post-order from the outputs; return a cycle's keys if any."""
    counter = 0
    stack: list[TaskState] = []
    positions: list[int] = []
    # Outputs first (tasks nothing in this submission depends on), then anything
    # left unvisited, which can only be in, or feed into, a cycle.
    for pass_number in range(2):
        for root in tasks:
            if root.priority > UNSEEN:
                continue
            if pass_number == 0 and root.n_dependents > 0:
                continue
            if not root.dependencies:
                root.priority = counter
                counter += 1
                continue
            root.priority = ON_STACK
            stack.append(root)
            positions.append(0)
            while stack:
                top = stack[-1]
                i = positions[-1]
                deps = top.dependencies
                if i < len(deps):
                    positions[-1] = i + 1
                    dep = deps[i]
                    if dep.group is not unregistered:
                        continue  # already known to the scheduler: not ours to order
                    p = dep.priority
                    if p <= UNSEEN:
                        dep.priority = ON_STACK
                        stack.append(dep)
                        positions.append(0)
                    elif p == ON_STACK:
                        start = _index_of(stack, dep)
                        return [t.key for t in stack[start:]] + [dep.key]
                else:
                    top.priority = counter
                    counter += 1
                    stack.pop()
                    positions.pop()
    return None
