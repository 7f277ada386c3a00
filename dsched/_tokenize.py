"""Task keys the way Dask makes them: ``f"{funcname}-{token}"`` with a 32-hex-digit token.

A *pure* task's token is a digest of what defines it - its pickled function and
its pickled arguments - so the same call made twice names the same key (and the
scheduler computes it once).  The arguments are pickled anyway to be sent, so
hashing them costs one ``blake2b`` over bytes already in hand: the function's
digest is the hash *key*, the argument bytes the message.  An impure task gets
a random token.

Pickling a function can cost tens of microseconds (cloudpickle), so functions
that cloudpickle pickles *by reference* (importable, module-level ones, whose
bytes never change) are pickled once and cached; functions pickled by value
(lambdas, closures, ``__main__`` functions) are pickled on every submission,
so a later change to what they capture is never hidden by a stale cache.
"""

from __future__ import annotations

import functools
import hashlib
import pickle
import types
import uuid
from collections.abc import Callable
from typing import Any, Final

from dsched._serialize import PROTOCOL, dumps_args, dumps_function, dumps_value, dumps_with_refs

__all__ = ["PickledFunction", "funcname", "pickle_args", "pickle_function", "pickle_row", "random_token", "token", "value_key"]

TOKEN_BYTES: Final = 16  # 32 hex digits, as Dask's tokens
_MAX_NAME: Final = 50
_CACHE_SIZE: Final = 256


def funcname(func: Callable[..., Any]) -> str:
    """A short name for a callable, as Dask's ``funcname`` (used as the key prefix).

    ``functools.partial`` is unwrapped, ``<lambda>`` becomes ``lambda``, and a
    callable object without ``__name__`` is named after its type.
    """
    while isinstance(func, functools.partial):
        func = func.func
    name = getattr(func, "__name__", None)
    if not isinstance(name, str):
        name = type(func).__name__
    if name == "<lambda>":
        return "lambda"
    return name[:_MAX_NAME]


class PickledFunction:
    """A function's pickle and the digest that salts its tasks' tokens."""

    __slots__ = ("data", "digest")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.digest = hashlib.blake2b(data, digest_size=32).digest()


_cache: dict[Callable[..., Any], PickledFunction] = {}


def _pickled_by_reference(func: Callable[..., Any]) -> bool:
    """Whether cloudpickle will write ``func`` as a module and a name (so its bytes are stable)."""
    if type(func) is types.BuiltinFunctionType:
        return True
    if type(func) is not types.FunctionType:
        return False
    module = getattr(func, "__module__", None)
    qualname = getattr(func, "__qualname__", "")
    return bool(module) and module != "__main__" and "<" not in qualname


def pickle_function(func: Callable[..., Any]) -> PickledFunction:
    """Pickle ``func`` once per submission (or once per process, if it is pickled by reference)."""
    cached = _cache.get(func) if _pickled_by_reference(func) else None
    if cached is not None:
        return cached
    pickled = PickledFunction(dumps_function(func))
    if _pickled_by_reference(func):
        if len(_cache) >= _CACHE_SIZE:
            _cache.clear()
        _cache[func] = pickled
    return pickled


# Arguments of these types cannot hold a dependency reference, so they are pickled
# with plain ``pickle.dumps`` (8x cheaper than the reference-collecting pickler,
# and the same bytes).
_ATOMIC: Final = frozenset({int, float, str, bytes, bool, type(None), complex})


def pickle_args(args: tuple[Any, ...], kwargs: dict[str, Any] | None) -> tuple[bytes, list[str]]:
    """A task's pickled arguments and the keys they refer to (``dsched._serialize.dumps_args``),
    with a fast path for the common case of a few plain scalars."""
    atomic = _ATOMIC
    for arg in args:
        if type(arg) not in atomic:
            return dumps_args(args, kwargs)
    if kwargs:
        for value in kwargs.values():
            if type(value) not in atomic:
                return dumps_args(args, kwargs)
        return pickle.dumps((args, dict(kwargs)), PROTOCOL), []
    return pickle.dumps((args, None), PROTOCOL), []


def pickle_row(row: tuple[Any, ...]) -> tuple[bytes, list[str]]:
    """One partition's argument tuple, pickled alone (a Map layer's per-partition payload), and the keys it refers to."""
    atomic = _ATOMIC
    for arg in row:
        if type(arg) not in atomic:
            return dumps_with_refs(row)
    return pickle.dumps(row, PROTOCOL), []


def token(payload: bytes, salt: bytes) -> str:
    """The 32-hex-digit token of a task: its argument bytes hashed with its function's digest."""
    return hashlib.blake2b(payload, digest_size=TOKEN_BYTES, key=salt).hexdigest()


def random_token() -> str:
    """A token for an impure task: never the same twice."""
    return uuid.uuid4().hex


def value_key(value: object, pure: bool = True) -> tuple[str, bytes]:
    """A scattered value's key (``f"{type name}-{token}"``) and its pickle."""
    data = dumps_value(value)
    suffix = hashlib.blake2b(data, digest_size=TOKEN_BYTES).hexdigest() if pure else random_token()
    return f"{type(value).__name__}-{suffix}", data
