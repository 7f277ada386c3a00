"""What user objects become on the wire: functions, arguments, results and exceptions.

The scheduler never looks inside any of this (the payloads are opaque bytes to
it); only clients and workers call these functions.

Functions are pickled with cloudpickle, once per submission (a ``map`` over a
million inputs pickles its function once).

A task's arguments are one pickle of ``(args, kwargs)``.  Where an argument
refers to another task's result (a client ``Future``, or a :class:`Ref` made
from a key of a task-graph dict), the pickle holds a call ``_dependency(key)``
instead of the object: :func:`dumps_args` collects those keys as the task's
dependencies, and on the worker :func:`loads_args` makes the call return the
key's value from its data store.  So references nested anywhere in the
arguments (lists, dicts, custom objects) cost nothing extra to find and
nothing extra to fill in.  The pickler finds them with ``reducer_override``,
which the C pickler skips for the built-in types most arguments are made of
(a ``persistent_id`` hook would be called for every int and string: several
times slower for big nested arguments such as dask's fused tasks).  Plain
:mod:`pickle` is tried first (it is several times faster); cloudpickle is the
fallback for lambdas, local classes and the like.

Results travel between workers and to clients as :func:`dumps_value`
payloads (pickle protocol 5, cloudpickle fallback).  A task's exception travels
as :func:`dumps_exception`: the pickled exception (or, if it cannot be
pickled, a :class:`RemoteError` carrying its type and message) plus its
formatted traceback, which :func:`loads_exception` attaches to the exception
as a note so that it shows when the client re-raises it.
"""

from __future__ import annotations

import io
import pickle
import sys
import threading
import traceback as traceback_module
from collections.abc import Callable, Mapping
from typing import Any, Final

import cloudpickle

__all__ = [
    "Ref",
    "RemoteError",
    "SerializationError",
    "dumps_args",
    "dumps_exception",
    "dumps_function",
    "dumps_value",
    "dumps_value_or_error",
    "dumps_with_refs",
    "loads_args",
    "loads_exception",
    "loads_function",
    "loads_result",
    "loads_value",
    "register_ref_type",
    "sizeof",
]

PROTOCOL: Final = 5

# Types whose instances stand for the result of the task ``obj.key``.
_ref_types: set[type] = set()


class Ref:
    """A reference to the result of the task ``key`` inside a task's arguments."""

    __slots__ = ("key",)

    def __init__(self, key: str) -> None:
        self.key = key

    def __repr__(self) -> str:
        return f"Ref({self.key!r})"

    def __eq__(self, other: object) -> bool:
        return type(other) is Ref and other.key == self.key

    def __hash__(self) -> int:
        return hash(("dsched.Ref", self.key))

    def __reduce__(self) -> tuple[Any, ...]:
        # Only the argument pickler (which turns it into its key) may pickle a
        # reference; anywhere else its meaning would silently be lost.
        raise TypeError(f"a Ref can only be pickled inside a task's arguments: {self.key!r}")


_ref_types.add(Ref)


def register_ref_type(cls: type) -> None:
    """Pickle instances of ``cls`` (which must have a ``key: str``) as references."""
    _ref_types.add(cls)


class _CollectRefs:
    """Pickler mixin: references become ``_dependency(key)`` calls, their keys collected in ``keys``."""

    keys: list[str]

    def _reference(self, obj: Any) -> tuple[Any, ...] | None:
        if type(obj) in _ref_types:
            key: str = obj.key
            self.keys.append(key)
            return (_dependency, (key,))
        return None


class _RefPickler(_CollectRefs, pickle.Pickler):
    def __init__(self, file: io.BytesIO) -> None:
        super().__init__(file, protocol=PROTOCOL)
        self.keys = []

    def reducer_override(self, obj: Any) -> Any:
        reduced = self._reference(obj)
        return NotImplemented if reduced is None else reduced


class _RefCloudPickler(_CollectRefs, cloudpickle.Pickler):  # type: ignore[misc]
    def __init__(self, file: io.BytesIO) -> None:
        super().__init__(file, protocol=PROTOCOL)
        self.keys = []

    def reducer_override(self, obj: Any) -> Any:
        reduced = self._reference(obj)
        return super().reducer_override(obj) if reduced is None else reduced


def dumps_args(args: tuple[Any, ...], kwargs: Mapping[str, Any] | None = None) -> tuple[bytes, list[str]]:
    """Pickle a task's arguments; return the payload and the keys they refer to (in order, deduplicated)."""
    return dumps_with_refs((args, dict(kwargs) if kwargs else None))


def dumps_with_refs(obj: object) -> tuple[bytes, list[str]]:
    """Pickle ``obj``, references as their keys; the payload and those keys (in order, deduplicated)."""
    buf = io.BytesIO()
    pickler: _RefPickler | _RefCloudPickler = _RefPickler(buf)
    try:
        pickler.dump(obj)
    except (pickle.PicklingError, TypeError, AttributeError):
        buf = io.BytesIO()
        pickler = _RefCloudPickler(buf)
        pickler.dump(obj)
    keys = pickler.keys
    if len(keys) > 1:
        keys = list(dict.fromkeys(keys))
    return buf.getvalue(), keys


# The data store ``loads_args`` fills references from, per thread (a worker may
# unpickle arguments on its event loop and in its task threads at once).
_filling = threading.local()


def _dependency(key: str) -> object:
    """A reference's value while :func:`loads_args` unpickles the arguments that hold it."""
    data: Mapping[str, object] | None = getattr(_filling, "data", None)
    if data is None:
        raise pickle.UnpicklingError(f"a reference to {key!r} outside a task's arguments")
    try:
        value = data[key]
    except (KeyError, TypeError):
        raise KeyError(f"dependency {key!r} is not in this worker's memory") from None
    if type(value) is SerializationError:  # it could not be sent here from its worker
        raise value
    return value


def loads_args(payload: bytes | memoryview, data: Mapping[str, object]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Unpickle a task's arguments, filling references from ``data`` (key -> value)."""
    outer = getattr(_filling, "data", None)
    _filling.data = data
    try:
        args, kwargs = pickle.loads(payload)
    finally:
        _filling.data = outer
    return args, kwargs or {}


def dumps_function(func: Callable[..., Any]) -> bytes:
    return cloudpickle.dumps(func, protocol=PROTOCOL)  # type: ignore[no-any-return]


def loads_function(payload: bytes | memoryview) -> Callable[..., Any]:
    func = pickle.loads(payload)
    if not callable(func):
        raise TypeError(f"the task's function is not callable: {type(func).__name__}")
    return func  # type: ignore[no-any-return]


def dumps_value(value: object) -> bytes:
    try:
        return pickle.dumps(value, protocol=PROTOCOL)
    except (pickle.PicklingError, TypeError, AttributeError):
        return cloudpickle.dumps(value, protocol=PROTOCOL)  # type: ignore[no-any-return]


def loads_value(payload: bytes | memoryview) -> object:
    return pickle.loads(payload)


class SerializationError(Exception):
    """A task's value could not be pickled to leave its worker.

    The worker sends this in the value's place; a client's ``result()``
    raises it, and a task that needs the value as a dependency fails with it.
    """

    def __reduce__(self) -> tuple[Any, ...]:
        return (SerializationError, self.args)


def dumps_value_or_error(key: str, value: object) -> bytes:
    """``dumps_value(value)``, or a pickled :class:`SerializationError` saying why not."""
    try:
        return dumps_value(value)
    except Exception as exc:
        message = f"the value of {key!r} (a {type(value).__qualname__}) cannot be pickled: {exc}"
        return dumps_value(SerializationError(message))


def loads_result(payload: bytes | memoryview) -> object:
    """``loads_value`` for a client: a value that could not be sent raises its SerializationError."""
    value = loads_value(payload)
    if type(value) is SerializationError:
        raise value
    return value


class RemoteError(Exception):
    """Stands in for a remote exception that could not be pickled (or unpickled)."""

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message

    def __reduce__(self) -> tuple[Any, ...]:
        return (RemoteError, (self.type_name, self.message))


def dumps_exception(exc: BaseException) -> tuple[bytes, str]:
    """The pickled exception and its formatted traceback (both safe to send)."""
    text = "".join(traceback_module.format_exception(type(exc), exc, exc.__traceback__))
    try:
        payload = cloudpickle.dumps(exc.with_traceback(None), protocol=PROTOCOL)
        pickle.loads(payload)  # some exceptions pickle but do not unpickle
    except Exception:
        payload = cloudpickle.dumps(RemoteError(type(exc).__qualname__, str(exc)), protocol=PROTOCOL)
    return payload, text


def loads_exception(payload: bytes | memoryview, traceback: str = "") -> BaseException:
    """The remote exception, with the remote traceback attached as a note."""
    try:
        exc = pickle.loads(payload)
    except Exception as load_error:
        exc = RemoteError(type(load_error).__name__, f"the remote exception could not be unpickled: {load_error}")
    if not isinstance(exc, BaseException):
        exc = RemoteError(type(exc).__name__, repr(exc)[:200])
    if traceback:
        exc.add_note("\nRemote traceback (most recent call last, on the worker):\n" + _strip_header(traceback))
    return exc  # type: ignore[no-any-return]


def _strip_header(text: str) -> str:
    header = "Traceback (most recent call last):\n"
    return text[len(header) :] if text.startswith(header) else text


# -- sizes ---------------------------------------------------------------------------

_SAMPLE: Final = 10


_INDEX_WIDTH: Final = 8
_OBJECT_WIDTH: Final = 16  # strings and objects: a pointer or offset and a short value


def _width(dtype: Any) -> int:
    itemsize = getattr(dtype, "itemsize", None)
    return itemsize if isinstance(itemsize, int) and getattr(dtype, "kind", "O") not in "OU" else _OBJECT_WIDTH


def sizeof(obj: object) -> int:
    """An estimate of the bytes ``obj`` holds, in O(1) work (containers are sampled)."""
    t = type(obj)
    if t is bytes or t is bytearray or t is str:
        return sys.getsizeof(obj)
    if t is int or t is float or obj is None or t is bool:
        return sys.getsizeof(obj)
    if t is memoryview:
        return obj.nbytes  # type: ignore[attr-defined, no-any-return]
    nbytes = getattr(obj, "nbytes", None)  # numpy arrays, pandas Series and Index, pyarrow ...
    if isinstance(nbytes, int) and not callable(nbytes):
        return nbytes + 100
    dtypes = getattr(obj, "dtypes", None)
    if dtypes is not None and hasattr(obj, "columns"):
        # A pandas DataFrame: its __sizeof__ measures every string (deep=True), which
        # costs more than many tasks do; rows x column widths is an estimate in O(columns).
        try:
            rows = len(obj)  # type: ignore[arg-type]
            width = sum(_width(dtype) for dtype in dtypes)
            return rows * (width + _INDEX_WIDTH) + 100
        except Exception:  # not a DataFrame after all: measure it as any other object below
            pass
    if isinstance(obj, (list, tuple, set, frozenset)) and t in (list, tuple, set, frozenset):
        n = len(obj)
        if n == 0:
            return sys.getsizeof(obj)
        sample = obj[:_SAMPLE] if isinstance(obj, (list, tuple)) else list(obj)[:_SAMPLE]
        return sys.getsizeof(obj) + n * sum(sizeof(x) for x in sample) // len(sample)
    if t is dict and isinstance(obj, dict):
        d: dict[Any, Any] = obj
        n = len(d)
        if n == 0:
            return sys.getsizeof(d)
        sample_items = list(d.items())[:_SAMPLE]
        per_item = sum(sizeof(k) + sizeof(v) for k, v in sample_items) // len(sample_items)
        return sys.getsizeof(d) + n * per_item
    try:
        return sys.getsizeof(obj)
    except TypeError:
        return 64
