"""nox sessions for dsched.  `nox -l` lists them; README.md describes them.

Every session installs the project into a fresh virtualenv made from the
Python that runs nox.  The test sessions install it *non-editable*: an
editable compiled build writes extension modules into the source tree, where
they would shadow the sources in the interpreted session.  pytest runs as the
`pytest` console script (not `python -m pytest`) and tests/ has no
__init__.py, so the checkout is never on sys.path and the tests import the
installed packages.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import nox

nox.options.sessions = ["tests", "tests_compiled", "typecheck", "typing_tests"]
nox.options.error_on_external_run = True

ROOT = Path(__file__).resolve().parent
COMPILED_ENV = {"DSCHED_COMPILE": "1"}
INTERPRETED_ENV = {"DSCHED_COMPILE": "0"}
# -P: do not put the current directory (the checkout) on sys.path.
CHECK_MODE = "import sched_core; assert sched_core.COMPILED is {expected}, sched_core.__file__; print('sched_core.COMPILED is {expected}:', sched_core.__file__)"


def _check_installed_mode(session: nox.Session, *, compiled: bool) -> None:
    session.run("python", "-P", "-c", CHECK_MODE.format(expected=compiled))


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite against an interpreted (DSCHED_COMPILE=0) install."""
    session.install(".[test]", env=INTERPRETED_ENV)
    _check_installed_mode(session, compiled=False)
    session.run("pytest", *session.posargs, env={"DSCHED_EXPECT_COMPILED": "0"})


@nox.session
def tests_compiled(session: nox.Session) -> None:
    """Run the test suite against a mypyc-compiled install."""
    session.install(".[test]", env=COMPILED_ENV)
    _check_installed_mode(session, compiled=True)
    session.run("pytest", *session.posargs, env={"DSCHED_EXPECT_COMPILED": "1"})


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the sources of sched_core and dsched."""
    session.install(".[typecheck]", env=INTERPRETED_ENV)
    session.run("mypy", "--strict", "sched_core", "dsched", *session.posargs)


@nox.session
def typing_tests(session: nox.Session) -> None:
    """Static type assertions in typing_tests/ (mypy --warn-unused-ignores)."""
    session.install(".[typecheck]", env=INTERPRETED_ENV)
    session.run("mypy", "--strict", "--warn-unused-ignores", "typing_tests", *session.posargs)


@nox.session
def screenshots(session: nox.Session) -> None:
    """Refresh docs/images/dashboard-*.png: the dashboard's browser test, saving screenshots (needs chromium)."""
    session.install(".[test]", env=COMPILED_ENV)  # the build users get, as the pages show it
    # From outside the checkout: the cluster's children run `python -m dsched`, which
    # puts the working directory first on sys.path, and would import the sources.
    session.chdir(session.create_tmp())
    session.run(
        "pytest", str(ROOT / "tests" / "test_dashboard_browser.py"), *session.posargs,
        env={"DSCHED_SCREENSHOTS": str(ROOT / "docs" / "images"), "DSCHED_REQUIRE_BROWSER": "1"},
    )


def _venv_python(venv: Path) -> Path:
    return venv / ("Scripts" if os.name == "nt" else "bin") / ("python.exe" if os.name == "nt" else "python")


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmark the core (core_bench.py, flow_sim.py), the runtime against dask (runtime_bench.py), layers and Dask collections (layers_bench.py), profiling overhead (profiling_bench.py), load (load_bench.py).

    The session's own virtualenv gets the compiled build; a second virtualenv
    (under the session's tmp dir) gets the interpreted one.  Extra arguments
    after `--` go to core_bench.py (runtime_bench.py gets `--quick` if given,
    and the words of the environment variable RUNTIME_BENCH_ARGS).
    """
    script = ROOT / "benchmarks" / "core_bench.py"
    if not script.is_file():
        session.error(f"{script.relative_to(ROOT)} does not exist yet")
    session.install(".[bench]", env=COMPILED_ENV)
    _check_installed_mode(session, compiled=True)
    compiled_python = _venv_python(Path(session.virtualenv.location).resolve())

    interpreted_venv = Path(session.create_tmp()).resolve() / "bench-interp"
    session.run("python", "-m", "venv", "--clear", str(interpreted_venv))
    interpreted_python = _venv_python(interpreted_venv)
    session.run(
        str(interpreted_python), "-m", "pip", "install", "--quiet", ".[bench]",
        env=INTERPRETED_ENV, external=True,
    )
    session.run(
        str(interpreted_python), "-P", "-c", CHECK_MODE.format(expected=False), external=True
    )
    session.run(
        "python", str(script),
        "--compiled-python", str(compiled_python),
        "--interpreted-python", str(interpreted_python),
        *session.posargs,
    )
    # What the core's flow control does under latency (simulated time).
    session.run("python", str(ROOT / "benchmarks" / "flow_sim.py"))
    # The whole runtime (compiled core) side by side with dask.distributed.
    # dask is slow (~600 tasks/s by default): one run per dask measurement and
    # no 100,000-task run of default dask (3-4 minutes alone) keep the session
    # under ~15 minutes; run the script alone for the full comparison.  Only
    # --quick is shared with core_bench.py's options; RUNTIME_BENCH_ARGS passes
    # anything else (e.g. "--only a,c --no-dask"), after these defaults.
    runtime_args = ["--dask-repeat", "1", "--large-systems", "dsched,dask-tuned"]
    runtime_args += ["--quick"] if "--quick" in session.posargs else []
    runtime_args += os.environ.get("RUNTIME_BENCH_ARGS", "").split()
    session.run("python", str(ROOT / "benchmarks" / "runtime_bench.py"), *runtime_args)
    # High-level graphs: layer expansion in the compiled core, client bytes, first result.
    quick = "--quick" in session.posargs
    layer_args = ["--map-inputs", "100000", "--array-side", "30", "--df-partitions", "100", "--repeat", "1"] if quick else []
    session.run("python", str(ROOT / "benchmarks" / "layers_bench.py"), *layer_args)
    # What the profilers and a polled dashboard cost the runtime workloads (target <= 5%).
    session.run("python", str(ROOT / "benchmarks" / "profiling_bench.py"), *(["--quick"] if quick else []))
    # 200 workers and 100 clients joining at once, /health probed (dask.distributed: one round, minutes).
    load_args = ["--workers", "40", "--clients", "20", "--rounds", "1"] if quick else ["--rounds", "1"]
    session.run("python", str(ROOT / "benchmarks" / "load_bench.py"), *load_args)


# Markdown links [text](target) and reference definitions [label]: target.
_INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+[\"'(][^)]*)?\)")
_REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.MULTILINE)
_FENCED_CODE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_EXTERNAL = re.compile(r"^(?:[a-zA-Z][a-zA-Z0-9+.-]*:|//)")


def markdown_links(text: str) -> list[str]:
    """Link targets in a Markdown text, ignoring code spans and fenced blocks."""
    text = _INLINE_CODE.sub("", _FENCED_CODE.sub("", text))
    return _INLINE_LINK.findall(text) + _REFERENCE_LINK.findall(text)


def check_docs(root: Path) -> list[str]:
    """Problems in docs/: pages not linked from docs/index.md, broken relative links.

    Relative links are checked in README.md and every docs/**/*.md page; a
    link's #fragment is ignored, external links (scheme: or //) are skipped.
    """
    docs = root / "docs"
    index = docs / "index.md"
    if not index.is_file():
        return [f"{index.relative_to(root)} is missing"]
    problems: list[str] = []
    pages = sorted(docs.rglob("*.md"))
    linked_from_index: set[Path] = set()
    for page in [root / "README.md", *pages]:
        if not page.is_file():
            continue
        for target in markdown_links(page.read_text(encoding="utf-8")):
            path_part = target.split("#", 1)[0]
            if _EXTERNAL.match(target) or not path_part:
                continue
            resolved = (page.parent / path_part).resolve()
            if not resolved.exists():
                problems.append(f"{page.relative_to(root)}: broken link {target!r}")
            elif page == index:
                linked_from_index.add(resolved)
    for page in pages:
        if page != index and page.resolve() not in linked_from_index:
            problems.append(f"{page.relative_to(root)} is not linked from docs/index.md")
    return problems


@nox.session(python=False)
def docs(session: nox.Session) -> None:
    """Check docs/: every page linked from docs/index.md, relative links resolve."""
    problems = check_docs(ROOT)
    for problem in problems:
        session.warn(problem)
    if problems:
        session.error(f"{len(problems)} documentation problem(s)")
    session.log("docs/: every page is linked from docs/index.md and every relative link resolves")
