"""Dask's tuple-format task graphs, turned into one ``SubmitGraph``.

A graph is a dict ``{key: computation}``.  A computation is a *task* - a
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
``str()`` (as Dask's ``stringify`` did), and results are given back under the
original keys.  Only the tasks the requested keys need are sent, in an order
where every task comes after its dependencies (the scheduler ingests a large
graph in chunks, and each chunk must only depend on earlier ones).  A function
used by many tasks is pickled once (the submission's function table).  Cycles
are left for the scheduler to find and name.

The helpers that run nested tasks (:func:`run_nested`, :func:`identity`) are
module-level, so a worker unpickles them by reference from ``dsched``.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Mapping
from typing import Any

from dsched import _protocol as p
from dsched._serialize import Ref
from dsched._tokenize import pickle_args, pickle_function

__all__ = ["DaskGraph", "build_graph", "identity", "istask", "run_nested", "stringify"]


def istask(obj: object) -> bool:
    """A Dask task: a non-empty tuple whose first element is callable."""
    return type(obj) is tuple and len(obj) > 0 and callable(obj[0])


def stringify(key: Hashable) -> str:
    """A graph key as a wire key: strings as they are, anything else (tuples) as ``str(key)``."""
    return key if type(key) is str else str(key)


def identity(value: object) -> object:
    """A graph value that is not a task (a literal, or an alias of another key)."""
    return value


class _Task:
    """A task nested in another task's arguments: run on the worker before the outer call."""

    __slots__ = ("args", "func")

    def __init__(self, func: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.func = func
        self.args = args

    def __reduce__(self) -> tuple[Any, ...]:
        return (_Task, (self.func, self.args))


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
        return task.func(*[_evaluate(arg) for arg in task.args])
    if kind is _List:
        return [_evaluate(item) for item in obj.items]  # type: ignore[attr-defined]
    if kind is _Dict:
        return {k: _evaluate(v) for k, v in obj.items.items()}  # type: ignore[attr-defined]
    return obj


def run_nested(func: Callable[..., Any], *args: Any) -> Any:
    """Call ``func`` with its arguments' nested tasks evaluated (innermost first)."""
    return func(*[_evaluate(arg) for arg in args])


class _Converter:
    """Rewrites one computation's arguments: keys -> Ref, nested tasks -> _Task."""

    __slots__ = ("dependencies", "dsk", "nested")

    def __init__(self, dsk: Mapping[Any, Any]) -> None:
        self.dsk = dsk
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
            return Ref(stringify(obj))
        return obj


class _Converted:
    __slots__ = ("args", "dependencies", "function")

    def __init__(self, function: Callable[..., Any], args: tuple[Any, ...], dependencies: list[Hashable]) -> None:
        self.function = function
        self.args = args
        self.dependencies = dependencies


def _convert(dsk: Mapping[Any, Any], key: Hashable) -> _Converted:
    value = dsk[key]
    converter = _Converter(dsk)
    if istask(value):
        func: Callable[..., Any] = value[0]
        args = tuple([converter.convert(arg) for arg in value[1:]])
    else:
        func = identity
        args = (converter.convert(value),)
    if converter.nested:
        return _Converted(run_nested, (func, *args), converter.dependencies)
    return _Converted(func, args, converter.dependencies)


def _flatten(keys: Any) -> Iterator[Hashable]:
    if type(keys) is list:
        for item in keys:
            yield from _flatten(item)
    else:
        yield keys


def _post_order(dsk: Mapping[Any, Any], roots: list[Hashable]) -> list[tuple[Hashable, _Converted]]:
    """The computations the roots need, each after its dependencies (a back edge of a cycle is skipped)."""
    done: dict[Hashable, _Converted] = {}
    visiting: set[Hashable] = set()
    order: list[tuple[Hashable, _Converted]] = []
    for root in roots:
        if root in done or root in visiting:
            continue
        converted = _convert(dsk, root)
        visiting.add(root)
        stack: list[tuple[Hashable, _Converted, Iterator[Hashable]]] = [
            (root, converted, iter(converted.dependencies))
        ]
        while stack:
            key, conv, deps = stack[-1]
            for dep in deps:
                if dep not in done and dep not in visiting:
                    dep_conv = _convert(dsk, dep)
                    visiting.add(dep)
                    stack.append((dep, dep_conv, iter(dep_conv.dependencies)))
                    break
            else:
                stack.pop()
                visiting.discard(key)
                done[key] = conv
                order.append((key, conv))
    return order


class DaskGraph:
    """A graph ready to submit: the function table, the tasks (dependencies first), the wanted keys."""

    __slots__ = ("functions", "keys", "tasks", "wanted")

    def __init__(self, functions: list[bytes], tasks: list[p.GraphTask], wanted: list[str], keys: Any) -> None:
        self.functions = functions
        self.tasks = tasks
        self.wanted = wanted
        self.keys = keys

    def nest(self, values: Mapping[str, Any]) -> Any:
        """``values`` (by wire key) arranged as the requested keys were nested."""
        return _nest(self.keys, values)


def _nest(keys: Any, values: Mapping[str, Any]) -> Any:
    if type(keys) is list:
        return [_nest(k, values) for k in keys]
    return values[stringify(keys)]


def build_graph(
    dsk: Mapping[Any, Any],
    keys: Any,
    *,
    priority: int = 0,
    retries: int = 0,
    resources: dict[str, float] | None = None,
    workers: list[str] | None = None,
    allow_other_workers: bool = False,
) -> DaskGraph:
    """Convert the part of ``dsk`` that ``keys`` (a key or nested lists of keys) need."""
    roots = list(dict.fromkeys(_flatten(keys)))
    for root in roots:
        try:
            known = root in dsk
        except TypeError:
            known = False
        if not known:
            raise KeyError(f"{root!r} is not a key of the graph")
    function_index: dict[int, int] = {}
    functions: list[bytes] = []
    keep_alive: list[Callable[..., Any]] = []
    tasks: list[p.GraphTask] = []
    GraphTask = p.GraphTask
    for key, conv in _post_order(dsk, roots):
        func = conv.function
        index = function_index.get(id(func))
        if index is None:
            index = function_index[id(func)] = len(functions)
            functions.append(pickle_function(func).data)
            keep_alive.append(func)  # ids stay unique while the table is built
        payload, deps = pickle_args(conv.args, None)
        tasks.append(
            GraphTask(stringify(key), deps, index, payload, priority, retries, workers, resources, allow_other_workers)
        )
    return DaskGraph(functions, tasks, [stringify(k) for k in roots], keys)
