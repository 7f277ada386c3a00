"""``dsched replay FILE``: feed a recorded scheduler's events through sched_core again.

The replay runs the interpreted core by default, so that pdb (``--step``) and
breakpoints in ``sched_core``'s sources work even where the installed core is
compiled: ``sched_core`` is imported by the time a command runs (``dsched
--version`` reports its mode), so when it was imported compiled, the command
runs itself again in a child process with ``DSCHED_CORE=interpreted``.
``--compiled`` replays with whatever core is installed.

Exit status: 0 when every batch took the recorded decisions, 1 when some
differ (or the core raised, or ``--validate`` found a broken invariant), 2
when the file is not a readable recording.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Annotated, Final

import typer

import dsched
import sched_core

__all__ = ["register", "replay_command"]

_SWITCH: Final = "DSCHED_CORE"
_INTERPRETED: Final = "interpreted"
_UNREADABLE: Final = 2


def _rerun_interpreted(args: list[str], interactive: bool) -> int:
    """Run ``dsched replay ARGS`` in a child whose sched_core is interpreted; its exit status."""
    env = dict(os.environ)
    env[_SWITCH] = _INTERPRETED
    # The child must import this very dsched and sched_core, wherever they came from.
    roots = [os.path.dirname(os.path.dirname(os.path.abspath(m.__file__ or ""))) for m in (dsched, sched_core)]
    env["PYTHONPATH"] = os.pathsep.join([*dict.fromkeys(roots), *filter(None, [env.get("PYTHONPATH")])])
    command = [sys.executable, "-P", "-m", "dsched", "replay", *args]  # -P: the installed dsched, not a checkout in cwd
    if interactive:  # pdb needs the terminal itself
        return subprocess.run(command, env=env, check=False).returncode
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.stdout:
        typer.echo(done.stdout, nl=False)
    if done.stderr:
        typer.echo(done.stderr, nl=False, err=True)
    return done.returncode


def replay_command(
    path: Path, *, compiled: bool, until_batch: int | None, step: bool, as_json: bool, validate: bool
) -> int:
    """What ``dsched replay`` does; returns the exit status."""
    if not compiled and sched_core.COMPILED:
        args = [str(path)]
        if until_batch is not None:
            args += ["--until-batch", str(until_batch)]
        args += [flag for flag, on in (("--step", step), ("--json", as_json), ("--validate", validate)) if on]
        return _rerun_interpreted(args, interactive=step)
    # Imported here: the runtime and the core are only needed once the mode is settled.
    from dsched._recording import RecordingError
    from dsched._replay import replay

    try:
        result = replay(path, step=step, until_batch=until_batch, validate=validate)
    except RecordingError as exc:
        typer.echo(f"dsched replay: {exc}", err=True)
        return _UNREADABLE
    if as_json:
        typer.echo(json.dumps(result.summary(), indent=2, default=_jsonable))
    else:
        typer.echo(result.report())
    if result.exception is not None and not as_json:
        typer.echo("".join(traceback.format_exception(result.exception)), err=True)
    return 0 if result.ok else 1


def _jsonable(value: object) -> object:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    return repr(value)


def register(app: typer.Typer) -> None:
    @app.command()
    def replay(
        file: Annotated[Path, typer.Argument(help="A recording written by a scheduler (EventRecorder).", dir_okay=False)],
        compiled: Annotated[
            bool,
            typer.Option(
                "--compiled", help="Replay with the installed core as it is, compiled or not (default: interpreted)."
            ),
        ] = False,
        until_batch: Annotated[
            int | None, typer.Option("--until-batch", min=1, help="Stop after this batch (batches count from 1).")
        ] = None,
        step: Annotated[
            bool, typer.Option("--step", help="Enter pdb before each batch (`s` steps into the core, `c` goes on).")
        ] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
        validate: Annotated[
            bool, typer.Option("--validate", help="Check the core's invariants after each batch; stop at the first broken.")
        ] = False,
    ) -> None:
        """Replay a recorded scheduler: same events, same core, and check it takes the same decisions.

        Prints the final state (tasks by state, workers, clients) and the first
        batch whose instructions differ from the recording, if any.
        """
        code = replay_command(
            file, compiled=compiled, until_batch=until_batch, step=step, as_json=as_json, validate=validate
        )
        if code:
            raise typer.Exit(code)
