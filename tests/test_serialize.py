"""What user objects become on the wire (dsched._serialize)."""

from __future__ import annotations

import pickle
import threading

import pytest

from dsched._serialize import (
    Ref,
    RemoteError,
    dumps_args,
    dumps_exception,
    dumps_function,
    dumps_value,
    loads_args,
    loads_exception,
    loads_function,
    loads_value,
    register_ref_type,
    sizeof,
)


class Handle:
    """A stand-in for a client Future: anything with a ``key`` registered as a reference type."""

    def __init__(self, key: str) -> None:
        self.key = key


register_ref_type(Handle)


def test_references_anywhere_in_the_arguments_are_dependencies() -> None:
    args = (1, [Ref("a"), {"x": Handle("b")}], (Ref("a"),))
    payload, keys = dumps_args(args, {"k": Handle("c")})
    assert keys == ["a", "b", "c"]  # in order, each once
    got_args, got_kwargs = loads_args(payload, {"a": 10, "b": 20, "c": 30})
    assert got_args == (1, [10, {"x": 20}], (10,))
    assert got_kwargs == {"k": 30}


def test_arguments_without_references_are_a_plain_pickle() -> None:
    payload, keys = dumps_args((1, "two", [3.0]))
    assert keys == []
    assert pickle.loads(payload) == ((1, "two", [3.0]), None)


def test_lambdas_and_local_classes_fall_back_to_cloudpickle() -> None:
    class Local:
        def __init__(self, v: int) -> None:
            self.v = v

    payload, keys = dumps_args((lambda x: x * 3, Local(4), Ref("d")))
    assert keys == ["d"]
    (func, obj, dep), _ = loads_args(payload, {"d": 5})
    assert func(2) == 6 and obj.v == 4 and dep == 5


def test_a_missing_dependency_is_a_clear_error() -> None:
    payload, _ = dumps_args((Ref("gone"),))
    with pytest.raises(KeyError, match="'gone' is not in this worker's memory"):
        loads_args(payload, {})


def test_functions_round_trip_and_must_be_callable() -> None:
    assert loads_function(dumps_function(lambda x: x + 1))(1) == 2
    with pytest.raises(TypeError, match="not callable"):
        loads_function(pickle.dumps(42))


def test_values_round_trip_including_unpicklable_by_plain_pickle() -> None:
    assert loads_value(dumps_value({"a": [1, 2]})) == {"a": [1, 2]}
    assert loads_value(dumps_value(lambda: 7))() == 7  # type: ignore[operator]


def test_exception_with_remote_traceback_note() -> None:
    def fail() -> None:
        raise ValueError("boom")

    try:
        fail()
    except ValueError as exc:
        payload, text = dumps_exception(exc)
    assert "in fail" in text and text.rstrip().endswith("ValueError: boom")
    back = loads_exception(payload, text)
    assert isinstance(back, ValueError) and str(back) == "boom"
    assert back.__notes__ and "Remote traceback" in back.__notes__[0] and "in fail" in back.__notes__[0]


def test_an_exception_that_cannot_be_pickled_becomes_a_remote_error() -> None:
    class Unpicklable(Exception):
        def __init__(self) -> None:
            super().__init__("holds a lock")
            self.lock = threading.Lock()

    payload, _ = dumps_exception(Unpicklable())
    back = loads_exception(payload)
    assert isinstance(back, RemoteError)
    assert back.type_name.endswith("Unpicklable") and back.message == "holds a lock"


def test_garbage_exception_payload_is_reported_not_raised() -> None:
    back = loads_exception(b"not a pickle", "tb")
    assert isinstance(back, RemoteError) and "could not be unpickled" in str(back)
    back = loads_exception(pickle.dumps("a string, not an exception"))
    assert isinstance(back, RemoteError)


def test_sizeof_is_an_estimate_bounded_in_work() -> None:
    assert sizeof(b"x" * 1000) >= 1000
    big = list(range(1_000_000))
    assert 8_000_000 <= sizeof(big) <= 64_000_000
    assert sizeof({i: str(i) for i in range(1000)}) > 1000 * 50
    assert sizeof(memoryview(b"abc")) == 3

    class WithNbytes:
        nbytes = 5000

    assert sizeof(WithNbytes()) == 5100
    assert sizeof(object()) > 0


def test_a_value_that_cannot_be_pickled_travels_as_an_error() -> None:
    from dsched._serialize import SerializationError, dumps_value_or_error, loads_result

    payload = dumps_value_or_error("k", threading.Lock())
    with pytest.raises(SerializationError, match="'k' .* cannot be pickled"):
        loads_result(payload)
    assert isinstance(loads_value(payload), SerializationError)  # a worker stores it as is
    args, _ = dumps_args((Ref("k"),))
    with pytest.raises(SerializationError):
        loads_args(args, {"k": loads_value(payload)})  # and the dependent task fails with it
    assert loads_result(dumps_value_or_error("ok", [1])) == [1]


def test_sizeof_a_dataframe_estimates_without_measuring_every_string() -> None:
    import sys

    import pandas as pd  # the test extra brings it

    frame = pd.DataFrame({"i": range(10_000), "f": 1.5, "s": [f"name-{i}" for i in range(10_000)]})
    deep = sys.getsizeof(frame)  # pandas' own figure, measuring every string
    assert deep / 4 <= sizeof(frame) <= deep * 4
    assert sizeof(frame.iloc[:100]) < sizeof(frame) / 50  # proportional to the rows
    assert sizeof(pd.DataFrame()) >= 100


def test_a_ref_pickles_only_as_a_task_argument() -> None:
    with pytest.raises(TypeError, match="only be pickled inside a task's arguments"):
        pickle.dumps(Ref("k"))
    payload, keys = dumps_args((Ref("k"),))
    assert keys == ["k"]
    assert loads_args(payload, {"k": 42})[0] == (42,)
