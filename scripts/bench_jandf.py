"""Benchmark: rvosflow's batched J&F against a straightforward per-frame NumPy/OpenCV version.

The baseline follows the official DAVIS 2017 evaluation per frame: IoU with numpy, seg2bmap
with shifted numpy comparisons, ``cv2.dilate`` with skimage's disk footprint, then matching.
Both run in the same process, on the same frames (the real DAVIS fixture masks of
``tests/fixtures/davis-real-masks`` nearest-resized to each size), several times; the table
reports median times per size, side by side. Values must be identical (max abs diff is printed
and checked at every size).

    python scripts/bench_jandf.py [--sizes 480x854,720x1280,1080x1920] [--frames 137] [--repeats 7]

Needs opencv-python-headless (``pip install -e '.[dev]'``).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rvosflow.metrics.functional import jaccard_and_boundary_f  # noqa: E402

FIXTURE = REPO / "tests" / "fixtures" / "davis-real-masks"


# --------------------------------------------------------------------------- baseline (per frame)


def _disk(radius: float) -> np.ndarray:
    grid = np.arange(-radius, radius + 1)
    xx, yy = np.meshgrid(grid, grid)
    return (xx**2 + yy**2 <= radius**2).astype(np.uint8)


def _bmap(seg: np.ndarray) -> np.ndarray:
    seg = seg.astype(bool)
    e = np.zeros_like(seg)
    s = np.zeros_like(seg)
    se = np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = (seg ^ e) | (seg ^ s) | (seg ^ se)
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = 0
    return b


def baseline_j(pred: np.ndarray, gt: np.ndarray) -> float:
    pred, gt = pred.astype(bool), gt.astype(bool)
    union = np.sum(pred | gt)
    return 1.0 if union == 0 else np.sum(pred & gt) / union


def baseline_f(pred: np.ndarray, gt: np.ndarray, bound_th: float = 0.008) -> float:
    import cv2

    radius = bound_th if bound_th >= 1 else np.ceil(bound_th * np.linalg.norm(pred.shape))
    fb, gb = _bmap(pred), _bmap(gt)
    disk = _disk(radius)
    fd = cv2.dilate(fb.astype(np.uint8), disk)
    gd = cv2.dilate(gb.astype(np.uint8), disk)
    n_fg, n_gt = np.sum(fb), np.sum(gb)
    if n_fg == 0 and n_gt > 0:
        precision, recall = 1, 0
    elif n_fg > 0 and n_gt == 0:
        precision, recall = 0, 1
    elif n_fg == 0 and n_gt == 0:
        precision, recall = 1, 1
    else:
        precision = np.sum(fb * gd) / float(n_fg)
        recall = np.sum(gb * fd) / float(n_gt)
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def baseline(preds: np.ndarray, gts: np.ndarray):
    j = np.array([baseline_j(p, g) for p, g in zip(preds, gts)], dtype=np.float64)
    f = np.array([baseline_f(p, g) for p, g in zip(preds, gts)], dtype=np.float64)
    return j, f


# --------------------------------------------------------------------------- data


def load_frames(n_frames: int, H: int, W: int, seed: int = 0):
    """``n_frames`` pairs of HxW masks: the real fixture resized, cycled; else blobs."""
    from PIL import Image

    preds, gts, source = [], [], "synthetic elliptic blobs"
    if (FIXTURE / "expected.json").is_file():
        source = f"DAVIS fixture masks ({FIXTURE.name}), nearest-resized to {H}x{W}"
        expected = json.loads((FIXTURE / "expected.json").read_text())
        for name, rec in expected["pairs"].items():
            for f in rec["frames"]:
                for kind, out in (("pred", preds), ("gt", gts)):
                    im = Image.open(FIXTURE / name / kind / f).resize((W, H), Image.NEAREST)
                    out.append(np.array(im) > 0)
    if not preds:
        rng = np.random.default_rng(seed)
        yy, xx = np.mgrid[:H, :W]
        for _ in range(n_frames):
            for out in (preds, gts):
                m = np.zeros((H, W), bool)
                for _ in range(rng.integers(1, 4)):
                    cy, cx = rng.uniform(0, H), rng.uniform(0, W)
                    ry, rx = rng.uniform(10, 160), rng.uniform(10, 260)
                    m |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
                out.append(m)
    idx = [i % len(preds) for i in range(n_frames)]
    return np.stack([preds[i] for i in idx]), np.stack([gts[i] for i in idx]), source


# --------------------------------------------------------------------------- main


def _median_time(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def _bench_size(h: int, w: int, args) -> dict:
    preds, gts, source = load_frames(args.frames, h, w)
    n = len(preds)
    tp, tg = torch.from_numpy(preds), torch.from_numpy(gts)
    # warm-up (imports, caches), then alternate to share any machine noise fairly
    baseline(preds[:2], gts[:2])
    jaccard_and_boundary_f(tp[:2], tg[:2])
    t_base, t_ours = [], []
    for _ in range(args.repeats):
        tb, (jb, fb) = _median_time(lambda: baseline(preds, gts), 1)
        to, (jo, fo) = _median_time(lambda: jaccard_and_boundary_f(tp, tg), 1)
        t_base.append(tb)
        t_ours.append(to)
    return {
        "size": f"{h}x{w}", "n": n, "source": source, "radius": math.ceil(0.008 * math.hypot(h, w)),
        "base": statistics.median(t_base), "ours": statistics.median(t_ours),
        "dj": float(np.max(np.abs(jo.numpy() - jb))), "df": float(np.max(np.abs(fo.numpy() - fb))),
        "mean_j": jo.mean().item(), "mean_f": fo.mean().item(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="480x854,720x1280,1080x1920", help="comma-separated HxW")
    ap.add_argument("--frames", type=int, default=137)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1, help="torch/OpenCV threads (both sides)")
    args = ap.parse_args()

    import cv2

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    rows = [_bench_size(h, w, args) for h, w in sizes]

    print(f"frames: {rows[0]['n']} per size ({rows[0]['source']}); repeats {args.repeats}; "
          f"threads {args.threads}; numpy {np.__version__}, torch {torch.__version__}, "
          f"opencv {cv2.__version__}")
    print()
    print("| size | tolerance px | baseline ms/frame | rvosflow ms/frame | speed-up | max |ΔJ| | max |ΔF| | identical |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        n = r["n"]
        same = r["dj"] == 0.0 and r["df"] == 0.0
        print(f"| {r['size']} | {r['radius']} | {1000 * r['base'] / n:.3f} | {1000 * r['ours'] / n:.3f} | "
              f"{r['base'] / r['ours']:.2f}x | {r['dj']:.3g} | {r['df']:.3g} | {'yes' if same else 'NO'} |")
    print()
    for r in rows:
        print(f"{r['size']}: mean J {r['mean_j']:.6f}, mean F {r['mean_f']:.6f}")
    if any(r["dj"] != 0.0 or r["df"] != 0.0 for r in rows):
        raise SystemExit("values differ from the baseline")


if __name__ == "__main__":
    main()
