"""The scheduler's records: key names to prefixes and groups, and state counts."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sched_core import STATE_NAMES, key_group, key_split, state_name
from sched_core._model import StateCounts
from sched_core._states import FORGOTTEN, N_STATES


@pytest.mark.parametrize(
    ("key", "prefix"),
    [
        ("x", "x"),
        ("x-1", "x"),
        ("x-1-2-3", "x"),
        ("inc-1f3a", "inc"),
        ("hello-world-1", "hello-world"),
        ("read-csv-1f3a9b2c4d5e", "read-csv"),
        # An 8-character lowercase hex word is a token, not a name.
        ("x-abcdefab", "x"),
        ("sum-aggregate-abcdef12", "sum-aggregate"),
        ("x-y1", "x"),
        # Tuple keys, as their string form: the first element's prefix.
        ("('x-2', 1)", "x"),
        ("('x', 1)", "x"),
        ('("x-2", 0, 1)', "x"),
        ("('sum-partial-1f3a9b2c', 0)", "sum-partial"),
        ("['a-b', 1]", "a-b"),
        ("('x', 1)", "x"),
    ],
)
def test_key_split(key: str, prefix: str) -> None:
    assert key_split(key) == prefix


@pytest.mark.parametrize(
    ("key", "group"),
    [
        ("x", "x"),
        ("x-1", "x"),
        ("inc-1f3a9b2c", "inc"),
        ("hello-world-1", "hello-world"),
        # A tuple key's group is its whole first element, token included, so
        # two layers with the same function but different tokens are two groups.
        ("('x-2', 1)", "x-2"),
        ('("x-2", 0, 1)', "x-2"),
        ("('sum-partial-1f3a9b2c', 0)", "sum-partial-1f3a9b2c"),
        ("('x', 1)", "x"),
        ("(('x-2', 1), 2)", "x-2"),
        ('[["y", 0], 1]', "y"),
    ],
)
def test_key_group(key: str, group: str) -> None:
    assert key_group(key) == group


def test_key_split_of_empty_key_is_a_placeholder() -> None:
    assert key_split("") == "?"
    assert key_group("") == "?"


def test_tuple_keys_of_one_layer_share_a_group_and_layers_share_a_prefix() -> None:
    keys_a = [f"('sum-aaaa1111', {i})" for i in range(5)]
    keys_b = [f"('sum-bbbb2222', {i}, {j})" for i in range(3) for j in range(2)]
    assert {key_group(k) for k in keys_a} == {"sum-aaaa1111"}
    assert {key_group(k) for k in keys_b} == {"sum-bbbb2222"}
    assert {key_split(k) for k in keys_a + keys_b} == {"sum"}


names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8)


@settings(max_examples=200, deadline=None)
@given(names, st.integers(0, 10**6), st.integers(0, 100))
def test_key_split_of_generated_keys(name: str, token: int, index: int) -> None:
    # "name-<number>" and "('name-<number>', i)" both split to "name".
    assert key_split(f"{name}-{token}") == name
    assert key_split(f"('{name}-{token}', {index})") == name
    assert key_group(f"('{name}-{token}', {index})") == f"{name}-{token}"
    assert key_group(f"{name}-{token}") == name


def test_state_counts_start_at_zero() -> None:
    counts = StateCounts()
    assert counts.as_list() == [0] * N_STATES
    assert all(counts.get(s) == 0 for s in range(N_STATES))


def test_state_counts_each_state_is_counted_separately() -> None:
    counts = StateCounts()
    for s in range(N_STATES):
        counts.add(s, s + 1)
    assert counts.as_list() == [s + 1 for s in range(N_STATES)]
    assert counts.released == 1
    assert counts.waiting == 2
    assert counts.queued == 3
    assert counts.no_worker == 4
    assert counts.processing == 5
    assert counts.memory == 6
    assert counts.erred == 7
    assert counts.forgotten == 8


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, N_STATES - 1), st.integers(0, N_STATES - 1)), max_size=60))
def test_state_counts_move_keeps_the_total(moves: list[tuple[int, int]]) -> None:
    counts = StateCounts()
    model = [0] * N_STATES
    for old, new in moves:
        counts.move(old, new)
        model[old] -= 1
        model[new] += 1
        assert counts.as_list() == model
        assert sum(counts.as_list()) == 0


def test_state_names() -> None:
    assert STATE_NAMES == (
        "released",
        "waiting",
        "queued",
        "no-worker",
        "processing",
        "memory",
        "erred",
        "forgotten",
    )
    assert [state_name(s) for s in range(N_STATES)] == list(STATE_NAMES)
    assert state_name(FORGOTTEN) == "forgotten"
    assert state_name(N_STATES).startswith("unknown")
    assert state_name(-1).startswith("unknown")
