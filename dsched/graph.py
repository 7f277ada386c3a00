"""High-level graphs: build a few layers on the client, expanded into tasks on the scheduler.

See :mod:`dsched._graph_builder` and docs/layers.md.
"""

from dsched._graph_builder import Collection, Graph

__all__ = ["Collection", "Graph"]
