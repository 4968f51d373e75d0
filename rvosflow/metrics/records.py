"""Per-expression records: what every later analysis of a scored run needs, one line per
(video, expression), and the sidecar file that keeps them.

:func:`expression_record` scores one expression's binary prediction against its ground truth
(``[T,H,W]``) once and keeps:

* ``J``, ``F``: the means over the expression's frames (DAVIS semantics,
  :func:`~rvosflow.metrics.functional.jaccard_and_boundary_f`), exactly what :class:`JandF` adds up;
* ``TC``: REM's temporal consistency, ``mean |J_t - J_(t-1)|`` (lower is better; NaN for one frame,
  :func:`~rvosflow.metrics.functional.temporal_consistency`);
* the per-frame facts the slices need (:mod:`rvosflow.metrics.slices`): the frame count, the
  target's mean area fraction over the frames where it is visible (NaN when it never is), how
  many frames have an empty ground truth, how many an empty prediction, how many both, and the
  mean J and F over the empty-ground-truth frames (NaN when there are none).

Scores are fractions in [0, 1], as :class:`JandF` computes them; :func:`flat_scores` turns records
into the same flat dict as ``JandF.compute()`` (plus ``TC``), so the two agree bit for bit when
fed the same expressions in the same order.

The sidecar (:func:`write_records` / :func:`read_records`) is a CSV with the header
:data:`COLUMNS`, one row per expression, floats written with Python's shortest round-trip
``repr`` (a read gives back exactly the records written), NaN as an empty field. It sits beside
a run's score file: :func:`sidecar_path` (``results.json`` → ``results.per_expression.csv``).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch

from rvosflow import atomic
from rvosflow.data.schema import EXPRESSION_KINDS
from rvosflow.errors import RecordsFileError
from rvosflow.metrics.functional import _as_bool_numpy, jaccard_and_boundary_f, temporal_consistency

__all__ = [
    "COLUMNS",
    "ExpressionRecord",
    "RecordsFileError",
    "expression_record",
    "flat_scores",
    "read_records",
    "record_from_frames",
    "sidecar_path",
    "write_records",
]



@dataclass(frozen=True)
class ExpressionRecord:
    """One scored expression. Scores are fractions; NaN where a figure has no value."""

    video_id: str
    exp_id: str
    kind: str  # one of EXPRESSION_KINDS, "" = unknown
    frames: int  # T
    J: float  # mean over the T frames
    F: float
    TC: float  # mean |J_t - J_(t-1)|, lower is better; NaN when T == 1
    target_area: float  # mean |G_t| / (H·W) over the frames where the target is visible; NaN if never
    empty_frames: int  # frames whose ground truth is empty (target absent)
    pred_empty_frames: int  # frames whose prediction is empty
    both_empty_frames: int  # frames where both are empty (J = F = 1 there)
    empty_J: float  # mean J over the empty-ground-truth frames; NaN when there are none
    empty_F: float

    @property
    def JF(self) -> float:
        return (self.J + self.F) / 2

    @property
    def key(self) -> tuple[str, str]:
        """What pairs two runs' records: (video_id, exp_id)."""
        return (self.video_id, self.exp_id)


COLUMNS = tuple(f.name for f in fields(ExpressionRecord))
_INT_COLUMNS = {"frames", "empty_frames", "pred_empty_frames", "both_empty_frames"}
_STR_COLUMNS = {"video_id", "exp_id", "kind"}


def _check_kind(kind: str) -> str:
    if kind and kind not in EXPRESSION_KINDS:
        raise ValueError(f"unknown expression kind {kind!r}; expected one of {', '.join(EXPRESSION_KINDS)}")
    return kind


def _torch_mean(x: np.ndarray) -> float:
    """The float64 mean as JandF takes it (torch's reduction; numpy's pairwise sum can differ in
    the last bit), so that aggregates over records equal JandF's exactly."""
    return float(torch.from_numpy(x).mean())


def record_from_frames(video_id: str, exp_id: str, kind: str, j, f, target, pred_empty) -> ExpressionRecord:
    """A record from per-frame ``J`` and ``F`` (``[T]``), the ground truth (bool ``[T,H,W]``) and
    which frames the prediction leaves empty (bool ``[T]``).

    Split from :func:`expression_record` so that an expression without a prediction can be
    recorded as the official scorers count it: J = F = 0 on every frame, with ``pred_empty`` all
    False (an empty prediction would have scored 1 where the target is absent)."""
    j = np.asarray(j, dtype=np.float64).reshape(-1)
    f = np.asarray(f, dtype=np.float64).reshape(-1)
    gt = _as_bool_numpy(target)
    pred_empty = np.asarray(pred_empty, dtype=bool).reshape(-1)
    t = j.size
    if t == 0:
        raise ValueError("an expression needs at least one frame")
    if not (f.size == pred_empty.size == gt.shape[0] == t):
        raise ValueError(f"per-frame lengths differ: J {t}, F {f.size}, target {gt.shape[0]}, pred_empty {pred_empty.size}")
    area = gt.reshape(t, -1).mean(axis=1)  # fraction of the frame the target covers
    empty = area == 0
    visible = area[~empty]
    return ExpressionRecord(
        video_id=str(video_id), exp_id=str(exp_id), kind=_check_kind(kind), frames=t,
        J=_torch_mean(j), F=_torch_mean(f), TC=temporal_consistency(j),
        target_area=float(visible.mean()) if visible.size else math.nan,
        empty_frames=int(empty.sum()), pred_empty_frames=int(pred_empty.sum()),
        both_empty_frames=int((empty & pred_empty).sum()),
        empty_J=float(j[empty].mean()) if empty.any() else math.nan,
        empty_F=float(f[empty].mean()) if empty.any() else math.nan,
    )


def expression_record(preds, target, video_id: str = "", exp_id: str = "", kind: str = "",
                      bound_th: float = 0.008) -> ExpressionRecord:
    """Score one expression: binary ``preds`` and ``target`` ``[T,H,W]`` (torch or numpy, non-zero =
    foreground), J and F per frame in one pass, then :func:`record_from_frames`."""
    p = _as_bool_numpy(preds)
    g = _as_bool_numpy(target)
    j, f = jaccard_and_boundary_f(p, g, bound_th)
    pred_empty = ~p.reshape(p.shape[0], -1).any(axis=1)
    return record_from_frames(video_id, exp_id, kind, j.numpy(), f.numpy(), g, pred_empty)


# ----------------------------------------------------------------------------- aggregates


def _mean_tc(records: Sequence[ExpressionRecord]) -> tuple[float, int]:
    """Mean TC over the records that have one (T >= 2), and their number."""
    values = [r.TC for r in records if not math.isnan(r.TC)]
    return (sum(values) / len(values), len(values)) if values else (math.nan, 0)


def flat_scores(records: Iterable[ExpressionRecord]) -> dict[str, float]:
    """``JandF.compute()``'s dict from records, as floats: ``J``, ``F``, ``JF`` (means over
    expressions) and per kind ``J/<kind>``, ``F/<kind>``, ``JF/<kind>``, ``n/<kind>``; plus
    ``TC`` and ``TC/<kind>`` (means over the expressions with two frames or more, NaN if none)
    and ``n`` and ``n_TC`` (counts). Sums run in record order as JandF's do, so the values are
    identical to JandF's for the same expressions fed in the same order."""
    records = list(records)
    if not records:
        raise ValueError("no expressions to aggregate")
    out: dict[str, float] = {}

    def put(suffix: str, group: list[ExpressionRecord]) -> None:
        j_sum = f_sum = 0.0
        for r in group:  # sequential float64 sums, JandF's order
            j_sum += r.J
            f_sum += r.F
        j, f = j_sum / len(group), f_sum / len(group)
        tc, n_tc = _mean_tc(group)
        out.update({f"J{suffix}": j, f"F{suffix}": f, f"JF{suffix}": (j + f) / 2, f"TC{suffix}": tc})
        if suffix:
            out[f"n{suffix}"] = len(group)
        else:
            out.update({"n": len(group), "n_TC": n_tc})

    put("", records)
    for kind in EXPRESSION_KINDS:
        group = [r for r in records if r.kind == kind]
        if group:
            put(f"/{kind}", group)
    return out


# ----------------------------------------------------------------------------- the sidecar file


def sidecar_path(scores_file: str | Path) -> Path:
    """Where a score file's per-expression records go: ``<dir>/<stem>.per_expression.csv``."""
    p = Path(scores_file)
    return p.with_name(f"{p.stem}.per_expression.csv")



def _cell(value) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)  # repr: the shortest exact round trip
    return str(value)


def write_records(records: Iterable[ExpressionRecord], path: str | Path) -> Path:
    """The records as the sidecar CSV (header :data:`COLUMNS`), written atomically."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for r in records:
        w.writerow([_cell(v) for v in asdict(r).values()])
    return atomic.write_text(path, buf.getvalue())


def _parse(name: str, text: str):
    if name in _STR_COLUMNS:
        return _check_kind(text) if name == "kind" else text
    if name in _INT_COLUMNS:
        return int(text)
    return math.nan if text == "" else float(text)


def read_records(path: str | Path) -> list[ExpressionRecord]:
    """The records of a sidecar CSV, in file order. A file that is not one (other columns, a bad
    value, a (video, expression) twice) is a :class:`RecordsFileError` naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise RecordsFileError(f"{path}: expected a per-expression CSV file, found {'a folder' if path.is_dir() else 'nothing'}")
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    if not rows or tuple(rows[0]) != COLUMNS:
        found = ",".join(rows[0]) if rows else "an empty file"
        raise RecordsFileError(f"{path}: expected the header {','.join(COLUMNS)}, found {found}")
    out, seen = [], {}
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(COLUMNS):
            raise RecordsFileError(f"{path}: line {line}: expected {len(COLUMNS)} fields, found {len(row)}")
        try:
            rec = ExpressionRecord(**{name: _parse(name, text) for name, text in zip(COLUMNS, row)})
        except ValueError as err:
            raise RecordsFileError(f"{path}: line {line}: expected a record, found a bad value ({err})") from err
        if rec.key in seen:
            raise RecordsFileError(f"{path}: line {line}: expected each (video, expression) once, found "
                                   f"{rec.video_id}/{rec.exp_id} again (first on line {seen[rec.key]})")
        seen[rec.key] = line
        out.append(rec)
    return out
