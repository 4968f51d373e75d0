"""Scores by slices other than expression kinds, from per-expression records.

Slices (names in :data:`SLICES`, chosen by a setting: a list of these names):

* ``length``: by the video's frame count, bins :data:`LENGTH_BINS` (inclusive frame ranges);
* ``size``: by the target's mean area fraction over the frames where it is visible
  (``ExpressionRecord.target_area``), bins :data:`SIZE_BINS` (``[lo, hi)``), plus the bin
  ``never visible`` for a target that is absent from every frame;
* ``absent``: frames where the target is absent (empty ground truth, which MeViS's scorer counts
  as J = F = 1 when the prediction is empty too) against frames where it is present. Bin
  ``absent``: per expression, the mean J and F over its empty-ground-truth frames, then the mean
  over the expressions that have any; ``pred_empty`` = the fraction of all those frames predicted
  empty (pooled over frames). Bin ``present``: likewise over the frames with a visible target;
  ``pred_empty`` there is the fraction of frames missed outright.

:func:`slice_scores` returns ``{slice: {bin: {"J", "F", "JF", "T", "n", ...}}}``: J, F, J&F and
T (temporal consistency, REM's ``mean |J_t - J_(t-1)|``, lower is better) as means over the
bin's expressions, times ``scale`` (percent by default), and ``n`` the number of expressions.
T is None where it has no value (no expression of the bin has two frames, and in the ``absent``
slice, whose bins are sets of frames, not of expressions' whole sequences). The ``absent`` slice's
bins also give ``frames`` (how many frames) and ``pred_empty``. Bins without an expression are
left out; bins keep the order given here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from rvosflow.errors import SliceSettingError
from rvosflow.metrics.records import ExpressionRecord

__all__ = ["LENGTH_BINS", "SIZE_BINS", "SLICES", "SliceSettingError", "check_slices", "slice_scores"]

SLICES = ("length", "size", "absent")

# (label, first frame count, last frame count): one frame = images (RefCOCO), 17 = a training
# clip and the synthetic benchmark's videos, then doubling up to MeViS's long videos.
LENGTH_BINS: tuple[tuple[str, int, float], ...] = (
    ("1", 1, 1),
    ("2-16", 2, 16),
    ("17-32", 17, 32),
    ("33-64", 33, 64),
    ("65-128", 65, 128),
    (">128", 129, math.inf),
)

# (label, lo, hi): mean target area fraction in [lo, hi), over the frames where it is visible.
SIZE_BINS: tuple[tuple[str, float, float], ...] = (
    ("<1%", 0.0, 0.01),
    ("1-5%", 0.01, 0.05),
    ("5-15%", 0.05, 0.15),
    (">=15%", 0.15, math.inf),
)
NEVER_VISIBLE = "never visible"



def check_slices(names: Iterable[str], setting: str = "slices") -> tuple[str, ...]:
    """``names`` as a tuple, each one of :data:`SLICES`; else a SliceSettingError naming ``setting``."""
    names = tuple(names)
    bad = [n for n in names if n not in SLICES]
    if bad:
        raise SliceSettingError(f"{setting}: expected slice names among {', '.join(SLICES)}, found {', '.join(map(repr, bad))}")
    return names


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _scores(group: Sequence[ExpressionRecord], scale: float) -> dict:
    j = _mean([r.J for r in group])
    f = _mean([r.F for r in group])
    tc = _mean([r.TC for r in group if not math.isnan(r.TC)])
    return {"J": scale * j, "F": scale * f, "JF": scale * (j + f) / 2,
            "T": None if tc is None else scale * tc, "n": len(group)}


def _length_bin(r: ExpressionRecord) -> str:
    return next(label for label, lo, hi in LENGTH_BINS if lo <= r.frames <= hi)


def _size_bin(r: ExpressionRecord) -> str:
    if math.isnan(r.target_area):
        return NEVER_VISIBLE
    return next(label for label, lo, hi in SIZE_BINS if lo <= r.target_area < hi)


def _binned(records: Sequence[ExpressionRecord], bin_of, labels: Sequence[str], scale: float) -> dict:
    groups: dict[str, list[ExpressionRecord]] = {}
    for r in records:
        groups.setdefault(bin_of(r), []).append(r)
    return {label: _scores(groups[label], scale) for label in labels if label in groups}


def _frames_bin(per_expression: list[tuple[float, float]], frames: int, pred_empty: int, scale: float) -> dict:
    """A bin of frames: per-expression (J, F) means over its frames, then the mean over expressions."""
    j = _mean([x[0] for x in per_expression])
    f = _mean([x[1] for x in per_expression])
    return {"J": scale * j, "F": scale * f, "JF": scale * (j + f) / 2, "T": None, "n": len(per_expression),
            "frames": frames, "pred_empty": pred_empty / frames}


def _absent(records: Sequence[ExpressionRecord], scale: float) -> dict:
    out = {}
    absent = [r for r in records if r.empty_frames]
    if absent:
        out["absent"] = _frames_bin([(r.empty_J, r.empty_F) for r in absent], sum(r.empty_frames for r in absent),
                                    sum(r.both_empty_frames for r in absent), scale)
    present = [r for r in records if r.frames > r.empty_frames]
    if present:
        # the present frames' means follow from the whole sequence's and the absent frames' ones
        def present_mean(whole: float, on_empty: float, r: ExpressionRecord) -> float:
            on_empty_sum = on_empty * r.empty_frames if r.empty_frames else 0.0
            return (whole * r.frames - on_empty_sum) / (r.frames - r.empty_frames)

        out["present"] = _frames_bin(
            [(present_mean(r.J, r.empty_J, r), present_mean(r.F, r.empty_F, r)) for r in present],
            sum(r.frames - r.empty_frames for r in present),
            sum(r.pred_empty_frames - r.both_empty_frames for r in present), scale)
    return out


def slice_scores(records: Iterable[ExpressionRecord], names: Iterable[str] = SLICES,
                 scale: float = 100.0) -> dict[str, dict[str, dict]]:
    """``{slice: {bin: {"J", "F", "JF", "T", "n", ...}}}`` for the named slices (module docstring)."""
    names = check_slices(names)
    records = list(records)
    out: dict[str, dict[str, dict]] = {}
    for name in names:
        if name == "length":
            out[name] = _binned(records, _length_bin, [b[0] for b in LENGTH_BINS], scale)
        elif name == "size":
            out[name] = _binned(records, _size_bin, [b[0] for b in SIZE_BINS] + [NEVER_VISIBLE], scale)
        else:
            out[name] = _absent(records, scale)
    return out
