"""Child processes of a local cluster: spawning, log draining, stopping, orphan safety.

A :class:`ChildProcess` is one ``python -m dsched scheduler|worker`` child.  Its
stderr (the log) is a pipe drained by a daemon thread into a bounded buffer,
so a chatty child never blocks on a full pipe, the last lines can explain a
failed start, and each line is echoed to the parent's stderr (the child logs
only at the level the parent asked for).  Its stdout is the parent's: what
tasks print shows up where the user looks, as with Dask.

Children start in their own session, so a Ctrl-C in a terminal reaches only
the parent, which decides how to stop them (SIGTERM, then SIGKILL after a
grace period).  Should the parent die without stopping them, each child
notices (it polls its parent pid, see :func:`adopt_parent_environment`) and
shuts itself down.  Polling is used rather than ``PR_SET_PDEATHSIG``, which
fires when the *thread* that spawned the child exits, not the process.

The child also takes the parent's ``sys.path`` (as ``multiprocessing``'s
spawn does), so functions pickled by reference from a script's directory or
a test module import the same way on workers.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import sysconfig
import threading
import time
from pathlib import Path
from typing import IO, Final

__all__ = [
    "ChildProcess",
    "adopt_parent_environment",
    "child_environment",
    "read_scheduler_file",
    "remove_scheduler_file",
    "stop_all",
    "write_scheduler_file",
]

PARENT_PID_ENV: Final = "DSCHED_PARENT_PID"
SYS_PATH_ENV: Final = "DSCHED_PARENT_SYS_PATH"
_PARENT_POLL_INTERVAL: Final = 0.5
_ORPHAN_GRACE: Final = 10.0
_LOG_LINES: Final = 2000


# --- the parent's side ----------------------------------------------------------------


def _package_root() -> str:
    """The directory holding the ``dsched`` package the parent imported."""
    return str(Path(__file__).resolve().parent.parent)


def child_environment() -> dict[str, str]:
    """The environment of a child: the parent's, plus how to find the parent and its code.

    The directory of the parent's ``dsched`` goes first on ``PYTHONPATH`` when it
    is not an installed location (a source checkout), so the child runs the
    same code as the parent.
    """
    env = dict(os.environ)
    env[PARENT_PID_ENV] = str(os.getpid())
    env[SYS_PATH_ENV] = json.dumps([os.path.abspath(p) if p else os.getcwd() for p in sys.path])
    root = _package_root()
    installed = {os.path.realpath(p) for p in (sysconfig.get_path("purelib"), sysconfig.get_path("platlib")) if p}
    if os.path.realpath(root) not in installed:
        existing = env.get("PYTHONPATH", "")
        env["PYTHONPATH"] = root + (os.pathsep + existing if existing else "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


class ChildProcess:
    """One child process whose stderr is drained into :attr:`lines` (the last 2000).

    ``name`` prefixes nothing (children log their own logger names); it names
    the child in error messages.
    """

    def __init__(self, name: str, args: list[str], *, echo: bool = True, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.args = args
        self.lines: collections.deque[str] = collections.deque(maxlen=_LOG_LINES)
        self._echo = echo
        self._lock = threading.Lock()
        self.popen = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={**child_environment(), **(env or {})},  # env: e.g. the cluster's secret, never on argv
            start_new_session=True,
        )
        assert self.popen.stderr is not None
        self._drain = threading.Thread(
            target=self._drain_stderr, args=(self.popen.stderr,), name=f"dsched-log-{name}", daemon=True
        )
        self._drain.start()

    def __repr__(self) -> str:
        return f"<ChildProcess {self.name} pid={self.popen.pid} returncode={self.popen.returncode}>"

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def _drain_stderr(self, stream: IO[bytes]) -> None:
        try:
            for raw in iter(stream.readline, b""):
                line = raw.decode("utf-8", "replace")
                with self._lock:
                    self.lines.append(line.rstrip("\n"))
                if self._echo:
                    try:
                        sys.stderr.write(line)
                        sys.stderr.flush()
                    except (OSError, ValueError):  # the parent's stderr is closed or gone
                        pass
        except (OSError, ValueError):
            pass
        finally:
            stream.close()

    def log(self) -> str:
        """Everything kept of the child's stderr (its last 2000 lines)."""
        with self._lock:
            return "\n".join(self.lines)

    def tail(self, n: int = 20) -> str:
        with self._lock:
            lines = list(self.lines)[-n:]
        return "\n".join(lines)

    def describe_exit(self) -> str:
        """``"worker-0 exited with code 1; its last log lines:\\n..."`` for error messages."""
        code = self.popen.poll()
        status = "is still running" if code is None else f"exited with code {code}"
        if code is not None:
            self._drain.join(timeout=1.0)  # let the drain catch its last words
        tail = self.tail()
        return f"{self.name} (pid {self.pid}) {status}" + (f"; its last log lines:\n{tail}" if tail else "")

    def signal(self, signum: int) -> None:
        if self.popen.poll() is None:
            try:
                self.popen.send_signal(signum)
            except ProcessLookupError:
                pass

    def join_log(self, timeout: float = 1.0) -> None:
        """Wait for the drain to reach the end of the child's stderr (after it exited)."""
        self._drain.join(timeout)


def stop_all(children: list[ChildProcess], timeout: float = 5.0) -> None:
    """SIGTERM every live child, wait up to ``timeout`` for all, then SIGKILL the rest.

    Blocking; returns when every child has been reaped (each Popen has a
    ``returncode``).
    """
    term = getattr(signal, "SIGTERM", None)
    for child in children:
        if term is not None:
            child.signal(term)
        elif child.alive():
            child.popen.terminate()
    deadline = time.monotonic() + timeout
    for child in children:
        remaining = deadline - time.monotonic()
        try:
            child.popen.wait(timeout=max(0.0, remaining))
        except subprocess.TimeoutExpired:
            pass
    for child in children:
        if child.popen.poll() is None:
            child.popen.kill()
            child.popen.wait()
        child.join_log(0.5)


# --- the scheduler file ---------------------------------------------------------------


def write_scheduler_file(path: str | os.PathLike[str], info: dict[str, object]) -> None:
    """Write ``info`` as JSON to ``path`` atomically: readers see all of it or nothing."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(info, indent=2) + "\n")
    os.replace(tmp, target)


def read_scheduler_file(path: str | os.PathLike[str]) -> dict[str, object] | None:
    """The scheduler file's content, or None while it does not exist (or is not a scheduler file)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("address"), str):
        return None
    return data


def remove_scheduler_file(path: str | os.PathLike[str], address: str) -> None:
    """Remove the scheduler file if it still names ``address`` (another scheduler may own it now)."""
    data = read_scheduler_file(path)
    if data is not None and data.get("address") == address:
        try:
            os.remove(path)
        except OSError:
            pass


# --- the child's side -----------------------------------------------------------------


def adopt_parent_environment() -> None:
    """In a child of a local cluster: take the parent's ``sys.path``, watch the parent's life.

    Does nothing in a process started by hand (the variables are unset).  The
    variables are removed, so processes the child starts do not inherit them.
    """
    raw_path = os.environ.pop(SYS_PATH_ENV, "")
    if raw_path:
        try:
            parent_path = [p for p in json.loads(raw_path) if isinstance(p, str)]
        except ValueError:
            parent_path = []
        own = [p for p in sys.path if p not in parent_path]
        sys.path[:] = parent_path + own
    raw_pid = os.environ.pop(PARENT_PID_ENV, "")
    if raw_pid.isdigit():
        parent = int(raw_pid)
        threading.Thread(target=_watch_parent, args=(parent,), name="dsched-parent-watch", daemon=True).start()


def _parent_alive(parent: int) -> bool:
    if os.name == "posix":
        return os.getppid() == parent  # reparented once the parent is gone
    try:
        os.kill(parent, 0)
    except OSError:
        return False
    return True


def _watch_parent(parent: int) -> None:
    """Shut down cleanly (SIGTERM to ourselves) when the parent dies; hard exit if that hangs."""
    while _parent_alive(parent):
        time.sleep(_PARENT_POLL_INTERVAL)
    try:
        sys.stderr.write(f"dsched: parent process {parent} is gone, shutting down\n")
    except (OSError, ValueError):  # stderr was a pipe to the parent
        pass
    term = getattr(signal, "SIGTERM", signal.SIGINT)
    try:
        os.kill(os.getpid(), term)
    except OSError:
        pass
    time.sleep(_ORPHAN_GRACE)
    os._exit(1)
