"""High-level graph layers: declarative descriptions of many tasks, expanded here.

A client that maps a function over a million inputs should not have to build,
encode and send a million task descriptions, nor the scheduler decode them.  A
*layer* says the same thing in a few fields; :class:`LayerExpander` turns a
list of layers into ``TaskSpec`` objects, a chunk at a time, in an order in
which every task comes after its dependencies, so that the scheduler can start
the first tasks while the rest is still being expanded.

Layers are plain data: names, counts, opaque function and argument payloads.
There is no user code and no per-layer protocol here (Dask's pack/unpack
layers were dropped as brittle); every layer type below is a few lines of
arithmetic on keys.

Keys follow Dask's convention for partitioned collections: partition ``i`` of
layer ``name`` is the key ``"('name', i)"`` (``layer_key``).

Each task's ``run_spec`` is a :class:`LayerCall`: which function (an opaque
reference chosen by the runtime), how to call it (``APPLY``:
``function(*dependency values, *args)``; ``REDUCE``:
``function([dependency values])``; ``PIECES``:
``function([value[index] for each dependency value])``), the per-task opaque
``args`` payload (or None), the dependency keys in call order and, for
``PIECES``, the ``index``.
"""

from __future__ import annotations

from typing import Final

from sched_core._events import TaskSpec

APPLY: Final = 0
REDUCE: Final = 1
PIECES: Final = 2


def layer_key(name: str, index: int) -> str:
    """The key of partition ``index`` of layer ``name``: ``"('name', index)"``."""
    return "('" + name + "', " + str(index) + ")"


class LayerCall:
    """The ``run_spec`` of a task expanded from a layer (read-only)."""

    kind: int
    function: object
    args: object
    keys: list[str]
    index: int

    def __init__(self, kind: int, function: object, args: object, keys: list[str], index: int = 0) -> None:
        self.kind = kind
        self.function = function
        self.args = args
        self.keys = keys
        self.index = index

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, LayerCall)
            and self.kind == other.kind
            and self.function == other.function
            and self.args == other.args
            and self.keys == other.keys
            and self.index == other.index
        )

    def __hash__(self) -> int:
        return hash((self.kind, len(self.keys)))

    def __repr__(self) -> str:
        how = "apply" if self.kind == APPLY else "reduce" if self.kind == REDUCE else f"pieces[{self.index}]"
        return f"LayerCall({how}, {self.function!r}, deps={len(self.keys)})"


class Layer:
    """Base of every layer: ``name`` prefixes its keys; ``npartitions`` outputs."""

    name: str
    npartitions: int

    def __init__(self, name: str, npartitions: int) -> None:
        if not name:
            raise ValueError("a layer needs a name")
        if npartitions < 1:
            raise ValueError(f"layer {name!r} needs at least one partition, not {npartitions}")
        self.name = name
        self.npartitions = npartitions

    def n_tasks(self) -> int:
        return self.npartitions

    def output_key(self, index: int) -> str:
        return layer_key(self.name, index)


class MapLayer(Layer):
    """``npartitions`` tasks, each ``function`` over one partition of its inputs.

    Task ``i`` is ``function(*[partition i of each input], *args[i])``: the
    inputs are earlier layers (by name and partition count), aligned by
    partition; an input of one partition is broadcast to every task.  With no
    inputs it is a plain map over ``args`` (one opaque payload per task, which
    the runtime unpickles into the argument tuple).  ``args`` may be None (no
    extra arguments) or must have one entry per partition.

    Blockwise operations over several aligned collections are MapLayers with
    several inputs.
    """

    function: object
    args: list[object] | None
    inputs: list[str]
    input_partitions: list[int]

    def __init__(
        self,
        name: str,
        npartitions: int,
        function: object,
        args: list[object] | None = None,
        inputs: list[str] | None = None,
        input_partitions: list[int] | None = None,
    ) -> None:
        super().__init__(name, npartitions)
        self.function = function
        self.args = args
        self.inputs = inputs if inputs is not None else []
        self.input_partitions = input_partitions if input_partitions is not None else []
        if args is not None and len(args) != npartitions:
            raise ValueError(f"layer {name!r}: {len(args)} argument payloads for {npartitions} partitions")
        if len(self.inputs) != len(self.input_partitions):
            raise ValueError(f"layer {name!r}: {len(self.inputs)} inputs but {len(self.input_partitions)} partition counts")
        for i in range(len(self.inputs)):
            n = self.input_partitions[i]
            if n != 1 and n != npartitions:
                raise ValueError(
                    f"layer {name!r}: input {self.inputs[i]!r} has {n} partitions; "
                    f"it needs {npartitions} (aligned) or 1 (broadcast)"
                )

    def task(self, index: int) -> TaskSpec:
        keys: list[str] = []
        for i in range(len(self.inputs)):
            keys.append(layer_key(self.inputs[i], 0 if self.input_partitions[i] == 1 else index))
        args = self.args[index] if self.args is not None else None
        return TaskSpec(self.output_key(index), keys, LayerCall(APPLY, self.function, args, keys))


class TreeReduceLayer(Layer):
    """A tree reduction of all partitions of ``input`` to one output, ``('name', 0)``.

    ``chunk`` (optional) runs on each input partition; then ``combine`` runs
    on groups of at most ``split_every`` partial results, level after level,
    and ``aggregate`` on the last group.  ``combine`` and ``aggregate`` get a
    list of values.  Intermediate keys are ``('name-chunk', i)`` and
    ``('name-combine-<level>', j)``.
    """

    input: str
    input_partitions: int
    chunk: object
    combine: object
    aggregate: object
    split_every: int

    def __init__(
        self,
        name: str,
        input: str,
        input_partitions: int,
        combine: object,
        aggregate: object = None,
        chunk: object = None,
        split_every: int = 8,
    ) -> None:
        super().__init__(name, 1)
        if input_partitions < 1:
            raise ValueError(f"layer {name!r}: its input needs at least one partition")
        if split_every < 2:
            raise ValueError(f"layer {name!r}: split_every must be at least 2, not {split_every}")
        self.input = input
        self.input_partitions = input_partitions
        self.chunk = chunk
        self.combine = combine
        self.aggregate = aggregate if aggregate is not None else combine
        self.split_every = split_every

    def levels(self) -> list[int]:
        """Task counts per level: [chunk tasks (0 if none), combine levels..., 1 aggregate]."""
        counts = [self.input_partitions if self.chunk is not None else 0]
        n = self.input_partitions
        while n > self.split_every:
            n = (n + self.split_every - 1) // self.split_every
            counts.append(n)
        counts.append(1)
        return counts

    def n_tasks(self) -> int:
        total = 0
        for n in self.levels():
            total += n
        return total

    def tasks(self) -> list[TaskSpec]:
        """Every task, level by level (dependencies first)."""
        out: list[TaskSpec] = []
        n = self.input_partitions
        below: list[str] = []
        for i in range(n):
            below.append(layer_key(self.input, i))
        if self.chunk is not None:
            chunked: list[str] = []
            prefix = self.name + "-chunk"
            for i in range(n):
                key = layer_key(prefix, i)
                deps = [below[i]]
                out.append(TaskSpec(key, deps, LayerCall(APPLY, self.chunk, None, deps)))
                chunked.append(key)
            below = chunked
        level = 0
        split = self.split_every
        while len(below) > split:
            level += 1
            prefix = self.name + "-combine-" + str(level)
            above: list[str] = []
            for j in range((len(below) + split - 1) // split):
                deps = below[j * split : (j + 1) * split]
                key = layer_key(prefix, j)
                out.append(TaskSpec(key, deps, LayerCall(REDUCE, self.combine, None, deps)))
                above.append(key)
            below = above
        out.append(TaskSpec(self.output_key(0), below, LayerCall(REDUCE, self.aggregate, None, below)))
        return out


class ShuffleLayer(Layer):
    """All partitions of ``input`` redistributed into ``npartitions`` outputs.

    ``split`` runs on each input partition (key ``('name-split', i)``) and
    returns a sequence of ``npartitions`` pieces; output ``j`` (``('name', j)``)
    is ``combine([piece j of every split])``.  A worker fetches each split
    result once and keeps it, so the data crossing the network grows with the
    number of workers, not with the number of outputs.
    """

    input: str
    input_partitions: int
    split: object
    combine: object

    def __init__(self, name: str, input: str, input_partitions: int, npartitions: int, split: object, combine: object) -> None:
        super().__init__(name, npartitions)
        if input_partitions < 1:
            raise ValueError(f"layer {name!r}: its input needs at least one partition")
        self.input = input
        self.input_partitions = input_partitions
        self.split = split
        self.combine = combine

    def n_tasks(self) -> int:
        return self.input_partitions + self.npartitions

    def tasks(self) -> list[TaskSpec]:
        out: list[TaskSpec] = []
        splits: list[str] = []
        prefix = self.name + "-split"
        for i in range(self.input_partitions):
            deps = [layer_key(self.input, i)]
            key = layer_key(prefix, i)
            out.append(TaskSpec(key, deps, LayerCall(APPLY, self.split, None, deps)))
            splits.append(key)
        for j in range(self.npartitions):
            out.append(TaskSpec(self.output_key(j), splits, LayerCall(PIECES, self.combine, None, splits, j)))
        return out


class TasksLayer(Layer):
    """Explicit tasks, for everything no other layer describes; outputs are its tasks."""

    specs: list[TaskSpec]

    def __init__(self, name: str, specs: list[TaskSpec]) -> None:
        super().__init__(name, max(1, len(specs)))
        self.specs = specs

    def n_tasks(self) -> int:
        return len(self.specs)


class LayerExpander:
    """Expands layers (given dependencies first) into ``TaskSpec`` chunks on demand.

    ``next_chunk(limit)`` returns up to ``limit`` tasks (at least one while any
    remain), each after its dependencies; ``done`` says whether all are out.
    A layer that refers to an input layer not given earlier in the list, or
    with another partition count, raises ``ValueError`` at construction, before
    anything is expanded.

    What a submitter must hold between chunks, so that nothing a later chunk
    needs is forgotten meanwhile: ``spans`` says which layer each task of the
    last chunk came from (``(layer index, count)`` runs, in order);
    ``needs_hold[i]`` whether layer ``i``'s tasks are needed by tasks that may
    come in later chunks (it has readers, or its tasks depend on each other);
    and once ``layers_done`` exceeds ``release_after[i]``, every task that
    needs them has been emitted.
    """

    layers: list[Layer]
    total: int
    emitted: int
    needs_hold: list[bool]
    release_after: list[int]
    spans: list[tuple[int, int]]
    _layer: int
    _index: int
    _pending: list[TaskSpec]

    def __init__(self, layers: list[Layer], known_partitions: dict[str, int] | None = None) -> None:
        seen: dict[str, int] = dict(known_partitions) if known_partitions is not None else {}
        position: dict[str, int] = {}
        needs_hold: list[bool] = []
        release_after: list[int] = []
        total = 0
        for here in range(len(layers)):
            layer = layers[here]
            if layer.name in seen:
                raise ValueError(f"layer {layer.name!r} is defined twice")
            reads: list[str] = []
            if isinstance(layer, MapLayer):
                for i in range(len(layer.inputs)):
                    _check_input(layer.name, layer.inputs[i], layer.input_partitions[i], seen)
                reads = layer.inputs
            elif isinstance(layer, (TreeReduceLayer, ShuffleLayer)):
                _check_input(layer.name, layer.input, layer.input_partitions, seen)
                reads = [layer.input]
            for name in reads:
                source = position.get(name, -1)
                if source >= 0:  # else a layer known from an earlier submission
                    needs_hold[source] = True
                    release_after[source] = here
            seen[layer.name] = layer.npartitions
            position[layer.name] = here
            needs_hold.append(not isinstance(layer, MapLayer))  # tree levels, shuffle pieces, explicit tasks
            release_after.append(here)
            total += layer.n_tasks()
        self.layers = layers
        self.total = total
        self.emitted = 0
        self.needs_hold = needs_hold
        self.release_after = release_after
        self.spans = []
        self._layer = 0
        self._index = 0
        self._pending = []

    @property
    def done(self) -> bool:
        return self.emitted >= self.total

    @property
    def layers_done(self) -> int:
        """How many layers (from the first) have had all their tasks emitted."""
        return self._layer

    def next_chunk(self, limit: int) -> list[TaskSpec]:
        out: list[TaskSpec] = []
        spans: list[tuple[int, int]] = []
        if limit < 1:
            limit = 1
        while len(out) < limit and self._layer < len(self.layers):
            before = len(out)
            current = self._layer
            self._fill(out, limit)
            if len(out) > before:
                if spans and spans[-1][0] == current:
                    spans[-1] = (current, spans[-1][1] + len(out) - before)
                else:
                    spans.append((current, len(out) - before))
        self.spans = spans
        self.emitted += len(out)
        return out

    def _fill(self, out: list[TaskSpec], limit: int) -> None:
        """Tasks of the current layer into ``out``, up to ``limit`` in all; moves to the next layer when it is out."""
        if self._pending:
            take = limit - len(out)
            out.extend(self._pending[:take])
            self._pending = self._pending[take:]
            if not self._pending:
                self._layer += 1
            return
        layer = self.layers[self._layer]
        if isinstance(layer, MapLayer):
            stop = layer.npartitions
            index = self._index
            while index < stop and len(out) < limit:
                out.append(layer.task(index))
                index += 1
            self._index = index
            if index >= stop:
                self._layer += 1
                self._index = 0
        elif isinstance(layer, (TreeReduceLayer, ShuffleLayer)):
            self._pending = layer.tasks()
        elif isinstance(layer, TasksLayer):
            if layer.specs:
                self._pending = list(layer.specs)
            else:
                self._layer += 1
        else:
            raise TypeError(f"unknown layer type {type(layer).__name__}")


def _check_input(name: str, input: str, partitions: int, seen: dict[str, int]) -> None:
    known = seen.get(input, -1)
    if known < 0:
        raise ValueError(f"layer {name!r} reads layer {input!r}, which is not defined before it")
    if known != partitions:
        raise ValueError(f"layer {name!r} expects {partitions} partitions of {input!r}, which has {known}")
