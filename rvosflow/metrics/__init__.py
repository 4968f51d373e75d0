"""Evaluation metrics: J&F with DAVIS semantics, aggregated as MeViS (DESIGN §4).

``JandF`` keeps, per process, the sums of the per-expression means of J and F and the number
of expressions, all with ``sum`` reduction, so the result is exact under DDP: the mean over
all expressions seen by all ranks.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric

from rvosflow.metrics import functional
from rvosflow.metrics.functional import jaccard_and_boundary_f

__all__ = ["JandF", "functional"]


class JandF(Metric):
    """Region similarity J, boundary F and J&F over referring expressions.

    ``update(preds, target)`` takes binary masks (non-zero = foreground) of one expression,
    ``[T,H,W]``, or of ``B`` expressions with the same frame count and size, ``[B,T,H,W]``.
    Each expression's J and F are the means over its frames; ``compute()`` returns the means
    over expressions, ``{"J", "F", "JF"}`` with ``JF = (J + F) / 2``, as float64 fractions.
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

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:  # type: ignore[override]
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

    def compute(self) -> dict[str, torch.Tensor]:
        n = self.n_expressions.to(torch.float64)
        j = self.j_sum / n
        f = self.f_sum / n
        return {"J": j, "F": f, "JF": (j + f) / 2}
