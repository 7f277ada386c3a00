"""Build script: compiles the sched_core package with mypyc.

Everything declarative lives in pyproject.toml; this file only adds the
compiled extension modules.  Every ``sched_core/*.py`` module except
``__init__.py`` is compiled, in one mypyc compilation group so that calls
between core modules stay native C calls.  The module list is globbed at build
time, so a new core module is compiled without touching this file.

Build modes, chosen by the environment variable ``DSCHED_COMPILE``:

* unset or ``1``: compile ``sched_core`` with mypyc (the default);
* ``0``: skip mypyc and install ``sched_core`` as plain Python.

Both work with ``pip install .`` and ``pip install -e .``.  An editable
compiled install writes the extension modules into ``sched_core/`` beside the
sources, where they shadow them until the next rebuild; ``sched_core._mode``
warns at import when a source is newer than its compiled module.
"""

from __future__ import annotations

import glob
import os
import sys
from importlib.machinery import EXTENSION_SUFFIXES

from setuptools import Extension, setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

CORE_PACKAGE = "sched_core"
PACKAGES = ("dsched", CORE_PACKAGE)
# The compiled core is one shared library, the top-level extension module
# sched_core__mypyc (mypyc's "<group>__mypyc"), plus one small shim extension
# module per core module.  mypyc expects that library above the package tree
# (it derives each module's __file__ from its location), so it is not put
# inside sched_core/.
GROUP_NAME = CORE_PACKAGE
GROUP_LIBRARY = GROUP_NAME + "__mypyc"
SWITCH = "DSCHED_COMPILE"
# pip runs this file three times per install (build requirements, metadata,
# wheel); only the last one needs the compiled modules.
METADATA_COMMANDS = frozenset({"egg_info", "dist_info", "sdist"})
BUILD_COMMANDS = frozenset({"build", "build_ext", "bdist_wheel", "editable_wheel", "install", "develop"})


def compile_requested() -> bool:
    value = os.environ.get(SWITCH, "").strip()
    if value == "0":
        return False
    if value in ("", "1"):
        return True
    sys.exit(f"{SWITCH} must be 0 (interpreted core) or 1 (compiled core, the default), not {value!r}")


def core_modules() -> list[str]:
    """Paths of the core modules to compile, relative to the project root."""
    paths = sorted(glob.glob(os.path.join(CORE_PACKAGE, "*.py")))
    return [path for path in paths if os.path.basename(path) != "__init__.py"]


def extension_stem(file_name: str) -> str | None:
    for suffix in EXTENSION_SUFFIXES:
        if file_name.endswith(suffix):
            return file_name[: -len(suffix)]
    return None


def remove_inplace_extensions() -> None:
    """Delete compiled core modules left in the source tree by an editable build.

    They would shadow the sources in an interpreted editable install, and
    shims of removed modules would linger in a compiled one; a compiled
    editable build writes a fresh set right after.
    """
    paths = [os.path.join(CORE_PACKAGE, entry) for entry in os.listdir(CORE_PACKAGE)]
    paths += [entry for entry in os.listdir(".") if entry.startswith(GROUP_LIBRARY)]
    for path in sorted(paths):
        if extension_stem(os.path.basename(path)) is not None:
            print(f"removing in-tree extension module {path}")
            os.remove(path)


class EditableWheel(editable_wheel):
    def run(self) -> None:
        remove_inplace_extensions()
        super().run()


class BuildPy(build_py):
    """build_py that first drops files of deleted modules from the build directory.

    pip builds in the source tree, and setuptools copies build/lib* whole into
    the wheel, so a module renamed or removed since the last build would
    otherwise still be installed (with a broken compiled shim, when compiled).
    """

    def run(self) -> None:
        for package in PACKAGES:
            self._prune(os.path.join(self.build_lib, package), package)
        super().run()

    @staticmethod
    def _prune(built_dir: str, source_dir: str) -> None:
        if not os.path.isdir(built_dir):
            return
        for entry in os.listdir(built_dir):
            built = os.path.join(built_dir, entry)
            source = os.path.join(source_dir, entry)
            if os.path.isdir(built):
                BuildPy._prune(built, source)
                continue
            stem = extension_stem(entry)
            if stem is not None:
                keep = os.path.isfile(os.path.join(source_dir, stem + ".py"))
            else:
                keep = os.path.isfile(source)
            if not keep:
                print(f"removing stale build file {built}")
                os.remove(built)


def metadata_only(argv: list[str]) -> bool:
    """True when setuptools is only asked for metadata or an sdist, not a build."""
    commands = {arg for arg in argv[1:] if not arg.startswith("-")}
    return bool(commands & METADATA_COMMANDS) and not commands & BUILD_COMMANDS


def ext_modules() -> list[Extension]:
    if not compile_requested():
        print(f"{SWITCH}=0: installing {CORE_PACKAGE} interpreted (no mypyc)")
        return []
    modules = core_modules()
    if not modules or metadata_only(sys.argv):
        return []
    from mypyc.build import mypycify

    print(f"compiling {len(modules)} {CORE_PACKAGE} modules with mypyc: {' '.join(modules)}")
    # One compilation group (separate=False, the default): cross-module calls stay native.
    return mypycify(modules, opt_level="3", group_name=GROUP_NAME)


setup(
    ext_modules=ext_modules(),
    cmdclass={"build_py": BuildPy, "editable_wheel": EditableWheel},
)
