"""The client's view of the scheduler's diagnostics: profiles, captures, recordings, status.

Mixed into :class:`dsched.Client`; each method is a blocking call on a
synchronous client and a coroutine on an asynchronous one, as the rest of the
client.  Everything goes through the scheduler connection (``Diagnostics``
messages), so it works without the dashboard.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from dsched._client_loop import SchedulerLink

__all__ = ["ClientDiagnostics"]

_FORMATS = ("json", "speedscope", "collapsed")


class ClientDiagnostics:
    """Diagnostics methods of :class:`dsched.Client` (needs its ``_call`` and ``_link``)."""

    # Provided by Client: its connection, and how it runs a coroutine (blocking, or not).
    _link: SchedulerLink
    asynchronous: bool
    _call: Callable[..., Any]

    @property
    def dashboard_link(self) -> str | None:
        """The scheduler's dashboard (``http://host:port/status``), or None if it serves none."""
        welcome = self._link.welcome
        return welcome.dashboard or None if welcome is not None else None

    def profile(
        self,
        start: float | None = None,
        stop: float | None = None,
        workers: str | Iterable[str] | None = None,
        prefix: str | None = None,
        format: str = "json",
        filename: str | Path | None = None,
    ) -> Any:
        """The workers' sampled profiles merged: a call tree (``format="json"``: a dict), or
        speedscope JSON / collapsed stacks (text), written to ``filename`` if given.

        ``start``/``stop``: a window in ``time.time()`` seconds (negative: seconds before now);
        ``workers``: addresses; ``prefix``: only tasks whose key prefix starts with it.
        """
        chosen = [workers] if isinstance(workers, str) else list(workers) if workers is not None else None
        params: dict[str, str | float | bool | None] = {
            "start": start, "stop": stop, "prefix": prefix, "format": _check_format(format),
            "workers": ",".join(chosen) if chosen is not None else None,
        }
        return self._call(self._profile_call, "profile", params, format, filename)

    def profile_server(
        self,
        start: float | None = None,
        stop: float | None = None,
        format: str = "json",
        filename: str | Path | None = None,
    ) -> Any:
        """The scheduler's own event loop, sampled (the /profile-server view); as :meth:`profile`."""
        params: dict[str, str | float | bool | None] = {"start": start, "stop": stop, "format": _check_format(format)}
        return self._call(self._profile_call, "profile-server", params, format, filename)

    def capture_profile(self, seconds: float = 5.0, kind: str = "cprofile", filename: str | Path | None = None) -> Any:
        """Profile the scheduler's event loop for ``seconds`` with cProfile (a pstats file's bytes:
        ``pstats.Stats(filename)``) or VizTracer (``kind="viztracer"``: a trace for ``vizviewer``)."""
        params: dict[str, str | float | bool | None] = {"kind": kind, "seconds": float(seconds)}
        return self._call(self._file_call, "capture", params, filename)

    def start_recording(self, max_bytes: int | None = None) -> Any:
        """Start recording the scheduler's core events, for ``dsched replay``; the recording's
        state as a dict (``path`` is the new file, in the scheduler's record directory).

        Started mid-run, the recording begins with a snapshot of the scheduler's
        state (which holds the scheduler's loop while it is pickled, about a
        second per million tasks).  ``max_bytes`` lowers the scheduler's size bound.
        """
        params: dict[str, str | float | bool | None] = {"action": "start"}
        if max_bytes is not None:
            params["max_bytes"] = float(max_bytes)
        return self._call(self._json_call, "record", params)

    def stop_recording(self) -> Any:
        """Stop the scheduler's recording (started with ``--record FILE`` or
        :meth:`start_recording`); its state (path, bytes, batches) as a dict."""
        return self._call(self._json_call, "record", {"action": "stop"})

    def recording_status(self) -> Any:
        """The recording's state (recording or not, path, bytes, batches, why it stopped) as a dict."""
        return self._call(self._json_call, "record", {"action": "status"})

    def scheduler_status(self) -> Any:
        """Task counts by state, throughput, workers, versions: what /api/status shows."""
        return self._call(self._json_call, "status", {})

    # -- on the loop ----------------------------------------------------------------------

    async def _json_call(self, op: str, params: dict[str, str | float | bool | None]) -> Any:
        return json.loads(await self._link.diagnostics(op, params))

    async def _file_call(self, op: str, params: dict[str, str | float | bool | None], filename: str | Path | None) -> bytes:
        payload = await self._link.diagnostics(op, params)
        if filename is not None:
            Path(filename).write_bytes(payload)
        return payload

    async def _profile_call(
        self, op: str, params: dict[str, str | float | bool | None], format: str, filename: str | Path | None
    ) -> Any:
        payload = await self._link.diagnostics(op, params)
        if filename is not None:
            Path(filename).write_bytes(payload)
        if format == "collapsed":
            return payload.decode()
        return json.loads(payload)


def _check_format(format: str) -> str:
    if format not in _FORMATS:
        raise ValueError(f"format must be one of {', '.join(_FORMATS)}, not {format!r}")
    return format
