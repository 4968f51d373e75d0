"""Paired bootstrap confidence intervals for the difference in J&F between two rows of a table.

A row is one or more runs (seeds) of one configuration, each scored on the same expressions.
The statistic is the row's J&F minus the reference row's, where a row's J&F is the mean over its
seeds of the mean over expressions of the per-expression J&F (the number the tables show).

Resampling (:func:`bootstrap_delta`), ``n_resamples`` times:

1. seeds: draw ``S`` of the row's ``S`` seeds with replacement, and independently ``S_ref`` of the
   reference's (two rows' trainings are separate experiments, so their seeds are not paired);
   with one seed per row this level changes nothing;
2. expressions: draw ``N`` of the ``N`` expressions with replacement, **the same draw for both
   rows** (the pairing: an expression that is hard for one row is hard for the other, and that
   shared difficulty cancels in the difference);
3. the delta of the resampled means.

The CI is the percentile interval of those deltas (numpy's linear-interpolated quantiles at
``(1 - confidence) / 2`` and ``(1 + confidence) / 2``); ``significant`` means it excludes 0.
The random stream is numpy's ``default_rng(seed)`` with the fixed default :data:`DEFAULT_SEED`, so a
table is reproducible; per block of :data:`_BLOCK` resamples the draws are, in this order, the
row's seeds, the reference's seeds, then the expressions.

:func:`paired_bootstrap` does the pairing from per-expression records (anything with
``video_id``, ``exp_id``, ``J`` and ``F``): every run of both rows must hold the same
(video, expression) pairs, or a :class:`PairingError` names what is missing where.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from rvosflow.errors import PairingError

__all__ = ["DEFAULT_RESAMPLES", "DEFAULT_SEED", "METRICS", "PairedDelta", "PairingError", "bootstrap_delta",
           "paired_bootstrap", "score_matrix"]

DEFAULT_SEED = 25  # fixed, so that every table built from the same runs shows the same CIs
DEFAULT_RESAMPLES = 10_000
METRICS = ("JF", "J", "F")
_BLOCK = 1000  # resamples drawn at once: bounds memory at _BLOCK x N floats



@dataclass(frozen=True)
class PairedDelta:
    """The row's score minus the reference's, times ``scale`` (percent points by default)."""

    delta: float
    low: float  # the CI's bounds
    high: float
    n_expressions: int
    n_seeds: int  # the row's seeds
    n_ref_seeds: int
    n_resamples: int
    confidence: float
    seed: int
    samples: np.ndarray = field(repr=False, compare=False)  # the resampled deltas, for plots and checks

    @property
    def significant(self) -> bool:
        """The CI excludes 0."""
        return self.low > 0 or self.high < 0

    def as_dict(self) -> dict:
        """The figures as plain JSON-able values (no samples)."""
        return {"delta": self.delta, "low": self.low, "high": self.high, "significant": self.significant,
                "n_expressions": self.n_expressions, "n_seeds": self.n_seeds, "n_ref_seeds": self.n_ref_seeds,
                "n_resamples": self.n_resamples, "confidence": self.confidence, "seed": self.seed}


def _as_matrix(x, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 1:
        a = a[None]
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"{name}: expected scores [seeds, expressions] or [expressions], got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name}: expected finite scores, found NaN or inf")
    return a


def _seed_weights(draws: np.ndarray, s: int) -> np.ndarray:
    """``[m, s]`` draws of seed indices → ``[m, s]`` weights: how often each seed was drawn, / s."""
    return (draws[:, :, None] == np.arange(s)).sum(axis=1) / s


def bootstrap_delta(row, reference, n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED,
                    confidence: float = 0.95, scale: float = 100.0) -> PairedDelta:
    """Paired (two-level when there are several seeds) bootstrap of ``mean(row) - mean(reference)``.

    ``row`` ``[S, N]`` and ``reference`` ``[S_ref, N]`` (or ``[N]`` for one seed) hold per-expression
    scores, column k of both being the same expression. See the module docstring for the scheme.
    """
    a, b = _as_matrix(row, "row"), _as_matrix(reference, "reference")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"row has {a.shape[1]} expressions, reference {b.shape[1]}: pair them first")
    if n_resamples < 1:
        raise ValueError(f"n_resamples: expected a positive number, found {n_resamples}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence: expected a number in (0, 1), found {confidence}")
    (s_a, n), s_b = a.shape, b.shape[0]
    rng = np.random.default_rng(seed)
    samples = np.empty(n_resamples)
    for start in range(0, n_resamples, _BLOCK):
        m = min(_BLOCK, n_resamples - start)
        # seed level: each resample weights a row's seeds by how often it drew them
        wa = _seed_weights(rng.integers(0, s_a, (m, s_a)), s_a)
        wb = _seed_weights(rng.integers(0, s_b, (m, s_b)), s_b)
        per_expr = wa @ a - wb @ b  # [m, N]: each resample's per-expression difference of seed means
        # expression level: one index draw shared by both rows (the pairing)
        idx = rng.integers(0, n, (m, n))
        samples[start:start + m] = np.take_along_axis(per_expr, idx, axis=1).mean(axis=1)
    delta = float(a.mean(axis=1).mean() - b.mean(axis=1).mean())
    tail = (1 - confidence) / 2
    low, high = np.quantile(samples, [tail, 1 - tail])
    return PairedDelta(delta=scale * delta, low=float(scale * low), high=float(scale * high), n_expressions=n,
                       n_seeds=s_a, n_ref_seeds=s_b, n_resamples=n_resamples, confidence=confidence, seed=seed,
                       samples=scale * samples)


def _runs(x) -> list:
    """One run (a sequence of records) or several (a sequence of such sequences) → list of runs."""
    x = list(x)
    if x and not hasattr(x[0], "video_id"):
        return [list(run) for run in x]
    return [x]


def _metric(r, metric: str) -> float:
    return (r.J + r.F) / 2 if metric == "JF" else getattr(r, metric)


def score_matrix(runs, names: Sequence[str], keys: Sequence[tuple[str, str]] | None = None,
                 against: str | None = None, metric: str = "JF") -> tuple[list[tuple[str, str]], np.ndarray]:
    """``(keys, [S, N] scores)`` of one row's runs (records), columns in ``keys`` order (default:
    the first run's keys, in its order). Every run must hold exactly ``keys`` (those of the run
    named ``against``; default ``names[0]``): else a PairingError names the run (``names[i]``)
    and up to five missing and extra expressions."""
    if metric not in METRICS:
        raise ValueError(f"metric: expected one of {', '.join(METRICS)}, found {metric!r}")
    runs = _runs(runs)
    if not runs or not runs[0]:
        raise PairingError(f"{names[0] if names else 'row'}: expected per-expression scores, found none")
    if keys is None:
        keys = [(r.video_id, r.exp_id) for r in runs[0]]
        against = names[0]
    want = set(keys)
    rows = []
    for name, run in zip(names, runs):
        by_key = {}
        for r in run:
            k = (r.video_id, r.exp_id)
            if k in by_key:
                raise PairingError(f"{name}: expected each (video, expression) once, found {k[0]}/{k[1]} twice")
            by_key[k] = _metric(r, metric)
        missing = [k for k in keys if k not in by_key]
        extra = [k for k in by_key if k not in want]
        if missing or extra:
            def show(ks):
                return ", ".join(f"{v}/{e}" for v, e in ks[:5]) + (" ..." if len(ks) > 5 else "")

            parts = ([f"lacks {len(missing)} of the {len(keys)} expressions ({show(missing)})"] if missing else []) + \
                    ([f"has {len(extra)} others ({show(extra)})"] if extra else [])
            raise PairingError(f"{name}: expected the expressions of {against or names[0]}, found that it "
                              + " and ".join(parts))
        rows.append([by_key[k] for k in keys])
    return list(keys), np.asarray(rows, dtype=np.float64)


def paired_bootstrap(row, reference, n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED,
                     confidence: float = 0.95, scale: float = 100.0, metric: str = "JF",
                     row_name: str = "row", reference_name: str = "reference") -> PairedDelta:
    """The delta in ``metric`` (J&F by default, percent points) of ``row`` against ``reference``,
    each a run's per-expression records or a list of runs (seeds), paired by (video, exp_id),
    with its bootstrap CI (:func:`bootstrap_delta`). ``row_name`` / ``reference_name`` name the
    runs in errors (``<name>`` for one run, ``<name>[i]`` for the i-th seed)."""
    row_runs, ref_runs = _runs(row), _runs(reference)

    def names(base, runs):
        return [base] if len(runs) == 1 else [f"{base}[{i}]" for i in range(len(runs))]

    ref_names = names(reference_name, ref_runs)
    keys, b = score_matrix(ref_runs, ref_names, metric=metric)
    _, a = score_matrix(row_runs, names(row_name, row_runs), keys=keys, against=ref_names[0], metric=metric)
    return bootstrap_delta(a, b, n_resamples=n_resamples, seed=seed, confidence=confidence, scale=scale)
