"""Paired bootstrap of the J&F difference between two rows: hand-computed cases, the resampling
stream, identical runs, a clear improvement, seeds (two levels) and pairing errors."""

from __future__ import annotations

import itertools
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest

from rvosflow.metrics.bootstrap import (
    DEFAULT_SEED,
    PairingError,
    bootstrap_delta,
    paired_bootstrap,
)


def run(jf: dict[tuple[str, str], float]):
    """A run's records with J = F = the given J&F (what the bootstrap reads)."""
    return [SimpleNamespace(video_id=v, exp_id=e, J=x, F=x) for (v, e), x in jf.items()]


def keys(n):
    return [(f"v{i // 4}", str(i % 4)) for i in range(n)]


def test_two_expressions_by_hand():
    # differences (0, 1): a resample's mean is 0, 1/2 or 1 with probability 1/4, 1/2, 1/4.
    # The 2.5 % and 97.5 % quantiles fall inside the outer masses: CI = [0, 100] points.
    r = bootstrap_delta([0.0, 1.0], [0.0, 0.0], n_resamples=4000)
    assert r.delta == 50.0 and (r.low, r.high) == (0.0, 100.0) and not r.significant
    freq = Counter(r.samples.tolist())
    assert set(freq) == {0.0, 50.0, 100.0}
    assert [freq[v] / 4000 for v in (0.0, 50.0, 100.0)] == pytest.approx([0.25, 0.5, 0.25], abs=0.03)


def test_three_expressions_match_the_enumerated_bootstrap_distribution():
    d = np.array([0.0, 0.3, 1.2])
    exact = Counter(round(float(d[list(t)].mean()), 9) for t in itertools.product(range(3), repeat=3))  # 27 draws
    r = bootstrap_delta(d, np.zeros(3), n_resamples=20_000, scale=1.0)
    got = Counter(round(float(x), 9) for x in r.samples)
    assert set(got) <= set(exact)
    for value, count in exact.items():
        assert got[value] / 20_000 == pytest.approx(count / 27, abs=0.012), value
    assert r.delta == pytest.approx(0.5)


def test_the_resampling_stream_is_the_documented_one():
    # one seed per row: per block, the row's seed draw, the reference's, then N expression indices
    rng = np.random.default_rng(DEFAULT_SEED)
    a, b = np.array([0.2, 0.9, 0.4, 0.7, 0.1]), np.array([0.3, 0.5, 0.5, 0.2, 0.0])
    rng.integers(0, 1, (300, 1))
    rng.integers(0, 1, (300, 1))
    idx = rng.integers(0, 5, (300, 5))
    expected = (a - b)[idx].mean(axis=1)
    r = bootstrap_delta(a, b, n_resamples=300)
    np.testing.assert_allclose(r.samples, 100 * expected, rtol=0, atol=1e-12)
    assert r.delta == pytest.approx(100 * (a - b).mean())
    assert (r.low, r.high) == tuple(np.quantile(r.samples, [0.025, 0.975]))


def test_fixed_default_seed_makes_results_reproducible():
    rng = np.random.default_rng(0)
    a, b = rng.random(50), rng.random(50)
    r1, r2 = bootstrap_delta(a, b), bootstrap_delta(a, b)
    assert r1 == r2 and np.array_equal(r1.samples, r2.samples) and r1.seed == DEFAULT_SEED
    assert r1.n_resamples == 10_000 and r1.confidence == 0.95
    other = bootstrap_delta(a, b, seed=1)
    assert not np.array_equal(other.samples, r1.samples) and other.delta == r1.delta


def test_identical_runs_give_a_ci_of_exactly_zero():
    rng = np.random.default_rng(1)
    scores = dict(zip(keys(40), rng.random(40)))
    r = paired_bootstrap(run(scores), run(dict(reversed(list(scores.items())))))  # order does not matter
    assert (r.delta, r.low, r.high) == (0.0, 0.0, 0.0) and not r.significant
    assert r.n_expressions == 40 and r.n_seeds == r.n_ref_seeds == 1


def test_identical_rows_with_several_seeds_give_a_ci_containing_zero():
    rng = np.random.default_rng(2)
    seeds = [dict(zip(keys(30), rng.random(30))) for _ in range(3)]
    r = paired_bootstrap([run(s) for s in seeds], [run(s) for s in seeds])
    assert r.delta == 0.0 and r.low < 0 < r.high and not r.significant
    assert r.n_seeds == r.n_ref_seeds == 3
    assert r.low == pytest.approx(-r.high, rel=0.25)  # the two sides play the same part


def test_two_level_by_hand():
    # the row's two seeds score 1 and 3 points on every expression, the reference 0: expressions
    # add nothing, and a seed resample's mean is 1, 2 or 3 with probability 1/4, 1/2, 1/4.
    row = [[0.01, 0.01, 0.01], [0.03, 0.03, 0.03]]
    r = bootstrap_delta(row, [[0.0, 0.0, 0.0]], n_resamples=4000)
    assert r.delta == pytest.approx(2.0) and r.low == pytest.approx(1.0) and r.high == pytest.approx(3.0)
    assert r.significant and (r.n_seeds, r.n_ref_seeds) == (2, 1)
    assert np.mean(np.isclose(r.samples, 2.0)) == pytest.approx(0.5, abs=0.03)


def test_a_clear_improvement_is_significant_and_the_ci_has_the_textbook_width():
    rng = np.random.default_rng(3)
    n = 400
    base = rng.uniform(0.3, 0.7, n)
    better = base + 0.03 + rng.normal(0, 0.05, n)
    r = paired_bootstrap(run(dict(zip(keys(n), better))), run(dict(zip(keys(n), base))))
    d = better - base
    assert r.delta == pytest.approx(100 * d.mean()) and r.significant and r.low > 0
    # percentile CI of a mean of N paired differences: about ±1.96 sd/sqrt(N)
    half = 100 * 1.96 * d.std(ddof=1) / np.sqrt(n)
    assert (r.high - r.low) / 2 == pytest.approx(half, rel=0.1)
    assert r.low < r.delta < r.high
    worse = paired_bootstrap(run(dict(zip(keys(n), base))), run(dict(zip(keys(n), better))))
    assert worse.significant and worse.high < 0 and worse.delta == pytest.approx(-r.delta)


def test_the_metric_can_be_j_or_f():
    row = [SimpleNamespace(video_id="v", exp_id=str(i), J=0.5, F=0.9) for i in range(3)]
    ref = [SimpleNamespace(video_id="v", exp_id=str(i), J=0.4, F=0.9) for i in range(3)]
    assert paired_bootstrap(row, ref, metric="J").delta == pytest.approx(10.0)
    assert paired_bootstrap(row, ref, metric="F").delta == 0.0
    assert paired_bootstrap(row, ref).delta == pytest.approx(5.0)
    with pytest.raises(ValueError, match="metric: expected one of JF, J, F"):
        paired_bootstrap(row, ref, metric="TC")


def test_mismatched_expression_sets_are_an_error_naming_what_is_missing():
    full = dict(zip(keys(8), np.linspace(0, 1, 8)))
    short = {k: v for k, v in full.items() if k != ("v1", "2")}
    with pytest.raises(PairingError, match=r"^e: expected the expressions of base, found that it lacks 1 of the 8 "
                                           r"expressions \(v1/2\)$"):
        paired_bootstrap(run(short), run(full), row_name="e", reference_name="base")
    extra = {**full, ("v9", "0"): 0.5}
    with pytest.raises(PairingError, match=r"e: .* has 1 others \(v9/0\)"):
        paired_bootstrap(run(extra), run(full), row_name="e", reference_name="base")
    # between the seeds of one row, too
    with pytest.raises(PairingError, match=r"^base\[1\]: expected the expressions of base\[0\], found that it lacks"):
        paired_bootstrap(run(full), [run(full), run(short)], reference_name="base")
    twice = run(full) + run({("v0", "0"): 0.1})
    with pytest.raises(PairingError, match="found v0/0 twice"):
        paired_bootstrap(twice, run(full))
    with pytest.raises(PairingError, match="expected per-expression scores, found none"):
        paired_bootstrap(run(full), [])


def test_bad_arguments():
    with pytest.raises(ValueError, match="n_resamples"):
        bootstrap_delta([1.0], [0.0], n_resamples=0)
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_delta([1.0], [0.0], confidence=95)
    with pytest.raises(ValueError, match="finite"):
        bootstrap_delta([float("nan")], [0.0])
    with pytest.raises(ValueError, match="pair them first"):
        bootstrap_delta([1.0, 2.0], [0.0])
