"""``DSCHED_CORE=interpreted`` runs the core from its sources even when the install is compiled."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import sched_core

EXPECT_VARIABLE = "DSCHED_EXPECT_COMPILED"
PACKAGE_ROOT = Path(sched_core.__file__ or "").resolve().parent.parent

# Imports every core module and prints the mode and where each module came from.
PROBE = r"""
import importlib, json, pkgutil
import sched_core
names = sorted("sched_core." + m.name for m in pkgutil.iter_modules(sched_core.__path__))
files = {name: importlib.import_module(name).__file__ for name in names}
state = sched_core.SchedulerState()
out = state.handle_events([
    sched_core.WorkerAdded("w", 1), sched_core.GraphSubmitted("c", [sched_core.TaskSpec("x", [], b"f")], ["x"])
])
print(json.dumps({"compiled": sched_core.COMPILED, "files": files, "out": [repr(i) for i in out]}))
"""


def _probe(core: str | None, root: Path = PACKAGE_ROOT, *flags: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DSCHED_CORE"}
    if core is not None:
        env["DSCHED_CORE"] = core
    env["PYTHONPATH"] = str(root)
    # -P: the current directory (maybe a checkout) must not shadow ``root``.
    return subprocess.run(
        [sys.executable, "-P", *flags, "-c", PROBE], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def _is_extension(path: str) -> bool:
    return path.endswith(tuple(EXTENSION_SUFFIXES))


def test_interpreted_by_request_loads_every_module_from_source() -> None:
    done = _probe("interpreted")
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["compiled"] is False
    assert "sched_core._scheduler" in found["files"]
    for name, path in found["files"].items():
        assert path.endswith(".py"), f"{name} came from {path}"
        assert Path(path).parent == PACKAGE_ROOT / "sched_core"
    assert found["out"] == ["<ComputeTask 'x' on 'w'>"]


def test_without_the_switch_the_installed_mode_runs() -> None:
    # In the compiled test run (DSCHED_EXPECT_COMPILED=1) this is the compiled
    # build, so together with the test above it shows the switch changes the mode.
    done = _probe(None)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["compiled"] is sched_core.COMPILED
    expected = os.environ.get(EXPECT_VARIABLE, "").strip()
    if expected:
        assert found["compiled"] is (expected == "1")
    for name, path in found["files"].items():
        assert _is_extension(path) is found["compiled"], f"{name} came from {path}"


def _fake_compiled_package(tmp_path: Path) -> Path:
    """A copy of the core's sources with a broken "extension module" beside each.

    The broken modules are older than the sources and the copy sits beside a
    setup.py (like an editable install), so importing it the usual way fails,
    and a stale-build warning would be due.
    """
    package = tmp_path / "sched_core"
    package.mkdir()
    source_dir = Path(sched_core.__file__ or "").parent
    for source in sorted(source_dir.glob("*.py")):
        shutil.copy(source, package / source.name)
        if source.name != "__init__.py":
            fake = package / (source.stem + EXTENSION_SUFFIXES[0])
            fake.write_bytes(b"not a shared library")
            os.utime(fake, (1_000_000, 1_000_000))
    (tmp_path / "setup.py").write_text("")
    return tmp_path


def test_the_switch_never_touches_an_extension_module(tmp_path: Path) -> None:
    root = _fake_compiled_package(tmp_path)
    broken = _probe(None, root)
    assert broken.returncode != 0, "the fake extension modules should not import"
    # -W error: no stale-build warning either, since the sources are what runs.
    done = _probe("interpreted", root, "-W", "error::RuntimeWarning")
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["compiled"] is False
    assert all(path.startswith(str(root)) and path.endswith(".py") for path in found["files"].values())


def test_a_wrong_value_is_refused_by_name() -> None:
    done = _probe("compiled-please")
    assert done.returncode != 0
    assert "DSCHED_CORE" in done.stderr and "compiled-please" in done.stderr


def test_an_empty_value_means_the_installed_mode() -> None:
    done = _probe("")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["compiled"] is sched_core.COMPILED
