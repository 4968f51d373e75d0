"""J&F metrics: parity with the official DAVIS values, docs/design.md §4 edge cases, aggregation, DDP."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from rvosflow.metrics import JandF
from rvosflow.metrics.functional import (
    boundary_f,
    boundary_radius,
    disk_footprint,
    jaccard,
    jaccard_and_boundary_f,
    jandf_per_expression,
    seg2bmap,
)

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "davis-real-masks"
TOL = 1e-9


# --------------------------------------------------------------------------- straightforward reference


def _ref_bmap(seg: np.ndarray) -> np.ndarray:
    """seg2bmap written out pixel by pixel: compare with E, S, SE of an edge-replicated mask."""
    seg = seg != 0
    h, w = seg.shape
    out = np.zeros_like(seg)
    for y in range(h):
        for x in range(w):
            ys, xs = min(y + 1, h - 1), min(x + 1, w - 1)
            v = seg[y, x]
            out[y, x] = v != seg[y, xs] or v != seg[ys, x] or v != seg[ys, xs]
    return out


def _ref_dilate(b: np.ndarray, r: float) -> np.ndarray:
    """Dilation as cv2.dilate applies a kernel: anchor (k // 2, k // 2), nothing outside."""
    fp = disk_footprint(r).astype(bool)
    k = fp.shape[0]
    a = k // 2
    h, w = b.shape
    padded = np.zeros((h + 2 * k, w + 2 * k), bool)
    padded[k : k + h, k : k + w] = b
    out = np.zeros_like(b)
    for i, j in np.argwhere(fp):
        out |= padded[k + i - a : k + i - a + h, k + j - a : k + j - a + w]
    return out


def _ref_f(fg: np.ndarray, gt: np.ndarray, bound_th: float = 0.008) -> float:
    """Per-frame boundary F the slow way (vectorised seg2bmap, scipy dilation, same branches)."""
    r = bound_th if bound_th >= 1 else math.ceil(bound_th * math.hypot(*fg.shape))

    def bmap(s):
        s = np.pad(s != 0, ((0, 1), (0, 1)), mode="edge")
        c = s[:-1, :-1]
        return (c != s[:-1, 1:]) | (c != s[1:, :-1]) | (c != s[1:, 1:])

    fb, gb = bmap(fg), bmap(gt)
    fd, gd = _ref_dilate(fb, r), _ref_dilate(gb, r)
    n_fg, n_gt = fb.sum(), gb.sum()
    if n_fg == 0 and n_gt > 0:
        p, rc = 1, 0
    elif n_fg > 0 and n_gt == 0:
        p, rc = 0, 1
    elif n_fg == 0 and n_gt == 0:
        p, rc = 1, 1
    else:
        p = np.sum(fb & gd) / float(n_fg)
        rc = np.sum(gb & fd) / float(n_gt)
    return 0.0 if p + rc == 0 else 2 * p * rc / (p + rc)


def _ref_j(fg: np.ndarray, gt: np.ndarray) -> float:
    fg, gt = fg != 0, gt != 0
    union = np.sum(fg | gt)
    return 1.0 if union == 0 else np.sum(fg & gt) / union


def _blobs(rng, n, h, w, k=3):
    """Random unions of ellipses: realistic, smooth-edged masks with thin parts now and then."""
    yy, xx = np.mgrid[:h, :w]
    out = np.zeros((n, h, w), dtype=bool)
    for i in range(n):
        for _ in range(rng.integers(0, k + 1)):
            cy, cx = rng.uniform(-0.1, 1.1) * h, rng.uniform(-0.1, 1.1) * w
            ry, rx = rng.uniform(0.5, 0.4 * h + 1), rng.uniform(0.5, 0.4 * w + 1)
            out[i] |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    return out


# --------------------------------------------------------------------------- official values


def _load_fixture():
    assert (FIXTURE / "expected.json").is_file(), f"real-mask fixture missing: {FIXTURE}"
    from PIL import Image

    expected = json.loads((FIXTURE / "expected.json").read_text())
    pairs = {}
    for name, rec in expected["pairs"].items():
        gt = np.stack([np.array(Image.open(FIXTURE / name / "gt" / f)) for f in rec["frames"]])
        pred = np.stack([np.array(Image.open(FIXTURE / name / "pred" / f)) for f in rec["frames"]])
        pairs[name] = (torch.from_numpy(pred), torch.from_numpy(gt))
    return expected, pairs


@pytest.fixture(scope="module")
def davis_fixture():
    return _load_fixture()


def test_official_davis_values(davis_fixture):
    expected, pairs = davis_fixture
    metric = JandF()
    j_means, f_means = [], []
    for name, rec in expected["pairs"].items():
        pred, gt = pairs[name]
        j = jaccard(pred, gt)
        f = boundary_f(pred, gt)
        assert j.dtype == f.dtype == torch.float64
        np.testing.assert_allclose(j.numpy(), rec["J"], rtol=0, atol=TOL, err_msg=name)
        np.testing.assert_allclose(f.numpy(), rec["F"], rtol=0, atol=TOL, err_msg=name)
        jm, fm = jandf_per_expression(pred, gt)
        assert abs(jm.item() - rec["J_mean"]) < TOL and abs(fm.item() - rec["F_mean"]) < TOL
        j_means.append(jm.item())
        f_means.append(fm.item())
        metric.update(pred, gt)
    out = metric.compute()
    ds = expected["dataset"]
    for key in ("J", "F", "JF"):
        assert abs(out[key].item() - ds[key]) < TOL, (key, out[key].item(), ds[key])
    assert abs(np.mean(j_means) - ds["J"]) < TOL and abs(np.mean(f_means) - ds["F"]) < TOL


# --------------------------------------------------------------------------- definition pieces


def test_disk_footprint_matches_skimage_disk():
    np.testing.assert_array_equal(disk_footprint(1), [[0, 1, 0], [1, 1, 1], [0, 1, 0]])
    np.testing.assert_array_equal(
        disk_footprint(2),
        [[0, 0, 1, 0, 0], [0, 1, 1, 1, 0], [1, 1, 1, 1, 1], [0, 1, 1, 1, 0], [0, 0, 1, 0, 0]],
    )
    fp = disk_footprint(8.0)
    assert fp.shape == (17, 17) and fp.sum() == 197
    yy, xx = np.mgrid[-8:9, -8:9]
    np.testing.assert_array_equal(fp, (yy**2 + xx**2 <= 64).astype(np.uint8))


@pytest.mark.parametrize(
    ("h", "w", "th", "radius"),
    [(480, 854, 0.008, 8), (480, 910, 0.008, 9), (720, 1280, 0.008, 12), (100, 100, 0.008, 2),
     (480, 854, 3, 3)],
)
def test_tolerance_radius(h, w, th, radius):
    assert boundary_radius(h, w, th) == radius
    if th < 1:
        assert radius == math.ceil(th * math.sqrt(h * h + w * w))


def test_seg2bmap_matches_definition():
    rng = np.random.default_rng(1)
    masks = rng.random((6, 7, 9)) < 0.4
    masks[0] = 0
    masks[1] = 1  # a full mask has no boundary at all
    got = seg2bmap(torch.from_numpy(masks)).numpy()
    for m, b in zip(masks, got):
        np.testing.assert_array_equal(b, _ref_bmap(m))
    assert not got[0].any() and not got[1].any()
    # one pixel: itself and its W, N and NW neighbours (pixels whose E/S/SE is it)
    one = np.zeros((5, 5), bool)
    one[2, 2] = 1
    assert sorted(map(tuple, np.argwhere(seg2bmap(one).numpy()))) == [(1, 1), (1, 2), (2, 1), (2, 2)]


# --------------------------------------------------------------------------- docs/design.md §4 edge cases


def test_both_empty():
    z = torch.zeros(2, 48, 64, dtype=torch.bool)
    assert jaccard(z, z).tolist() == [1.0, 1.0]
    assert boundary_f(z, z).tolist() == [1.0, 1.0]


def test_exactly_one_empty():
    z = torch.zeros(1, 48, 64, dtype=torch.bool)
    m = z.clone()
    m[0, 10:20, 10:30] = True
    assert jaccard(z, m).item() == 0.0 and jaccard(m, z).item() == 0.0
    assert boundary_f(z, m).item() == 0.0 and boundary_f(m, z).item() == 0.0


def test_full_frames_have_no_boundary():
    full = torch.ones(1, 30, 40, dtype=torch.bool)
    part = torch.zeros_like(full)
    part[0, :, :20] = True
    assert boundary_f(full, full).item() == 1.0
    assert boundary_f(full, part).item() == 0.0
    assert jaccard(full, part).item() == 0.5


@pytest.mark.parametrize(("shift", "f_expected"), [(0, 1.0), (5, 1.0), (8, 1.0), (9, 0.0), (20, 0.0)])
def test_shift_within_and_outside_tolerance(shift, f_expected):
    # vertical half-planes at 480x854 (tolerance 8 px): the boundaries are single columns
    # `shift` apart, so every pixel matches within tolerance and none beyond it (P=R=0 → F=0)
    h, w, c = 480, 854, 400
    gt = torch.zeros(1, h, w, dtype=torch.bool)
    gt[0, :, :c] = True
    pred = torch.zeros_like(gt)
    pred[0, :, : c + shift] = True
    assert boundary_f(pred, gt).item() == f_expected
    assert boundary_f(gt, pred).item() == f_expected
    assert jaccard(pred, gt).item() == pytest.approx(c / (c + shift), abs=1e-15)


def test_diagonal_shift_uses_the_disk_not_a_square():
    # one foreground pixel has a 2x2 boundary block (itself and its W, N, NW neighbours). Move
    # it by (dy, dx): the closest pair of block pixels is (dy-1, dx-1) apart and, at tolerance 8,
    # at most that single pair matches: P = R = 1/4 → F = 1/4, or nothing matches → F = 0.
    h, w = 480, 854
    expected = {(6, 7): 0.25, (7, 6): 0.25, (9, 1): 0.25, (1, 9): 0.25,
                (7, 7): 0.0,  # (6, 6) apart: √72 > 8, though within a square of side 17
                (10, 1): 0.0}
    for (dy, dx), f_exp in expected.items():
        gt = np.zeros((1, h, w), bool)
        gt[0, 200, 300] = True
        pred = np.zeros_like(gt)
        pred[0, 200 + dy, 300 + dx] = True
        f = boundary_f(pred, gt).item()
        assert f == f_exp == _ref_f(pred[0], gt[0]), (dy, dx, f)


def test_matches_straightforward_reference_on_random_masks():
    rng = np.random.default_rng(0)
    cases = [(1, 1, 0.008), (1, 7, 0.008), (7, 1, 0.5), (5, 63, 0.05), (9, 64, 0.2), (9, 65, 2),
             (17, 127, 0.008), (20, 128, 3), (23, 130, 0.1), (40, 200, 2.5), (12, 70, 100)]
    for h, w, th in cases:
        p = _blobs(rng, 3, h, w) ^ (rng.random((3, h, w)) < 0.02)
        g = _blobs(rng, 3, h, w)
        j, f = jaccard_and_boundary_f(torch.from_numpy(p), torch.from_numpy(g), th)
        for i in range(3):
            assert j[i].item() == _ref_j(p[i], g[i]), (h, w, th, i)
            assert f[i].item() == _ref_f(p[i], g[i], th), (h, w, th, i)


def test_real_size_frames_match_reference():
    rng = np.random.default_rng(3)
    p, g = _blobs(rng, 2, 480, 854, k=4), _blobs(rng, 2, 480, 854, k=4)
    f = boundary_f(p, g).numpy()
    np.testing.assert_array_equal(f, [_ref_f(p[i], g[i]) for i in range(2)])


def test_input_types_agree():
    rng = np.random.default_rng(2)
    p, g = _blobs(rng, 3, 30, 50), _blobs(rng, 3, 30, 50)
    ref = jaccard_and_boundary_f(torch.from_numpy(p), torch.from_numpy(g))
    for conv in (lambda a: torch.from_numpy(a).to(torch.uint8) * 255,
                 lambda a: torch.from_numpy(a).float(),
                 lambda a: a.astype(np.uint8)):
        out = jaccard_and_boundary_f(conv(p), conv(g))
        assert torch.equal(out[0], ref[0]) and torch.equal(out[1], ref[1])
    # a single [H,W] frame is one frame
    assert jaccard(p[0], g[0]).shape == (1,)


def test_shape_mismatch_raises():
    with pytest.raises(ValueError):
        jaccard(torch.zeros(1, 4, 4), torch.zeros(1, 4, 5))
    with pytest.raises(ValueError):
        JandF().update(torch.zeros(2, 4, 4), torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match="binary"):  # probabilities must be thresholded first
        boundary_f(torch.full((1, 4, 4), 0.3), torch.zeros(1, 4, 4))


# --------------------------------------------------------------------------- metric aggregation


def _expressions(seed, b=3, t=4, h=36, w=70):
    rng = np.random.default_rng(seed)
    p = torch.from_numpy(_blobs(rng, b * t, h, w).reshape(b, t, h, w))
    g = torch.from_numpy(_blobs(rng, b * t, h, w).reshape(b, t, h, w))
    return p, g


def test_batched_update_equals_per_expression_updates():
    p, g = _expressions(5)
    batched, single = JandF(), JandF()
    batched.update(p, g)
    for i in range(p.shape[0]):
        single.update(p[i], g[i])
    a, b = batched.compute(), single.compute()
    for key in ("J", "F", "JF"):
        assert abs(a[key].item() - b[key].item()) < 1e-12
    # and both equal the mean of jandf_per_expression
    per = [jandf_per_expression(p[i], g[i]) for i in range(p.shape[0])]
    assert abs(a["J"].item() - np.mean([x[0].item() for x in per])) < 1e-12
    assert abs(a["F"].item() - np.mean([x[1].item() for x in per])) < 1e-12
    assert abs(a["JF"].item() - (a["J"].item() + a["F"].item()) / 2) < 1e-15


def test_aggregation_is_per_expression_then_mean():
    z = torch.zeros(1, 20, 30, dtype=torch.bool)
    m = z.clone()
    m[0, 5:15, 5:25] = True
    metric = JandF()
    metric.update(z, z)  # one frame, J = F = 1
    metric.update(z.expand(3, -1, -1), m.expand(3, -1, -1))  # three frames, J = F = 0
    out = metric.compute()
    assert out["J"].item() == 0.5 and out["F"].item() == 0.5 and out["JF"].item() == 0.5
    # a frame-level mean would give 1/4
    assert out["J"].item() != pytest.approx(0.25)


def test_ddp_style_state_merge_equals_single_metric():
    p1, g1 = _expressions(7, b=2, t=3)
    p2, g2 = _expressions(8, b=3, t=5)
    whole = JandF()
    whole.update(p1, g1)
    whole.update(p2, g2)
    rank0, rank1 = JandF(), JandF()
    rank0.update(p1, g1)
    rank1.update(p2, g2)
    # what the sum all-reduce does: add every state
    summed = JandF()
    for name in ("j_sum", "f_sum", "n_expressions"):
        setattr(summed, name, getattr(rank0, name) + getattr(rank1, name))
    summed._update_count = 1
    rank0.merge_state(rank1)
    ref = whole.compute()
    for other in (summed.compute(), rank0.compute()):
        for key in ("J", "F", "JF"):
            assert abs(other[key].item() - ref[key].item()) < 1e-12, key
    assert int(rank0.n_expressions) == 5


def test_reset():
    p, g = _expressions(9, b=1, t=2)
    metric = JandF()
    metric.update(p, g)
    metric.reset()
    assert int(metric.n_expressions) == 0


def test_forward_returns_batch_values_and_accumulates():
    p, g = _expressions(11, b=2, t=2)
    metric = JandF()
    batch = metric(p[:1], g[:1])
    ref = jandf_per_expression(p[0], g[0])
    assert abs(batch["J"].item() - ref[0].item()) < 1e-12
    metric(p[1:], g[1:])
    assert int(metric.n_expressions) == 2
