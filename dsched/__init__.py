"""dsched: a distributed task scheduler in the style of dask.distributed.

The scheduling logic lives in the separate package ``sched_core`` (sans-I/O,
compiled with mypyc); ``dsched`` is the runtime around it.
"""

from dsched._version import __version__ as __version__

__all__ = ["__version__"]
