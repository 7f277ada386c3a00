"""``dsched profile``, ``dsched capture`` and ``dsched record``: a running scheduler's diagnostics.

Each connects as a client (to ADDRESS, or the address in ``--scheduler-file``),
asks, writes the answer to a file or stdout, and disconnects.
"""

from __future__ import annotations

import enum
import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from dsched._procs import read_scheduler_file
from dsched._sizes import parse_bytes

__all__ = ["register"]


class ProfileFormat(str, enum.Enum):
    json = "json"
    speedscope = "speedscope"
    collapsed = "collapsed"


class CaptureKind(str, enum.Enum):
    cprofile = "cprofile"
    viztracer = "viztracer"


class RecordAction(str, enum.Enum):
    start = "start"
    stop = "stop"
    status = "status"


AddressArg = Annotated[
    str | None, typer.Argument(help="The scheduler's address, such as tcp://127.0.0.1:8786 (or --scheduler-file).")
]
SchedulerFileOpt = Annotated[
    Path | None, typer.Option(help="Read the scheduler's address from this file.", dir_okay=False)
]
OutputOpt = Annotated[Path | None, typer.Option("--output", "-o", help="Write here instead of to stdout.")]


def _address(address: str | None, scheduler_file: Path | None) -> str:
    if (address is None) == (scheduler_file is None):
        raise typer.BadParameter("give the scheduler's ADDRESS or --scheduler-file (one of the two)")
    if address is not None:
        return address
    assert scheduler_file is not None
    info = read_scheduler_file(scheduler_file)
    if info is None:
        raise typer.BadParameter(f"no scheduler file at {scheduler_file}")
    return str(info["address"])


def _ask(address: str, ask: Any) -> Any:
    from dsched._client import Client
    from dsched._client_loop import DiagnosticsError
    from dsched._comm import CommClosedError

    try:
        with Client(address, timeout=10) as client:
            return ask(client)
    except (DiagnosticsError, ValueError) as exc:
        typer.echo(f"dsched: {exc}", err=True)
        raise typer.Exit(1) from None
    except (CommClosedError, OSError, TimeoutError) as exc:
        typer.echo(f"dsched: cannot reach the scheduler at {address}: {exc}", err=True)
        raise typer.Exit(1) from None


def _emit(payload: bytes | str, output: Path | None) -> None:
    data = payload.encode() if isinstance(payload, str) else payload
    if output is None:
        typer.echo(data.decode(errors="replace"), nl=not data.endswith(b"\n"))
    else:
        output.write_bytes(data)
        typer.echo(f"wrote {len(data):,} bytes to {output}", err=True)


def register(app: typer.Typer) -> None:
    @app.command()
    def profile(
        address: AddressArg = None,
        scheduler_file: SchedulerFileOpt = None,
        server: Annotated[bool, typer.Option(help="The scheduler's own event loop instead of the workers.")] = False,
        last: Annotated[float, typer.Option(min=0.0, help="Only the last SECONDS (0: all the history).")] = 0.0,
        prefix: Annotated[str | None, typer.Option(help="Only tasks whose key prefix starts with this.")] = None,
        worker: Annotated[list[str] | None, typer.Option(help="Only this worker (repeatable).")] = None,
        format: Annotated[ProfileFormat, typer.Option(help="json, speedscope or collapsed stacks.")] = ProfileFormat.json,
        output: OutputOpt = None,
    ) -> None:
        """The sampled profile of the workers' tasks (or of the scheduler, --server), merged."""
        target = _address(address, scheduler_file)
        start = time.time() - last if last else None

        def ask(client: Any) -> Any:
            if server:
                return client.profile_server(start=start, format=format.value)
            return client.profile(start=start, workers=worker or None, prefix=prefix, format=format.value)

        result = _ask(target, ask)
        _emit(result if isinstance(result, str) else json.dumps(result), output)

    @app.command()
    def capture(
        address: AddressArg = None,
        scheduler_file: SchedulerFileOpt = None,
        seconds: Annotated[float, typer.Option(min=0.001, max=300.0, help="How long to profile.")] = 5.0,
        kind: Annotated[CaptureKind, typer.Option(help="cprofile (a pstats file) or viztracer.")] = CaptureKind.cprofile,
        output: Annotated[Path, typer.Option("--output", "-o", help="The file to write.")] = Path("scheduler.pstats"),
    ) -> None:
        """Profile the scheduler's event loop for SECONDS with cProfile or VizTracer; write the file."""
        target = _address(address, scheduler_file)
        data = _ask(target, lambda client: client.capture_profile(seconds=seconds, kind=kind.value))
        _emit(data, output)

    @app.command()
    def record(
        action: Annotated[
            RecordAction, typer.Argument(help="start a recording, stop it, or show its status.")
        ],
        address: AddressArg = None,
        scheduler_file: SchedulerFileOpt = None,
        max_bytes: Annotated[
            str | None, typer.Option(help="start: a lower size bound than the scheduler's (bytes or 500MB, 2GiB).")
        ] = None,
    ) -> None:
        """Record the scheduler's core events for `dsched replay`: start, stop or describe a recording.

        `start` records from now on, into a new file in the scheduler's record
        directory (printed); started mid-run, the file begins with a snapshot of
        the scheduler's state.  `dsched scheduler --record FILE` records from the start.
        """
        target = _address(address, scheduler_file)
        if action is RecordAction.start:
            try:
                limit = parse_bytes(max_bytes) if max_bytes is not None else None
            except ValueError as exc:
                raise typer.BadParameter(str(exc), param_hint="--max-bytes") from None
            state = _ask(target, lambda client: client.start_recording(limit))
        elif action is RecordAction.stop:
            state = _ask(target, lambda client: client.stop_recording())
        else:
            state = _ask(target, lambda client: client.recording_status())
        typer.echo(json.dumps(state, indent=2))
