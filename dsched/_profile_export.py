"""Profile trees (the shared JSON form of ``dsched._profiler``) in other tools' formats.

* :func:`to_speedscope`: speedscope's file format
  (https://www.speedscope.app/file-format-schema.json), one "sampled" profile
  with one sample per distinct stack, weighted by its own sample count.
* :func:`to_collapsed`: "collapsed" (folded) stacks, one ``a;b;c <count>`` line
  per distinct stack, as read by flamegraph.pl, inferno and speedscope.

Both validate the tree first (``ValueError`` on malformed input).  Samples
counted on the root itself (stacks with no frame left after trimming, or folded
there by a node cap) are written as the single frame ``all``, so that the
weights always add up to the tree's total.
"""

from __future__ import annotations

from typing import Any, Final

from dsched._profiler import CallTree, FrameId
from dsched._version import __version__

__all__ = ["SPEEDSCOPE_SCHEMA", "to_collapsed", "to_speedscope"]

SPEEDSCOPE_SCHEMA: Final = "https://www.speedscope.app/file-format-schema.json"
_ROOT: Final[FrameId] = ("", 0, "all")


def to_speedscope(tree_json: object, name: str, *, interval: float | None = None) -> dict[str, Any]:
    """A speedscope document of ``tree_json``.

    Weights are sample counts (unit ``"none"``), or seconds when the sampling
    ``interval`` is given (each sample then weighs ``interval`` seconds).
    """
    tree = CallTree.from_json(tree_json)
    index: dict[FrameId, int] = {}
    frames: list[dict[str, Any]] = []
    samples: list[list[int]] = []
    counts: list[int] = []
    for stack, count in tree.stacks():
        sample = []
        for ident in stack or (_ROOT,):
            at = index.get(ident)
            if at is None:
                at = index[ident] = len(frames)
                filename, line, function = ident
                frames.append({"name": function, "file": filename, "line": line})
            sample.append(at)
        samples.append(sample)
        counts.append(count)
    scale = 1.0 if interval is None else interval
    weights: list[int] | list[float] = counts if interval is None else [c * scale for c in counts]
    return {
        "$schema": SPEEDSCOPE_SCHEMA,
        "shared": {"frames": frames},
        "profiles": [{
            "type": "sampled",
            "name": name,
            "unit": "none" if interval is None else "seconds",
            "startValue": 0,
            "endValue": tree.count if interval is None else tree.count * scale,
            "samples": samples,
            "weights": weights,
        }],
        "name": name,
        "activeProfileIndex": 0,
        "exporter": f"dsched {__version__}",
    }


def to_collapsed(tree_json: object) -> str:
    """Collapsed stacks: ``name (filename:line);... <count>`` per distinct stack, root first."""
    tree = CallTree.from_json(tree_json)
    names: dict[FrameId, str] = {}
    lines = []
    for stack, count in tree.stacks():
        parts = []
        for ident in stack or (_ROOT,):
            text = names.get(ident)
            if text is None:
                text = names[ident] = _collapsed_frame(ident)
            parts.append(text)
        lines.append(f"{';'.join(parts)} {count}\n")
    return "".join(lines)


def _collapsed_frame(ident: FrameId) -> str:
    filename, line, name = ident
    if ident == _ROOT:
        return name
    # ";" separates frames and a newline ends a stack: neither may appear inside one.
    text = f"{name} ({filename}:{line})"
    return text.replace(";", ",").replace("\n", " ").replace("\r", " ")
