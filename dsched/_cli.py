"""The ``dsched`` command line (``dsched`` script and ``python -m dsched``).

``app`` is the root typer application.  It owns the options that apply to
every subcommand (``--version``, ``--log-level``); each subcommand (scheduler,
worker, local, demo, replay, ...) lives in its own module
``dsched/_cli_<name>.py`` that defines::

    def register(app: typer.Typer) -> None:
        @app.command()
        def worker(...) -> None: ...

and is added to :func:`_register_subcommands` below.  Keeping subcommands in
their own modules keeps their imports (the runtime, msgspec, anyio, ...) out of
this module.
"""

from __future__ import annotations

import enum
import logging
import platform
import sys
from typing import Annotated, Final

import typer

from dsched._version import __version__
from sched_core._mode import COMPILED

__all__ = ["LogLevel", "app", "main", "version_string"]

_PROG_NAME: Final = "dsched"
_LOG_FORMAT: Final = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class LogLevel(str, enum.Enum):
    """Values accepted by ``--log-level`` (case-insensitive)."""

    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"
    CRITICAL = "critical"

    @property
    def number(self) -> int:
        """The level as a number of the standard ``logging`` module."""
        return logging.getLevelNamesMapping()[self.value.upper()]


def version_string() -> str:
    """One line naming the version, how ``sched_core`` was built and the Python."""
    mode = "compiled with mypyc" if COMPILED else "interpreted"
    return f"{_PROG_NAME} {__version__} (sched_core {mode}; Python {platform.python_version()})"


def _show_version(value: bool) -> None:
    if value:
        typer.echo(version_string())
        raise typer.Exit()


def _configure_logging(level: LogLevel) -> None:
    logging.basicConfig(level=level.number, format=_LOG_FORMAT, stream=sys.stderr)


app: Final = typer.Typer(
    name=_PROG_NAME,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_show_version,
            is_eager=True,
            help="Print the version and whether sched_core is compiled, then exit.",
        ),
    ] = False,
    log_level: Annotated[
        LogLevel,
        typer.Option(
            "--log-level",
            case_sensitive=False,
            envvar="DSCHED_LOG_LEVEL",
            help="Logging level for dsched and the code it runs.",
        ),
    ] = LogLevel.INFO,
) -> None:
    """dsched: a distributed task scheduler in the style of dask.distributed.

    A scheduler assigns the tasks of a graph to workers, which run them, keep
    their results in memory and fetch dependencies from each other.  The
    scheduling logic is the sans-I/O core sched_core, normally compiled with
    mypyc (see --version).
    """
    _configure_logging(log_level)


def _register_subcommands(root: typer.Typer) -> None:
    """Add the subcommands, each defined in its own ``dsched._cli_<name>`` module.

    For example::

        from dsched import _cli_worker

        _cli_worker.register(root)
    """
    from dsched import _cli_demo, _cli_diagnostics, _cli_local, _cli_replay, _cli_scheduler, _cli_worker

    _cli_scheduler.register(root)
    _cli_worker.register(root)
    _cli_local.register(root)
    _cli_demo.register(root)
    _cli_replay.register(root)
    _cli_diagnostics.register(root)


_register_subcommands(app)


def main() -> None:
    """Entry point of the ``dsched`` console script and ``python -m dsched``."""
    app(prog_name=_PROG_NAME)
