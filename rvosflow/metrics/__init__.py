"""Evaluation metrics: J&F with DAVIS semantics, aggregated as MeViS (docs/design.md §4).

``JandF`` keeps, per process, the sums of the per-expression means of J and F and the number
of expressions, overall and per expression kind, all with ``sum`` reduction, so the result is
exact under DDP: the mean over all expressions seen by all ranks.
"""

from __future__ import annotations

import math

import torch
from torchmetrics import Metric

from rvosflow.data.schema import EXPRESSION_KINDS
from rvosflow.metrics import functional
from rvosflow.metrics.functional import jaccard_and_boundary_f
from rvosflow.metrics.records import ExpressionRecord, expression_record, flat_scores

__all__ = ["ExpressionRecord", "JandF", "by_kind", "expression_record", "flat_scores", "functional"]


class JandF(Metric):
    """Region similarity J, boundary F and J&F over referring expressions.

    ``update(preds, target)`` takes binary masks (non-zero = foreground) of one expression,
    ``[T,H,W]``, or of ``B`` expressions with the same frame count and size, ``[B,T,H,W]``.
    Each expression's J and F are the means over its frames; ``compute()`` returns the means
    over expressions, ``{"J", "F", "JF"}`` with ``JF = (J + F) / 2``, as float64 fractions.

    ``update(..., kinds=[...])`` also files each expression under its kind (one of
    ``EXPRESSION_KINDS``; ``""`` = unknown, counted overall only); ``compute()`` then adds
    ``"J/<kind>"``, ``"F/<kind>"``, ``"JF/<kind>"`` and the count ``"n/<kind>"`` for every kind seen.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, bound_th: float = 0.008, **kwargs) -> None:
        super().__init__(**kwargs)
        self.bound_th = bound_th
        self.add_state("j_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("f_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("n_expressions", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        k = len(EXPRESSION_KINDS)
        self.add_state("kind_j_sum", default=torch.zeros(k, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("kind_f_sum", default=torch.zeros(k, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("kind_n", default=torch.zeros(k, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor, kinds: list[str] | None = None) -> None:  # type: ignore[override]
        if preds.shape != target.shape:
            raise ValueError(f"preds {tuple(preds.shape)} and target {tuple(target.shape)} differ")
        if preds.ndim == 3:
            preds, target = preds[None], target[None]
        if preds.ndim != 4:
            raise ValueError(f"expected [T,H,W] or [B,T,H,W] masks, got {tuple(preds.shape)}")
        b, t, h, w = preds.shape
        if b == 0:
            return
        if t == 0:
            raise ValueError("an expression needs at least one frame")
        j, f = jaccard_and_boundary_f(
            preds.reshape(b * t, h, w), target.reshape(b * t, h, w), self.bound_th
        )
        j_expr = j.reshape(b, t).mean(dim=1)
        f_expr = f.reshape(b, t).mean(dim=1)
        self.j_sum += j_expr.sum().to(self.j_sum.device)
        self.f_sum += f_expr.sum().to(self.f_sum.device)
        self.n_expressions += b
        if kinds is None:
            return
        if len(kinds) != b:
            raise ValueError(f"{len(kinds)} kinds for {b} expressions")
        for i, kind in enumerate(kinds):
            if not kind:
                continue
            if kind not in EXPRESSION_KINDS:
                raise ValueError(f"unknown expression kind {kind!r}; expected one of {', '.join(EXPRESSION_KINDS)}")
            k = EXPRESSION_KINDS.index(kind)
            self.kind_j_sum[k] += j_expr[i].to(self.kind_j_sum)
            self.kind_f_sum[k] += f_expr[i].to(self.kind_f_sum)
            self.kind_n[k] += 1

    def compute(self) -> dict[str, torch.Tensor]:
        n = self.n_expressions.to(torch.float64)
        j = self.j_sum / n
        f = self.f_sum / n
        out = {"J": j, "F": f, "JF": (j + f) / 2}
        for k, kind in enumerate(EXPRESSION_KINDS):
            if self.kind_n[k] > 0:
                kj, kf = self.kind_j_sum[k] / self.kind_n[k], self.kind_f_sum[k] / self.kind_n[k]
                out.update({f"J/{kind}": kj, f"F/{kind}": kf, f"JF/{kind}": (kj + kf) / 2,
                            f"n/{kind}": self.kind_n[k]})
        return out


def by_kind(scores: dict, scale: float = 100.0) -> dict[str, dict[str, float]]:
    """``{kind: {"J", "F", "JF", "n"}}`` from a ``JandF.compute()``-style flat dict (J, F, J&F
    multiplied by ``scale``, i.e. percent by default); also ``"TC"`` where the dict has
    ``TC/<kind>`` (:func:`flat_scores`), None when no expression of the kind has two frames."""
    out: dict[str, dict[str, float]] = {}
    for kind in EXPRESSION_KINDS:
        if f"n/{kind}" in scores:
            out[kind] = {m: scale * float(scores[f"{m}/{kind}"]) for m in ("J", "F", "JF")}
            if f"TC/{kind}" in scores:
                tc = float(scores[f"TC/{kind}"])
                out[kind]["TC"] = None if math.isnan(tc) else scale * tc
            out[kind]["n"] = int(scores[f"n/{kind}"])
    return out
