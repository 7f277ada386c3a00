"""What a client gets back: futures found in nested structures, and their values put in place.

Values arrive pickled (views into the frames they came in) and are unpickled
here, in the caller's thread for a synchronous client, off the event loop.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from dsched._future import FINISHED, PENDING, Future, KeyState
from dsched._future_sequence import FutureSequence
from dsched._protocol import payload_view
from dsched._serialize import loads_result

__all__ = ["futures_in", "unpack", "unpack_states", "value_of"]

_SKIP: Final = object()


def _collect(obj: object, out: list[Future]) -> None:
    """The futures in a nested structure of lists, tuples, sets and dicts."""
    if isinstance(obj, Future):
        out.append(obj)
    elif isinstance(obj, FutureSequence):
        out.extend(obj.futures())
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for item in obj:
            _collect(item, out)
    elif isinstance(obj, dict):
        for item in obj.values():
            _collect(item, out)


def _pack(obj: object, values: Mapping[str, object]) -> Any:
    """``obj`` with each future replaced by its value (futures without one are left out)."""
    if isinstance(obj, Future):
        return values.get(obj.key, _SKIP)
    if isinstance(obj, (list, tuple, set, frozenset, FutureSequence)):
        items = [v for v in (_pack(item, values) for item in obj) if v is not _SKIP]
        return items if isinstance(obj, (list, FutureSequence)) else type(obj)(items)
    if isinstance(obj, dict):
        return {k: v for k, v in ((k, _pack(item, values)) for k, item in obj.items()) if v is not _SKIP}
    return obj


def futures_in(obj: Any) -> list[Future]:
    if type(obj) is list and all(type(f) is Future for f in obj):
        return obj
    found: list[Future] = []
    _collect(obj, found)
    return found


def unpack_states(states: list[KeyState], raw: Mapping[str, Any], errors: str) -> list[Any]:
    """The values of ``states`` in order (a ``FutureSequence``'s gather); erred ones raise or are left out."""
    if errors == "raise":
        for state in states:
            if state.status != FINISHED and state.status != PENDING:
                raise state.error()
        for state in states:
            if state.key not in raw:
                raise state.error()
    return [loads_result(payload_view(raw[s.key])) for s in states if errors == "raise" or s.key in raw]


def value_of(state: KeyState, raw: Mapping[str, Any]) -> Any:
    data = raw.get(state.key)
    if data is None or state.status != FINISHED:
        raise state.error()
    return loads_result(payload_view(data))


def unpack(structure: Any, found: list[Future], raw: Mapping[str, Any], errors: str) -> Any:
    """Unpickle the gathered values (in the caller's thread) and put them in place of the futures."""
    if errors == "raise":
        for future in found:
            state = future._state
            if state.status != FINISHED and state.status != PENDING:
                raise state.error()
        for future in found:
            if future.key not in raw:
                raise future._state.error()
    values = {key: loads_result(payload_view(data)) for key, data in raw.items()}
    if isinstance(structure, Future):
        if structure.key not in values:
            raise structure._state.error()
        return values[structure.key]
    if type(structure) is list and structure is found:
        if errors == "raise":
            return [values[f.key] for f in found]
        return [values[f.key] for f in found if f.key in values]
    return _pack(structure, values)
