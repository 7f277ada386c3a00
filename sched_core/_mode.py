"""How this copy of ``sched_core`` was built, and whether that build is stale.

``sched_core`` is compiled with mypyc by default and can also run interpreted
(``DSCHED_COMPILE=0`` at install time).  This module is compiled along with the
rest of the core, so the file it was loaded from tells which mode is running.

An editable compiled install (``pip install -e .``) writes one extension module
per core module next to its ``.py`` source.  The import system prefers the
extension, so after a source is edited, the *old* compiled code keeps running
until the project is rebuilt.  :func:`check_stale_build` detects that, and
``sched_core/__init__.py`` calls :func:`warn_if_stale` at import.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from importlib.machinery import EXTENSION_SUFFIXES
from typing import Final

__all__ = ["COMPILED", "check_stale_build", "stale_modules", "warn_if_stale"]

_PACKAGE: Final = "sched_core"
_SOURCE_SUFFIX: Final = ".py"
# The shared library that holds a mypyc compilation group is named
# "<group>__mypyc"; it has no source of its own.
_GROUP_LIBRARY_MARK: Final = "__mypyc"

_PACKAGE_DIR: Final[str] = os.path.dirname(os.path.abspath(__file__))


def _extension_stem(file_name: str) -> str | None:
    """Module name of an extension module file, or None for other files."""
    for suffix in EXTENSION_SUFFIXES:
        if file_name.endswith(suffix):
            return file_name[: len(file_name) - len(suffix)]
    return None


COMPILED: Final[bool] = _extension_stem(os.path.basename(__file__)) is not None
"""True when ``sched_core`` runs as mypyc-compiled extension modules."""


def stale_modules(package_dir: str, package: str = _PACKAGE) -> list[str]:
    """Modules of the package in ``package_dir`` whose compiled build is out of date.

    Only a directory that holds compiled extension modules can be stale; for an
    interpreted package the result is empty.  Otherwise a module is reported
    (as ``package.module``) when its ``.py`` source is newer than its extension
    module, when it has a source but no extension module (added since the
    build), or when it has an extension module but no source (removed since
    the build).  ``__init__.py`` is never compiled and is ignored.
    """
    sources: dict[str, float] = {}
    extensions: dict[str, float] = {}
    try:
        entries = list(os.scandir(package_dir))
    except OSError:
        return []
    for entry in entries:
        name = entry.name
        if not entry.is_file():
            continue
        if name.endswith(_SOURCE_SUFFIX):
            stem = name[: len(name) - len(_SOURCE_SUFFIX)]
            if stem != "__init__":
                sources[stem] = entry.stat().st_mtime
            continue
        ext_stem = _extension_stem(name)
        if ext_stem is not None and not ext_stem.endswith(_GROUP_LIBRARY_MARK):
            extensions[ext_stem] = entry.stat().st_mtime
    if not extensions:
        return []
    stale: list[str] = []
    for stem, source_mtime in sources.items():
        ext_mtime = extensions.get(stem)
        if ext_mtime is None or source_mtime > ext_mtime:
            stale.append(stem)
    for stem in extensions:
        if stem not in sources:
            stale.append(stem)
    return sorted(package + "." + stem for stem in stale)


def _in_source_tree(package_dir: str) -> bool:
    """True when the package sits in the project checkout (editable install)."""
    return os.path.isfile(os.path.join(os.path.dirname(package_dir), "setup.py"))


def check_stale_build() -> list[str]:
    """Names of ``sched_core`` modules whose compiled extension is out of date.

    Only meaningful for an editable install, where the compiled modules sit in
    the source tree next to the sources they were built from; for a regular
    install (in site-packages, where file times only reflect the order the
    wheel was unpacked in) the result is always empty.
    """
    if not _in_source_tree(_PACKAGE_DIR):
        return []
    return stale_modules(_PACKAGE_DIR)


def _stale_message(names: Sequence[str]) -> str:
    return (
        "the compiled sched_core build is out of date with its sources ("
        + ", ".join(names)
        + "): the old compiled code is what runs. Rebuild it with "
        "`pip install -e .` (or `DSCHED_COMPILE=0 pip install -e .` to run the "
        "core interpreted)."
    )


def warn_if_stale(stale: Sequence[str] | None = None) -> None:
    """Issue one RuntimeWarning naming the stale modules, if there are any.

    ``stale`` defaults to :func:`check_stale_build`'s answer.
    """
    names = check_stale_build() if stale is None else list(stale)
    if names:
        warnings.warn(_stale_message(names), RuntimeWarning, stacklevel=2)
