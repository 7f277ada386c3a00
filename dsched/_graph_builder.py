"""Building high-level graphs on the client: a few layers instead of many tasks.

::

    from dsched import graph

    g = graph.Graph()
    xs = g.map(load, range(1_000_000))          # one layer, a million partitions
    ys = g.blockwise(clean, xs)                 # partition i of ys = clean(partition i of xs)
    total = g.tree_reduce(ys, combine=sum)      # one partition
    [total_future] = client.compute_graph(g, total)

Each call adds one *layer* (plain data: a name, a partition count, a function
pickled once, per-partition arguments pickled compactly) and returns a
:class:`Collection` naming it.  ``client.compute_graph`` sends the layers in
one ``SubmitLayers`` message; the scheduler expands them into tasks inside its
compiled core, a chunk per loop tick, so the first tasks start while the rest
is still being expanded.  Partition ``i`` of a collection is the key
``"('name', i)"``, as in Dask.
"""

from __future__ import annotations

import pickle
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import cloudpickle

from dsched import _protocol as p
from dsched._tokenize import funcname

__all__ = ["Collection", "Graph"]

_PROTOCOL = 5


class Collection:
    """``npartitions`` results of one layer of a :class:`Graph`."""

    __slots__ = ("graph", "name", "npartitions")

    def __init__(self, graph: Graph, name: str, npartitions: int) -> None:
        self.graph = graph
        self.name = name
        self.npartitions = npartitions

    def keys(self) -> list[str]:
        return [f"('{self.name}', {i})" for i in range(self.npartitions)]

    def __repr__(self) -> str:
        return f"<Collection {self.name!r} npartitions={self.npartitions}>"


class Graph:
    """An ordered list of layers (each added after the layers it reads)."""

    def __init__(self) -> None:
        self.functions: list[bytes] = []
        self._function_index: dict[bytes, int] = {}
        self.maps: list[p.MapLayerSpec] = []
        self.reductions: list[p.TreeReduceLayerSpec] = []
        self.shuffles: list[p.ShuffleLayerSpec] = []
        self.order: list[tuple[int, int]] = []
        self._names: set[str] = set()

    def _function(self, func: Callable[..., Any]) -> int:
        if not callable(func):
            raise TypeError(f"a layer needs a callable, not {type(func).__name__}")
        data = cloudpickle.dumps(func, protocol=_PROTOCOL)
        index = self._function_index.get(data)
        if index is None:
            index = self._function_index[data] = len(self.functions)
            self.functions.append(data)
        return index

    def _name(self, func: Callable[..., Any], name: str | None) -> str:
        name = name or f"{funcname(func)}-{uuid.uuid4().hex}"
        if name in self._names or "'" in name:
            raise ValueError(f"layer name {name!r} is taken or contains a quote")
        self._names.add(name)
        return name

    def _own(self, collection: Collection) -> Collection:
        if collection.graph is not self:
            raise ValueError(f"{collection!r} belongs to another graph")
        return collection

    def map(self, func: Callable[..., Any], *iterables: Iterable[Any], name: str | None = None) -> Collection:
        """Partition ``i`` is ``func(*(it[i] for it in iterables))``: one layer, arguments pickled per partition."""
        if not iterables:
            raise TypeError("map needs at least one iterable of arguments")
        args = [pickle.dumps(tuple(row), protocol=_PROTOCOL) for row in zip(*iterables)]
        if not args:
            raise ValueError("map needs at least one element")
        layer = p.MapLayerSpec(self._name(func, name), len(args), self._function(func), args)
        self.order.append((0, len(self.maps)))
        self.maps.append(layer)
        return Collection(self, layer.name, layer.npartitions)

    def blockwise(self, func: Callable[..., Any], *inputs: Collection, name: str | None = None, args: tuple[Any, ...] = ()) -> Collection:
        """Partition ``i`` is ``func(*(partition i of each input), *args)``; one-partition inputs are broadcast."""
        if not inputs:
            raise TypeError("blockwise needs at least one input collection")
        for c in inputs:
            self._own(c)
        n = max(c.npartitions for c in inputs)
        extra = [pickle.dumps(args, protocol=_PROTOCOL)] * n if args else None
        layer = p.MapLayerSpec(
            self._name(func, name), n, self._function(func), extra, [c.name for c in inputs], [c.npartitions for c in inputs]
        )
        self.order.append((0, len(self.maps)))
        self.maps.append(layer)
        return Collection(self, layer.name, n)

    def tree_reduce(
        self,
        input: Collection,
        combine: Callable[[list[Any]], Any],
        aggregate: Callable[[list[Any]], Any] | None = None,
        chunk: Callable[[Any], Any] | None = None,
        split_every: int = 8,
        name: str | None = None,
    ) -> Collection:
        """One partition: ``chunk`` on each input partition, ``combine`` on lists of
        ``split_every`` partial results level by level, ``aggregate`` on the last list."""
        self._own(input)
        layer = p.TreeReduceLayerSpec(
            self._name(aggregate or combine, name),
            input.name,
            input.npartitions,
            self._function(combine),
            self._function(aggregate or combine),
            self._function(chunk) if chunk is not None else -1,
            split_every,
        )
        self.order.append((1, len(self.reductions)))
        self.reductions.append(layer)
        return Collection(self, layer.name, 1)

    def shuffle(
        self,
        input: Collection,
        npartitions: int,
        split: Callable[[Any], Any],
        combine: Callable[[list[Any]], Any],
        name: str | None = None,
    ) -> Collection:
        """``npartitions`` outputs: ``split`` turns each input partition into a sequence
        of ``npartitions`` pieces; output ``j`` is ``combine([piece j of each split])``."""
        self._own(input)
        layer = p.ShuffleLayerSpec(
            self._name(combine, name), input.name, input.npartitions, npartitions, self._function(split), self._function(combine)
        )
        self.order.append((2, len(self.shuffles)))
        self.shuffles.append(layer)
        return Collection(self, layer.name, npartitions)

    def message(self, outputs: Iterable[Collection], options: p.LayerOptions | None = None) -> p.SubmitLayers:
        """The ``SubmitLayers`` for this graph, wanting every partition of ``outputs`` (by layer name)."""
        names = [self._own(c).name for c in outputs]
        return p.SubmitLayers(
            list(self.functions), list(self.maps), list(self.reductions), list(self.order), [], names,
            list(self.shuffles), options,
        )
