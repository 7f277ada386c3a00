"""Keys and tokens: Dask's key format, determinism of pure keys, the argument fast path."""

from __future__ import annotations

import functools
import re

from _client_helpers import add, inc

from dsched._serialize import Ref, dumps_args, loads_args
from dsched._tokenize import funcname, pickle_args, pickle_function, random_token, token, value_key

HEX32 = re.compile(r"^[0-9a-f]{32}$")


class Adder:
    def __call__(self, x: int) -> int:
        return x


def test_funcname_like_dask() -> None:
    assert funcname(inc) == "inc"
    assert funcname(lambda x: x) == "lambda"
    assert funcname(functools.partial(functools.partial(add, 1), 2)) == "add"
    assert funcname(Adder()) == "Adder"
    assert funcname(len) == "len"

    def a_very_long_function_name_that_goes_on_and_on_and_on_forever_and_ever() -> None:
        pass

    assert len(funcname(a_very_long_function_name_that_goes_on_and_on_and_on_forever_and_ever)) == 50


def test_tokens_are_32_hex_digits_and_deterministic() -> None:
    salt = pickle_function(inc).digest
    payload, _ = pickle_args((1,), None)
    assert HEX32.match(token(payload, salt))
    assert token(payload, salt) == token(pickle_args((1,), None)[0], salt)
    assert token(payload, salt) != token(pickle_args((2,), None)[0], salt)
    assert token(payload, salt) != token(payload, pickle_function(add).digest)  # the function counts
    assert token(pickle_args((1,), {"y": 2})[0], salt) != token(pickle_args((1,), {"y": 3})[0], salt)
    assert HEX32.match(random_token()) and random_token() != random_token()


def test_fast_path_pickles_like_dumps_args() -> None:
    """Both paths must give the same bytes, or submit and map would name one call differently."""
    for args, kwargs in [((1,), None), ((1, 2.5, "x", b"y", None, True), None), ((3,), {"k": "v"}), ((), None)]:
        assert pickle_args(args, kwargs) == dumps_args(args, kwargs)
        assert loads_args(pickle_args(args, kwargs)[0], {}) == (args, kwargs or {})
    # Anything else goes through the reference-collecting pickler.
    payload, deps = pickle_args(([Ref("a"), {"b": Ref("b")}],), {"c": Ref("a")})
    assert deps == ["a", "b"]
    assert loads_args(payload, {"a": 1, "b": 2}) == (([1, {"b": 2}],), {"c": 1})


def test_module_functions_are_pickled_once_closures_every_time() -> None:
    assert pickle_function(inc) is pickle_function(inc)
    offset = [1]

    def closure(x: int) -> int:
        return x + offset[0]

    first = pickle_function(closure)
    offset[0] = 2
    second = pickle_function(closure)
    assert first is not second and first.data != second.data  # a change is never hidden by a cache


def test_value_keys() -> None:
    key, data = value_key([1, 2, 3])
    assert key.startswith("list-") and HEX32.match(key.split("-", 1)[1])
    assert value_key([1, 2, 3])[0] == key
    assert value_key([1, 2, 4])[0] != key
    assert value_key([1, 2, 3], pure=False)[0] != key
    assert value_key(5)[0].startswith("int-")
