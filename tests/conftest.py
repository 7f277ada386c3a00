"""Session-wide checks: which build of sched_core is under test.

The nox sessions ``tests`` and ``tests_compiled`` install the project (not
editable) and set ``DSCHED_EXPECT_COMPILED`` to 0 or 1.  If the installed
sched_core is not in that mode, the run stops before collecting any test, so a
run can never silently test the wrong build.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

import sched_core
from _client_helpers import BackgroundCluster, background_cluster
from dsched._client import Client

EXPECT_VARIABLE = "DSCHED_EXPECT_COMPILED"


def expected_compiled() -> bool | None:
    """The mode asked for by DSCHED_EXPECT_COMPILED (None when unset)."""
    raw = os.environ.get(EXPECT_VARIABLE, "").strip()
    if raw == "":
        return None
    if raw not in ("0", "1"):
        raise pytest.UsageError(f"{EXPECT_VARIABLE} must be 0 or 1, not {raw!r}")
    return raw == "1"


def _describe(compiled: bool) -> str:
    return "compiled with mypyc" if compiled else "interpreted"


def pytest_report_header(config: pytest.Config) -> list[str]:
    expected = expected_compiled()
    wanted = "not checked" if expected is None else f"{EXPECT_VARIABLE}={int(expected)}"
    return [
        f"dsched build mode under test: sched_core {_describe(sched_core.COMPILED)} ({wanted})",
        f"sched_core imported from: {os.path.dirname(sched_core.__file__ or '?')}",
    ]


def pytest_sessionstart(session: pytest.Session) -> None:
    expected = expected_compiled()
    if expected is not None and sched_core.COMPILED is not expected:
        pytest.exit(
            f"{EXPECT_VARIABLE}={int(expected)} but the sched_core imported from "
            f"{sched_core.__file__} is {_describe(sched_core.COMPILED)}: the wrong build "
            "is installed (or the source tree shadows it). Reinstall with "
            f"DSCHED_COMPILE={int(expected)} pip install .",
            returncode=pytest.ExitCode.USAGE_ERROR,
        )


@pytest.fixture(scope="module")
def cluster() -> Iterator[BackgroundCluster]:
    """An in-process scheduler and two workers of two threads, shared by a test module.

    (Modules that need another cluster define their own ``cluster`` fixture.)
    """
    with background_cluster(n_workers=2, nthreads=2) as c:
        yield c


@pytest.fixture
def client(cluster: BackgroundCluster) -> Iterator[Client]:
    with Client(cluster.address) as c:
        yield c
