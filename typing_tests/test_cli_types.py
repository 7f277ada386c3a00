"""Static checks of the public types (run by mypy, never executed).

``nox -s typing_tests`` runs ``mypy --strict --warn-unused-ignores typing_tests``.
"""

from typing import assert_type

import typer

import dsched
import sched_core
from dsched import _cli

assert_type(dsched.__version__, str)
assert_type(sched_core.COMPILED, bool)
assert_type(sched_core.check_stale_build(), list[str])
assert_type(_cli.version_string(), str)
assert_type(_cli.app, typer.Typer)
assert_type(_cli.LogLevel.DEBUG.number, int)


def _entry_point_returns_nothing() -> None:
    assert_type(_cli.main(), None)
