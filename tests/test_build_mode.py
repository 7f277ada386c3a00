"""The installed build is in the mode it claims, and says so on the command line."""

from __future__ import annotations

import importlib
import os
import pkgutil
import platform
import shutil
import subprocess
import sys
import types
import warnings
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import pytest

import dsched
import sched_core
from sched_core import _mode

EXPECT_VARIABLE = "DSCHED_EXPECT_COMPILED"


def _is_extension(path: str | None) -> bool:
    return path is not None and path.endswith(tuple(EXTENSION_SUFFIXES))


def _core_module_names() -> list[str]:
    """Every module of the sched_core package except the package itself."""
    return sorted(
        f"{sched_core.__name__}.{info.name}"
        for info in pkgutil.iter_modules(sched_core.__path__)
        if not info.ispkg
    )


def _mode_words(compiled: bool) -> str:
    return "sched_core compiled with mypyc" if compiled else "sched_core interpreted"


def test_compiled_flag_matches_expected_mode() -> None:
    raw = os.environ.get(EXPECT_VARIABLE, "").strip()
    if raw == "":
        pytest.skip(f"{EXPECT_VARIABLE} is not set: no mode was asked for")
    assert sched_core.COMPILED is (raw == "1")


def test_compiled_flag_is_a_bool_and_reexported() -> None:
    assert type(sched_core.COMPILED) is bool
    assert sched_core.COMPILED is _mode.COMPILED


def test_mode_module_file_matches_flag() -> None:
    assert _is_extension(_mode.__file__) is sched_core.COMPILED


def test_core_modules_all_share_the_mode() -> None:
    names = _core_module_names()
    assert "sched_core._mode" in names
    for name in names:
        module = importlib.import_module(name)
        assert _is_extension(module.__file__) is sched_core.COMPILED, (
            f"{name} was loaded from {module.__file__}, but sched_core.COMPILED "
            f"is {sched_core.COMPILED}"
        )


def test_package_init_is_never_compiled() -> None:
    assert sched_core.__file__ is not None
    assert sched_core.__file__.endswith("__init__.py")


def test_compiled_functions_are_native() -> None:
    # mypyc turns functions into builtin functions; interpreted ones stay Python functions.
    assert isinstance(_mode.check_stale_build, types.FunctionType) is not sched_core.COMPILED


def test_no_stale_build() -> None:
    assert sched_core.check_stale_build() == [], "rebuild: pip install -e ."


def _run_dsched(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``python -m dsched`` on the same dsched and sched_core this process imported.

    cwd is a scratch directory, so `-m` cannot pick up whatever checkout the
    tests were started from; the directory holding the imported packages goes
    on PYTHONPATH instead (site-packages for an install, the checkout when the
    tests run from one).
    """
    env = dict(os.environ)
    roots = [str(Path(module.__file__ or "").resolve().parent.parent) for module in (dsched, sched_core)]
    env["PYTHONPATH"] = os.pathsep.join([*dict.fromkeys(roots), *filter(None, [env.get("PYTHONPATH")])])
    return subprocess.run(
        [sys.executable, "-m", "dsched", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_version_names_the_mode(tmp_path: Path) -> None:
    result = _run_dsched("--version", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    expected = (
        f"dsched {dsched.__version__} ({_mode_words(sched_core.COMPILED)}; "
        f"Python {platform.python_version()})"
    )
    assert result.stdout.strip() == expected


def test_console_script_version(tmp_path: Path) -> None:
    script = shutil.which("dsched", path=os.path.dirname(sys.executable))
    if script is None:
        pytest.skip("no dsched console script beside this interpreter")
    result = subprocess.run(
        [script, "--version"], cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"dsched {dsched.__version__} ({_mode_words(sched_core.COMPILED)};")


def test_help_lists_global_options(tmp_path: Path) -> None:
    result = _run_dsched("--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for option in ("--version", "--log-level"):
        assert option in result.stdout


def test_bad_log_level_is_rejected(tmp_path: Path) -> None:
    result = _run_dsched("--log-level", "loud", cwd=tmp_path)
    assert result.returncode == 2
    assert "loud" in result.stdout + result.stderr


def _touch(path: Path, mtime: float) -> None:
    path.write_text("")
    os.utime(path, (mtime, mtime))


def test_stale_modules_reports_edited_added_and_removed(tmp_path: Path) -> None:
    suffix = EXTENSION_SUFFIXES[0]
    built = 1_000_000.0
    _touch(tmp_path / "__init__.py", built + 50)  # never compiled: ignored
    _touch(tmp_path / "fresh.py", built - 10)
    _touch(tmp_path / f"fresh{suffix}", built)
    _touch(tmp_path / "edited.py", built + 10)
    _touch(tmp_path / f"edited{suffix}", built)
    _touch(tmp_path / "added.py", built + 10)
    _touch(tmp_path / f"removed{suffix}", built)
    _touch(tmp_path / f"group__mypyc{suffix}", built - 100)  # shared library: no source
    assert _mode.stale_modules(str(tmp_path), "pkg") == ["pkg.added", "pkg.edited", "pkg.removed"]


def test_stale_modules_ignores_interpreted_packages(tmp_path: Path) -> None:
    _touch(tmp_path / "__init__.py", 2.0)
    _touch(tmp_path / "module.py", 2.0)
    assert _mode.stale_modules(str(tmp_path)) == []
    assert _mode.stale_modules(str(tmp_path / "missing")) == []


def test_warn_if_stale_warns_once_with_the_names() -> None:
    with pytest.warns(RuntimeWarning, match=r"sched_core\._a, sched_core\._b.*pip install -e \.") as record:
        _mode.warn_if_stale(["sched_core._a", "sched_core._b"])
    assert len(record) == 1


def test_warn_if_stale_is_quiet_when_up_to_date() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _mode.warn_if_stale([])


def test_import_warns_about_a_stale_source_tree(tmp_path: Path) -> None:
    """A copy of the installed core laid out as a source tree, with one source edited."""
    installed = Path(sched_core.__file__ or "").parent
    tree = tmp_path / "checkout"
    shutil.copytree(installed, tree / "sched_core", ignore=shutil.ignore_patterns("__pycache__"))
    for library in installed.parent.glob("sched_core__mypyc*"):
        shutil.copy2(library, tree / library.name)
    (tree / "setup.py").write_text("")  # what marks a source checkout
    edited = tree / "sched_core" / "_mode.py"
    later = edited.stat().st_mtime + 60
    os.utime(edited, (later, later))
    result = subprocess.run(
        [sys.executable, "-W", "always::RuntimeWarning", "-c", "import sched_core"],
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    if sched_core.COMPILED:
        assert "RuntimeWarning" in result.stderr
        assert "sched_core._mode" in result.stderr
        assert "pip install -e ." in result.stderr
    else:
        assert "RuntimeWarning" not in result.stderr
