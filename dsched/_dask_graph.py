"""Dask task graphs (the legacy tuple format and dask's task-spec objects), turned into one ``SubmitGraph``.

A graph is a dict ``{key: computation}`` (or anything with
``__dask_graph__()``, such as the expression ``dask.compute`` hands to a
scheduler).  Since 2025 dask builds computations from ``dask._task_spec``
objects: ``Task(key, func, *args, **kwargs)``, ``DataNode`` (a literal),
``Alias`` (another key's value), ``TaskRef`` (a dependency inside a task's
arguments) and the containers ``List``/``Tuple``/``Set``/``Dict`` (which are
tasks too).  Only a task's *direct* arguments are references or nested nodes
there; plain lists and dicts are literals (fused tasks carry whole inner
graphs as such literals).  Each top-level ``Task`` becomes one dsched task
whose function goes in the function table (so a function shared by 10,000
chunks is pickled once), nested nodes become worker-side ``_Task`` objects,
and a ``GraphNode`` subclass this module does not know is shipped whole and
called with its dependencies' values (correct, if less compact).  Graphs may
mix both formats (dask.dataframe still emits a few tuples).

In the legacy format a computation is a *task* - a
tuple whose first element is callable, ``(func, arg, ...)`` - or a value.
Inside a task's arguments (recursively through lists, dicts and nested tasks):

* a key of the graph (a string, or a tuple such as ``("x", 0)``) stands for
  that key's result: it becomes a :class:`~dsched._serialize.Ref`, which
  pickles as a dependency reference the worker fills in from its data;
* a nested task is evaluated on the worker before the outer call;
* anything else is a literal.

A value that is not a task is a literal too (lists and dicts in it are
searched for keys and tasks the same way); a value that is a key aliases it.

Keys on the wire are strings: a string key is itself, any other key its
``str()`` (as Dask's ``stringify`` did), plus an optional per-submission
suffix (see :class:`_Names`); results are given back under the original keys.
A key whose value is a dsched ``Future`` (a persisted collection) is not
sent: references to it name the future's key.  Only the tasks the requested keys need are sent, in an order
where every task comes after its dependencies (the scheduler ingests a large
graph in chunks, and each chunk must only depend on earlier ones).  A function
used by many tasks is pickled once (the submission's function table).  Cycles
are left for the scheduler to find and name.

The helpers that run nested tasks (:func:`run_nested`, :func:`identity`) are
module-level, so a worker unpickles them by reference from ``dsched``.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Hashable, Iterator, Mapping
from typing import Any, Final

from dsched import _protocol as p
from dsched._future import Future
from dsched._serialize import Ref
from dsched._tokenize import pickle_args, pickle_function

__all__ = ["FIRST_PART", "PARTS_MIN_SIZE", "DaskGraph", "GraphPart", "GraphPlan", "build_graph", "call_node", "graph_dict", "identity", "istask", "run_nested", "stringify"]


_spec: Any = None  # dask._task_spec once looked up; False without dask


def _task_spec() -> Any:
    """``dask._task_spec`` if dask is installed (imported on first use: dsched does not need dask)."""
    global _spec
    if _spec is None:
        # Imported in a thread of its own: importing dask keeps a traceback (dask.widgets
        # stores the ImportError of a missing jinja2), whose frames would otherwise
        # chain back to the caller's and keep its locals - the futures of the
        # first ``client.get`` - alive for good.
        found: list[Any] = []
        thread = threading.Thread(target=_import_task_spec, args=(found,), name="dsched-import-dask", daemon=True)
        thread.start()
        thread.join()
        _spec = found[0] if found else False
    return _spec or None


def _import_task_spec(found: list[Any]) -> None:
    try:
        import dask._task_spec as spec_module
    except ImportError:  # no dask: graphs can only be in the tuple format
        found.append(False)
    else:
        found.append(spec_module)


def istask(obj: object) -> bool:
    """A Dask task: a non-empty tuple whose first element is callable."""
    return type(obj) is tuple and len(obj) > 0 and callable(obj[0])


def stringify(key: Hashable) -> str:
    """A graph key as a wire key: strings as they are, anything else (tuples) as ``str(key)``."""
    return key if type(key) is str else str(key)


def identity(value: object) -> object:
    """A graph value that is not a task (a literal, or an alias of another key)."""
    return value


def call_node(node: Any, values: dict[Any, Any]) -> Any:
    """Run a task-spec node of a kind this module does not convert (``values``: its dependencies' values)."""
    return node(values)


class _Task:
    """A task nested in another task's arguments: run on the worker before the outer call."""

    __slots__ = ("args", "func", "kwargs")

    def __init__(self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any] | None = None) -> None:
        self.func = func
        self.args = args
        self.kwargs = kwargs

    def __reduce__(self) -> tuple[Any, ...]:
        return (_Task, (self.func, self.args, self.kwargs))


class _List:
    """A list holding nested tasks (plain lists are passed as they are, never walked on the worker)."""

    __slots__ = ("items",)

    def __init__(self, items: list[Any]) -> None:
        self.items = items

    def __reduce__(self) -> tuple[Any, ...]:
        return (_List, (self.items,))


class _Dict:
    """A dict holding nested tasks in its values."""

    __slots__ = ("items",)

    def __init__(self, items: dict[Any, Any]) -> None:
        self.items = items

    def __reduce__(self) -> tuple[Any, ...]:
        return (_Dict, (self.items,))


def _evaluate(obj: object) -> Any:
    kind = type(obj)
    if kind is _Task:
        task: _Task = obj  # type: ignore[assignment]
        if task.kwargs:
            kwargs = {k: _evaluate(v) for k, v in task.kwargs.items()}
            return task.func(*[_evaluate(arg) for arg in task.args], **kwargs)
        return task.func(*[_evaluate(arg) for arg in task.args])
    if kind is _List:
        return [_evaluate(item) for item in obj.items]  # type: ignore[attr-defined]
    if kind is _Dict:
        return {k: _evaluate(v) for k, v in obj.items.items()}  # type: ignore[attr-defined]
    return obj


def run_nested(func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """Call ``func`` with its arguments' nested tasks evaluated (innermost first)."""
    if kwargs:
        return func(*[_evaluate(arg) for arg in args], **{k: _evaluate(v) for k, v in kwargs.items()})
    return func(*[_evaluate(arg) for arg in args])


class _Names:
    """Graph keys -> wire keys: ``stringify(key) + suffix``, or a held Future's own key.

    ``suffix`` makes one submission's keys its own: dask may define a key
    differently from one graph to the next (its fusion depends on the whole
    graph), while dsched's scheduler refuses a second definition of a key it
    still knows.  A key whose value is a Future (a persisted collection's
    partition) is that future's key: no task is sent for it.
    """

    __slots__ = ("dsk", "names", "suffix")

    def __init__(self, dsk: Mapping[Any, Any], suffix: str) -> None:
        self.dsk = dsk
        self.suffix = suffix
        self.names: dict[Hashable, str] = {}

    def wire(self, key: Hashable) -> str:
        name = self.names.get(key)
        if name is None:
            held = _held_future(self.dsk.get(key))
            name = self.names[key] = held.key if held is not None else stringify(key) + self.suffix
        return name


def _held_future(value: object) -> Future | None:
    """The Future a graph value is (directly, or as a task-spec DataNode), if it is one."""
    if isinstance(value, Future):
        return value
    spec = _spec
    if spec and type(value) is spec.DataNode:
        inner: object = getattr(value, "value", None)
        if isinstance(inner, Future):
            return inner
    return None


class _Converter:
    """Rewrites one computation's arguments: keys -> Ref, nested tasks -> _Task."""

    __slots__ = ("dependencies", "dsk", "names", "nested")

    def __init__(self, names: _Names) -> None:
        self.names = names
        self.dsk = names.dsk
        self.dependencies: list[Hashable] = []
        self.nested = 0

    def convert(self, obj: Any) -> Any:
        kind = type(obj)
        if kind is tuple and obj and callable(obj[0]):
            self.nested += 1
            return _Task(obj[0], tuple([self.convert(arg) for arg in obj[1:]]))
        if kind is list:
            before = self.nested
            items = [self.convert(item) for item in obj]
            return _List(items) if self.nested != before else items
        if kind is dict:
            before = self.nested
            mapping = {k: self.convert(v) for k, v in obj.items()}
            return _Dict(mapping) if self.nested != before else mapping
        try:
            is_key = obj in self.dsk
        except TypeError:  # unhashable: a literal
            return obj
        if is_key:
            self.dependencies.append(obj)
            return Ref(self.names.wire(obj))
        return obj


class _NotInlined(Exception):
    """A fused task's inner graph is not a tree this module can nest (it runs as dask ships it)."""


class _Scope:
    """A fused task's inner graph, and what its inputs are bound to in the enclosing scope."""

    __slots__ = ("bindings", "inner")

    def __init__(self, inner: dict[Hashable, Any], bindings: dict[Hashable, Any]) -> None:
        self.inner = inner
        self.bindings = bindings


class _SpecConverter:
    """Rewrites a task-spec node's direct arguments: TaskRef/Alias -> Ref, nested nodes -> _Task.

    A task dask fused (``Task(key, _execute_subgraph, inner_graph, outkey,
    inkeys, *dependencies)``, run as ``execute_graph(inner_graph + {inkey:
    dependency value})[outkey]``) becomes its output task, with every inner
    key it refers to nested in place, when each inner key is used once (dask
    fuses linear chains and blockwise operations, so it almost always is; the
    diagonal blocks of ``x + x.T`` are not).  Fused tasks may hold fused
    tasks: each inner graph is a scope whose inputs are bound to nodes of the
    enclosing scope.  Run as shipped, ``_execute_subgraph`` orders its few
    inner tasks with ``dask.order`` every time it runs, which costs more than
    most array chunks' own work; nested, it is a few calls.
    """

    __slots__ = ("dependencies", "dsk", "inlined", "names", "nest_fused", "nested", "scopes", "spec")

    def __init__(self, spec: Any, names: _Names, nest_fused: bool = True) -> None:
        self.spec = spec
        self.nest_fused = nest_fused
        self.names = names
        self.dsk = names.dsk
        self.dependencies: list[Hashable] = []
        self.nested = 0
        self.scopes: list[_Scope] = []  # the fused tasks being nested, innermost last
        self.inlined: set[tuple[int, Hashable]] = set()  # (id of an inner graph, key) nested so far

    def ref(self, key: Hashable) -> Any:
        """A reference to ``key``: nested in place if it is an inner key of a fused task; followed
        only if the graph has it (else it is held on the cluster)."""
        scopes = self.scopes
        for depth in range(len(scopes) - 1, -1, -1):
            scope = scopes[depth]
            if key in scope.inner:
                seen = (id(scope.inner), key)
                if seen in self.inlined:
                    raise _NotInlined(key)  # used twice: nesting would run it twice
                self.inlined.add(seen)
                return self.convert(scope.inner[key])
            if key in scope.bindings:
                self.scopes = scopes[:depth]  # the input's node means what it means outside
                try:
                    return self.convert(scope.bindings[key])
                finally:
                    self.scopes = scopes
        if key in self.dsk:
            self.dependencies.append(key)
            return Ref(self.names.wire(key))
        return Ref(stringify(key))

    def convert(self, obj: Any) -> Any:
        spec = self.spec
        if isinstance(obj, spec.TaskRef):
            return self.ref(obj.key)
        if not isinstance(obj, spec.GraphNode):
            return obj  # a literal: task-spec never looks inside plain containers
        kind = type(obj)
        if kind is spec.DataNode:
            return obj.value
        if kind is spec.Alias:
            return self.ref(obj.target)
        if kind is spec.Task and self.nest_fused and obj.func is spec._execute_subgraph:
            depth = len(self.scopes)
            output = self._fused_output(obj)
            if output is not None:
                try:
                    return self.convert(output)
                finally:
                    del self.scopes[depth:]
        self.nested += 1
        if kind is spec.Task or isinstance(obj, spec.NestedContainer):
            args = tuple([self.convert(arg) for arg in obj.args])
            kwargs = {k: self.convert(v) for k, v in obj.kwargs.items()} if obj.kwargs else None
            return _Task(obj.func, args, kwargs)
        if self.scopes:
            raise _NotInlined(obj)  # its dependencies reach it as a plain dict, which nesting cannot fill
        return _Task(call_node, (obj, {dep: self.ref(dep) for dep in obj.dependencies}))

    def top(self, node: Any) -> _Converted:
        """The dsched task for the graph's node ``node`` (raises ``_NotInlined`` if it is a fused
        task whose inner graph cannot be nested: convert it again with ``nest_fused=False``)."""
        spec = self.spec
        while self.nest_fused and type(node) is spec.Task and node.func is spec._execute_subgraph:
            output = self._fused_output(node)
            if output is None:
                break
            node = output
        return self._task(node)

    def _fused_output(self, node: Any) -> Any:
        """The output task of a fused task, its inner graph pushed as a scope (None: another shape)."""
        args = node.args
        if node.kwargs or len(args) < 3:
            return None
        inner, outkey, inkeys = args[0], args[1], args[2]
        if type(inner) is not dict or type(inkeys) is not tuple or len(args) != 3 + len(inkeys):
            return None
        if any(inkey in inner for inkey in inkeys):
            return None
        output = inner.get(outkey)
        if not isinstance(output, self.spec.GraphNode):
            return None
        self.scopes.append(_Scope(inner, dict(zip(inkeys, args[3:]))))
        self.inlined.add((id(inner), outkey))
        return output

    def _task(self, node: Any) -> _Converted:
        spec = self.spec
        kind = type(node)
        kwargs: dict[str, Any] | None = None
        if kind is spec.DataNode:
            func: Callable[..., Any] = identity
            args: tuple[Any, ...] = (node.value,)
        elif kind is spec.Alias:
            func, args = identity, (self.ref(node.target),)
        elif kind is spec.Task or isinstance(node, spec.NestedContainer):
            func = node.func
            args = tuple([self.convert(arg) for arg in node.args])
            kwargs = {k: self.convert(v) for k, v in node.kwargs.items()} if node.kwargs else None
        else:
            func, args = call_node, (node, {dep: self.ref(dep) for dep in node.dependencies})
        if self.nested:
            return _Converted(run_nested, (func, *args), kwargs, self.dependencies)
        return _Converted(func, args, kwargs, self.dependencies)


class _Converted:
    __slots__ = ("args", "dependencies", "function", "kwargs")

    def __init__(
        self,
        function: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any] | None,
        dependencies: list[Hashable],
    ) -> None:
        self.function = function
        self.args = args
        self.kwargs = kwargs
        self.dependencies = dependencies


_HELD = _Converted(identity, (), None, [])  # a key whose value the cluster holds: no task to send


def _convert(names: _Names, key: Hashable) -> _Converted:
    value = names.dsk[key]
    if _held_future(value) is not None:
        return _HELD
    spec = _task_spec()
    if spec is not None and isinstance(value, spec.GraphNode):
        try:
            return _SpecConverter(spec, names).top(value)
        except _NotInlined:
            return _SpecConverter(spec, names, nest_fused=False).top(value)
    converter = _Converter(names)
    if istask(value):
        func: Callable[..., Any] = value[0]
        args = tuple([converter.convert(arg) for arg in value[1:]])
    else:
        func = identity
        args = (converter.convert(value),)
    if converter.nested:
        return _Converted(run_nested, (func, *args), None, converter.dependencies)
    return _Converted(func, args, None, converter.dependencies)


def _flatten(keys: Any) -> Iterator[Hashable]:
    if type(keys) is list:
        for item in keys:
            yield from _flatten(item)
    else:
        yield keys


def _post_order(names: _Names, roots: list[Hashable]) -> Iterator[tuple[Hashable, _Converted]]:
    """The computations the roots need, each after its dependencies (a back edge of a cycle is
    skipped), converted as the walk reaches them."""
    done: set[Hashable] = set()
    visiting: set[Hashable] = set()
    for root in roots:
        if root in done or root in visiting:
            continue
        converted = _convert(names, root)
        visiting.add(root)
        stack: list[tuple[Hashable, _Converted, Iterator[Hashable]]] = [
            (root, converted, iter(converted.dependencies))
        ]
        while stack:
            key, conv, deps = stack[-1]
            for dep in deps:
                if dep not in done and dep not in visiting:
                    dep_conv = _convert(names, dep)
                    visiting.add(dep)
                    stack.append((dep, dep_conv, iter(dep_conv.dependencies)))
                    break
            else:
                stack.pop()
                visiting.discard(key)
                done.add(key)
                yield key, conv


class DaskGraph:
    """A graph ready to submit: the function table, the tasks (dependencies first), the wanted keys."""

    __slots__ = ("functions", "keys", "names", "tasks", "wanted")

    def __init__(
        self, functions: list[bytes], tasks: list[p.GraphTask], wanted: list[str], keys: Any, names: dict[Any, str]
    ) -> None:
        self.functions = functions
        self.tasks = tasks
        self.wanted = wanted
        self.keys = keys
        self.names = names

    def nest(self, values: Mapping[str, Any]) -> Any:
        """``values`` (by wire key) arranged as the requested keys were nested."""
        return _nest(self.keys, values, self.names)


def _nest(keys: Any, values: Mapping[str, Any], names: dict[Any, str]) -> Any:
    if type(keys) is list:
        return [_nest(k, values, names) for k in keys]
    return values[names[keys]]


def graph_dict(dsk: Any) -> Mapping[Any, Any]:
    """The ``{key: computation}`` mapping of a graph, a HighLevelGraph or a dask expression."""
    if type(dsk) is dict:
        return dsk
    if not isinstance(dsk, Mapping) and hasattr(dsk, "__dask_graph__"):
        dsk = dsk.__dask_graph__()
    to_dict = getattr(dsk, "to_dict", None)  # a HighLevelGraph: one flat dict, not a lookup per layer
    if callable(to_dict):
        flat: Mapping[Any, Any] = to_dict()
        return flat
    if not isinstance(dsk, Mapping):
        raise TypeError(f"a task graph must be a mapping, not {type(dsk).__name__}")
    return dsk


# A graph of at least this many computations goes out in parts (dsched's client), the
# first of this many tasks: enough to keep the workers busy while the next is pickled.
PARTS_MIN_SIZE: Final = 5_000
FIRST_PART: Final = 2_000


class GraphPart:
    """Tasks of a graph to submit in one message (dependencies first), with the functions they use."""

    __slots__ = ("functions", "tasks")

    def __init__(self, functions: list[bytes], tasks: list[p.GraphTask]) -> None:
        self.functions = functions
        self.tasks = tasks


class GraphPlan:
    """A graph being converted: the wanted keys at once, the tasks part by part (:meth:`parts`).

    A big graph can then go out while the rest is still being converted and
    pickled, so the cluster starts on it early.  A part refers to keys of
    earlier parts, which its submitter must hold until the last part is in
    (dsched's client does).  Each part carries the functions its tasks use:
    a function shared by many tasks is pickled once and sent once per part
    that uses it (parts grow geometrically, so a handful of times at most).
    """

    def __init__(
        self,
        dsk: Mapping[Any, Any],
        keys: Any,
        *,
        priority: int = 0,
        retries: int = 0,
        resources: dict[str, float] | None = None,
        workers: list[str] | None = None,
        allow_other_workers: bool = False,
        suffix: str = "",
    ) -> None:
        dsk = graph_dict(dsk)
        roots = list(dict.fromkeys(_flatten(keys)))
        for root in roots:
            try:
                known = root in dsk
            except TypeError:
                known = False
            if not known:
                raise KeyError(f"{root!r} is not a key of the graph")
        self.keys = keys
        self.size = len(dsk)  # computations in the graph (the roots may need fewer)
        self._roots = roots
        self._names = _Names(dsk, suffix)
        self.wanted = [self._names.wire(k) for k in roots]
        self.names = self._names.names
        self._options = (priority, retries, workers, resources, allow_other_workers)

    def nest(self, values: Mapping[str, Any]) -> Any:
        """``values`` (by wire key) arranged as the requested keys were nested."""
        return _nest(self.keys, values, self.names)

    def parts(self, first: int, growth: int = 4) -> Iterator[GraphPart]:
        """The tasks in parts of ``first``, ``first * growth``, ... tasks (the last one may be smaller)."""
        priority, retries, workers, resources, allow_other_workers = self._options
        names = self._names
        pickled: dict[int, bytes] = {}  # id(function) -> its pickle
        keep_alive: list[Callable[..., Any]] = []  # ids stay unique while the plan lives
        GraphTask = p.GraphTask
        size = max(1, first)
        yielded = False
        functions: list[bytes] = []
        index_of: dict[bytes, int] = {}  # this part's table (equal pickles share an entry)
        tasks: list[p.GraphTask] = []
        for key, conv in _post_order(names, self._roots):
            if conv is _HELD:
                continue
            func = conv.function
            data = pickled.get(id(func))
            if data is None:
                data = pickled[id(func)] = pickle_function(func).data
                keep_alive.append(func)
            index = index_of.setdefault(data, len(functions))
            if index == len(functions):
                functions.append(data)
            payload, deps = pickle_args(conv.args, conv.kwargs)
            tasks.append(
                GraphTask(names.wire(key), deps, index, payload, priority, retries, workers, resources, allow_other_workers)
            )
            if len(tasks) >= size:
                yield GraphPart(functions, tasks)
                yielded = True
                functions, index_of, tasks = [], {}, []
                size *= growth
        if tasks or not yielded:
            yield GraphPart(functions, tasks)


def build_graph(dsk: Mapping[Any, Any], keys: Any, **options: Any) -> DaskGraph:
    """Convert the part of ``dsk`` that ``keys`` (a key or nested lists of keys) need, in one part.

    ``options``: those of :class:`GraphPlan`; ``suffix`` is appended to every
    wire key (see :class:`_Names`).
    """
    plan = GraphPlan(dsk, keys, **options)
    (part,) = plan.parts(first=sys.maxsize)
    return DaskGraph(part.functions, part.tasks, plan.wanted, keys, plan.names)
