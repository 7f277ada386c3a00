"""dsched._profile_export: speedscope documents and collapsed stacks of profile trees."""

from __future__ import annotations

import json
from typing import Any

import pytest

from dsched._profile_export import SPEEDSCOPE_SCHEMA, to_collapsed, to_speedscope
from dsched._profiler import CallTree, FrameId
from dsched._version import __version__


def node(name: str, filename: str, line: int, count: int, *children: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "filename": filename, "line": line, "count": count,
            "children": list(children)}


# all 10 -> main 10 (1 own) -> work 6 (2 own) -> inner 4; main -> idle 3
GOLDEN = node(
    "all", "", 0, 10,
    node("main", "app.py", 1, 10,
         node("work", "app.py", 10, 6, node("inner", "lib.py", 5, 4)),
         node("idle", "app.py", 20, 3)),
)


def test_golden_collapsed() -> None:
    assert to_collapsed(GOLDEN) == (
        "main (app.py:1) 1\n"
        "main (app.py:1);work (app.py:10) 2\n"
        "main (app.py:1);work (app.py:10);inner (lib.py:5) 4\n"
        "main (app.py:1);idle (app.py:20) 3\n"
    )


def test_golden_speedscope() -> None:
    assert to_speedscope(GOLDEN, "worker-1") == {
        "$schema": SPEEDSCOPE_SCHEMA,
        "shared": {"frames": [
            {"name": "main", "file": "app.py", "line": 1},
            {"name": "work", "file": "app.py", "line": 10},
            {"name": "inner", "file": "lib.py", "line": 5},
            {"name": "idle", "file": "app.py", "line": 20},
        ]},
        "profiles": [{
            "type": "sampled", "name": "worker-1", "unit": "none", "startValue": 0,
            "endValue": 10, "samples": [[0], [0, 1], [0, 1, 2], [0, 3]], "weights": [1, 2, 4, 3],
        }],
        "name": "worker-1",
        "activeProfileIndex": 0,
        "exporter": f"dsched {__version__}",
    }


def a_bigger_tree() -> dict[str, Any]:
    tree = CallTree()
    for i in range(40):
        stack: list[FrameId] = [("main.py", 1, "main")]
        stack += [(f"mod{i % 3}.py", 10 * j, f"fn{(i * j) % 7}") for j in range(1, i % 6 + 1)]
        tree.add_stack(stack, count=i % 4 + 1)
    tree.add_stack([], count=2)  # samples counted on the root itself
    return tree.to_json()


def test_speedscope_structure_is_valid_and_weights_add_up() -> None:
    data = a_bigger_tree()
    doc = to_speedscope(data, "profile")
    json.dumps(doc)  # serialisable as is
    frames = doc["shared"]["frames"]
    (profile,) = doc["profiles"]
    assert set(doc) >= {"$schema", "shared", "profiles", "name", "exporter"}
    assert set(profile) == {"type", "name", "unit", "startValue", "endValue", "samples", "weights"}
    assert all(set(frame) == {"name", "file", "line"} for frame in frames)
    assert len({(f["name"], f["file"], f["line"]) for f in frames}) == len(frames)
    assert len(profile["samples"]) == len(profile["weights"])
    assert all(0 <= i < len(frames) for sample in profile["samples"] for i in sample)
    assert all(sample for sample in profile["samples"])
    assert all(w > 0 for w in profile["weights"])
    assert sum(profile["weights"]) == profile["endValue"] == data["count"]
    # The root's own samples appear as the single frame "all".
    root_frames = [i for i, f in enumerate(frames) if f["name"] == "all"]
    assert [w for s, w in zip(profile["samples"], profile["weights"]) if s == root_frames] == [2]


def test_speedscope_in_seconds() -> None:
    doc = to_speedscope(GOLDEN, "p", interval=0.01)
    (profile,) = doc["profiles"]
    assert profile["unit"] == "seconds"
    assert profile["weights"] == pytest.approx([0.01, 0.02, 0.04, 0.03])
    assert profile["endValue"] == pytest.approx(0.1)


def test_collapsed_lines_add_up_to_the_total() -> None:
    data = a_bigger_tree()
    text = to_collapsed(data)
    assert text.endswith("\n")
    lines = text.splitlines()
    assert len(lines) == len(set(line.rpartition(" ")[0] for line in lines))  # distinct stacks
    assert sum(int(line.rpartition(" ")[2]) for line in lines) == data["count"]
    assert "all 2" in lines
    assert all(line.startswith("main (main.py:1)") for line in lines if line != "all 2")


def test_collapsed_keeps_separators_out_of_frame_names() -> None:
    tree = CallTree()
    tree.add_stack([("odd;file.py", 3, "f;g\nh")])
    assert to_collapsed(tree.to_json()) == "f,g h (odd,file.py:3) 1\n"


def test_empty_tree() -> None:
    empty = CallTree().to_json()
    assert to_collapsed(empty) == ""
    (profile,) = to_speedscope(empty, "empty")["profiles"]
    assert profile["samples"] == [] and profile["weights"] == [] and profile["endValue"] == 0


@pytest.mark.parametrize("export", [to_collapsed, lambda data: to_speedscope(data, "x")])
def test_exports_reject_malformed_trees(export: Any) -> None:
    with pytest.raises(ValueError, match="count must be an integer"):
        export(node("all", "", 0, -1))
    with pytest.raises(ValueError, match="must be an object"):
        export([GOLDEN])
