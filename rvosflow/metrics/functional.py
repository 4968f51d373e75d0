"""J (region similarity) and F (boundary F-measure) with the DAVIS 2017 semantics.

Semantics (docs/design.md §4), matching the official ``davis2017-evaluation`` ``metrics.py``:

* a mask is foreground wherever it is non-zero;
* ``J = |P ∩ G| / |P ∪ G|``, and 1 when the union is empty;
* boundaries follow ``seg2bmap``: a pixel is a boundary pixel when it differs from its east,
  south or south-east neighbour (so both sides of an edge can count, background included). On
  the last row only the east neighbour is compared, on the last column only the south one, and
  the bottom-right pixel is never a boundary: exactly a comparison against an edge-replicated
  copy of the mask;
* the tolerance is ``bound_th`` pixels when ``bound_th >= 1``, else
  ``ceil(bound_th * sqrt(H² + W²))``; boundaries are dilated with skimage's ``disk`` footprint of
  that radius (``x² + y² <= r²`` over ``arange(-r, r + 1)``), applied as ``cv2.dilate`` does
  (anchor at the kernel centre, nothing outside the image);
* precision = matched predicted boundary pixels / predicted boundary pixels, recall likewise;
  no predicted boundary and some true boundary → P=1, R=0; the reverse → P=0, R=1; neither →
  P=R=1; ``F = 2PR / (P + R)``, and 0 when ``P + R = 0``.

Implementation: the masks are bit-packed along the width (64 pixels per ``uint64`` word, rows
followed by a zero margin at least the tolerance wide) and processed a few frames at a time so
that the working set stays in cache. Boundaries are a handful of word-wise XOR/ORs, the disk
dilation is a union of horizontal runs (one per row offset of the footprint) built from shifted
ORs of the packed words, and counting is a popcount. Every step is exact integer logic, so the
values are bit-identical to the straightforward per-frame implementation
(``scripts/bench_jandf.py`` checks that against OpenCV and times both).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

__all__ = [
    "boundary_f",
    "boundary_radius",
    "disk_footprint",
    "jaccard",
    "jaccard_and_boundary_f",
    "jandf_per_expression",
    "seg2bmap",
    "temporal_consistency",
]

_WORD = 64
_ONE = np.uint64(1)
_ALL = np.uint64(0xFFFFFFFFFFFFFFFF)


# --------------------------------------------------------------------------- helpers


def _as_bool_numpy(x) -> np.ndarray:
    """Binary ``[N,H,W]`` (or ``[H,W]``) torch/numpy input → C-contiguous numpy bool array."""
    if isinstance(x, torch.Tensor):
        x = x.detach()
        if x.device.type != "cpu":
            x = x.cpu()
        if x.is_floating_point() and not bool(((x == 0) | (x == 1)).all()):
            raise ValueError("masks must be binary: threshold probabilities/logits first")
        if x.dtype != torch.bool:
            x = x != 0
        x = x.contiguous().numpy()
    else:
        x = np.asarray(x)
        if x.dtype.kind == "f" and not ((x == 0) | (x == 1)).all():
            raise ValueError("masks must be binary: threshold probabilities/logits first")
        if x.dtype != np.bool_:
            x = x != 0
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3 or x.shape[1] == 0 or x.shape[2] == 0:
        raise ValueError(f"expected binary masks of shape [N,H,W] or [H,W], got {x.shape}")
    return np.ascontiguousarray(x)


def _check_pair(preds, target) -> tuple[np.ndarray, np.ndarray]:
    p = _as_bool_numpy(preds)
    g = _as_bool_numpy(target)
    if p.shape != g.shape:
        raise ValueError(f"preds {tuple(p.shape)} and target {tuple(g.shape)} differ in shape")
    return p, g


def _pack(mask: np.ndarray, n_words: int) -> np.ndarray:
    """``[N,H,W]`` bool → ``[N,H,n_words]`` uint64, pixel ``x`` at bit ``x % 64`` of word ``x // 64``."""
    n, h, w = mask.shape
    packed = np.packbits(mask, axis=-1, bitorder="little")  # [N,H,ceil(W/8)]
    out = np.zeros((n, h, n_words * 8), dtype=np.uint8)
    out[..., : packed.shape[-1]] = packed
    return out.view("<u8")


if hasattr(np, "bitwise_count"):  # numpy >= 2.0

    def _popcount(words: np.ndarray) -> np.ndarray:
        """Number of set bits per frame of a ``[N, ...]`` uint64 array → int64 ``[N]``."""
        return np.bitwise_count(words).reshape(words.shape[0], -1).sum(axis=1, dtype=np.int64)

else:  # pragma: no cover - numpy < 2
    _BYTE_POP = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)

    def _popcount(words: np.ndarray) -> np.ndarray:
        b = np.ascontiguousarray(words).view(np.uint8).reshape(words.shape[0], -1)
        return _BYTE_POP[b].sum(axis=1, dtype=np.int64)


def _fetch(x: np.ndarray, s: int) -> np.ndarray:
    """Shift a contiguous packed array as ONE bit stream: ``y[i] = x[i + s]`` (0 past the ends).

    Rows are laid out one after the other with zero margin words between them (see
    ``_row_words``), so a shift by at most the margin never mixes two rows' pixels where it
    matters, and every operation runs over long contiguous memory.
    """
    if s == 0:
        return x
    flat = x.reshape(-1)
    n = flat.size
    q, t = divmod(abs(s), _WORD)
    y = np.empty_like(flat)
    if q >= n:
        y[:] = 0
        return y.reshape(x.shape)
    if s > 0:  # bits move towards lower indices
        if t == 0:
            y[: n - q] = flat[q:]
        else:
            np.right_shift(flat[q:], np.uint64(t), out=y[: n - q])
            if n - q > 1:
                y[: n - q - 1] |= flat[q + 1 :] << np.uint64(_WORD - t)
        y[n - q :] = 0
    else:  # bits move towards higher indices
        if t == 0:
            y[q:] = flat[: n - q]
        else:
            np.left_shift(flat[: n - q], np.uint64(t), out=y[q:])
            if n - q > 1:
                y[q + 1 :] |= flat[: n - q - 1] >> np.uint64(_WORD - t)
        y[:q] = 0
    return y.reshape(x.shape)


def _row_words(width: int, margin_bits: int) -> int:
    """Words per packed row: the ``width`` pixels, one spare column, then ``margin_bits`` zeros."""
    return -(-(width + 1 + margin_bits) // _WORD)


@lru_cache(maxsize=8)
def _valid_bits(height: int, width: int, n_words: int) -> np.ndarray:
    """``[height, n_words]`` uint64 with the bits of columns ``0..width-1`` set (read-only)."""
    m = np.zeros(n_words, dtype=np.uint64)
    full, rest = divmod(width, _WORD)
    m[:full] = _ALL
    if rest:
        m[full] = (_ONE << np.uint64(rest)) - _ONE
    out = np.ascontiguousarray(np.broadcast_to(m, (height, n_words)))
    out.flags.writeable = False
    return out


# --------------------------------------------------------------------------- footprint


def boundary_radius(height: int, width: int, bound_th: float = 0.008) -> float:
    """Dilation radius in pixels: ``bound_th`` if ``>= 1``, else ``ceil(bound_th·‖(H, W)‖)``."""
    if bound_th >= 1:
        return bound_th
    return float(np.ceil(bound_th * np.linalg.norm((height, width))))


def disk_footprint(radius: float) -> np.ndarray:
    """skimage's (strict) ``disk``: ``X² + Y² <= r²`` on the grid ``arange(-r, r + 1)``, uint8."""
    grid = np.arange(-radius, radius + 1)
    xx, yy = np.meshgrid(grid, grid)
    return (xx**2 + yy**2 <= radius**2).astype(np.uint8)


@lru_cache(maxsize=32)
def _row_runs(radius: float) -> tuple[tuple[int, int, int], ...]:
    """The disk as ``(dy, dx_lo, dx_hi)`` runs: output ``(y, x)`` ORs input ``(y+dy, x+dx)``.

    Offsets are taken as ``cv2.dilate`` applies a kernel with the default anchor
    ``(ksize // 2, ksize // 2)``.
    """
    fp = disk_footprint(radius)
    kh, kw = fp.shape
    ay, ax = kh // 2, kw // 2
    runs = []
    for i in range(kh):
        cols = np.flatnonzero(fp[i])
        if cols.size == 0:
            continue
        if cols[-1] - cols[0] + 1 != cols.size:  # never for a disk; kept for safety
            runs.extend((i - ay, int(c) - ax, int(c) - ax) for c in cols)
        else:
            runs.append((i - ay, int(cols[0]) - ax, int(cols[-1]) - ax))
    return tuple(runs)


# --------------------------------------------------------------------------- packed kernels


def _packed_boundary(p: np.ndarray, width: int) -> np.ndarray:
    """seg2bmap of packed ``[N,H,K]`` masks → packed boundaries; bits of columns >= W are 0.

    ``p`` is modified in place (column W receives a copy of column W-1).
    """
    h = p.shape[1]
    w = width
    # replicate the last column into column W: the east neighbour of column W-1 is itself
    last_w, last_b = divmod(w - 1, _WORD)
    pad_w, pad_b = divmod(w, _WORD)
    p[..., pad_w] |= ((p[..., last_w] >> np.uint64(last_b)) & _ONE) << np.uint64(pad_b)
    # differs from E, S or SE  <=>  (p^E) | (p^S) | (S^SE), and S^SE is p^E one row down.
    # The last row's south neighbour is itself (replicated row): only p^E remains there.
    diff_e = p ^ _fetch(p, 1)
    b = diff_e.copy()
    if h > 1:
        b[:, :-1] |= diff_e[:, 1:]
        b[:, :-1] |= p[:, :-1] ^ p[:, 1:]
    b &= _valid_bits(h, w, p.shape[2])
    return b


def _packed_dilate(b: np.ndarray, radius: float) -> np.ndarray:
    """Binary dilation of packed ``[N,H,K]`` maps by the disk, zero outside the image.

    The rows of ``b`` must carry at least ``radius`` zero bits after column W-1 (margin), so
    that whole-stream shifts never carry one row's pixels into another row's columns.
    """
    runs = _row_runs(radius)
    h = b.shape[1]
    # horizontal runs [lo, hi]: OR of x[j+lo .. j+hi]. Windows look BACKWARDS, win_L[j] = OR
    # x[j-L+1 .. j], so that the final shift by hi reads forwards, into the row's own zero
    # margin. (Forward windows shifted by lo < 0 read before the stream's first word on the
    # first row of a chunk and lost its left edge: F < 1 for identical masks.) Lengths 2^p by
    # doubling, then L = 2^p ∪ (2^p shifted back by L - 2^p).
    need = sorted({(lo, hi) for _, lo, hi in runs})
    max_len = max(hi - lo + 1 for lo, hi in need)
    pow_win = {1: b}  # pow_win[L][j] = OR x[j-L+1 .. j]
    length = 1
    while length * 2 <= max_len:
        prev = pow_win[length]
        nxt = _fetch(prev, -length)
        nxt |= prev
        pow_win[length * 2] = nxt
        length *= 2
    out = np.zeros_like(b)
    for lo, hi in need:  # one horizontal run at a time, ORed into its rows, then dropped
        n_len = hi - lo + 1
        p2 = 1 << (n_len.bit_length() - 1)
        win = pow_win[p2]
        if n_len != p2:
            win = _fetch(win, p2 - n_len) | win
        src = _fetch(win, hi)
        for dy, rlo, rhi in runs:
            if (rlo, rhi) != (lo, hi):
                continue
            if dy >= 0:
                if dy < h:
                    out[:, : h - dy] |= src[:, dy:]
            elif -dy < h:
                out[:, -dy:] |= src[:, : h + dy]
    return out


def _f_from_counts(n_fg, n_gt, fg_match, gt_match) -> np.ndarray:
    """Vectorised DAVIS precision/recall/F with its edge cases, float64, same op order."""
    n_fg = n_fg.astype(np.float64)
    n_gt = n_gt.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(n_fg > 0, fg_match / np.where(n_fg > 0, n_fg, 1.0), 1.0)
        recall = np.where(n_gt > 0, gt_match / np.where(n_gt > 0, n_gt, 1.0), 1.0)
        precision = np.where((n_fg > 0) & (n_gt == 0), 0.0, precision)
        recall = np.where((n_fg == 0) & (n_gt > 0), 0.0, recall)
        denom = precision + recall
        f = np.where(denom == 0, 0.0, 2 * precision * recall / np.where(denom == 0, 1.0, denom))
    return f


# Packed words per chunk of frames (4 frames at 480x854): the working set of a chunk stays in
# the CPU caches through the whole pipeline, which is what makes the word-wise passes cheap.
_CHUNK_WORDS = 1 << 15


def _jf_counts(p: np.ndarray, g: np.ndarray, radius: float | None) -> dict[str, np.ndarray]:
    """Integer counts per frame: intersection/union, and (radius given) boundary matches."""
    n, h, w = p.shape
    keys = ["inter", "union"] + (["n_fg", "n_gt", "fg_match", "gt_match"] if radius is not None else [])
    out = {k: np.zeros(n, dtype=np.int64) for k in keys}
    reach = max(max(-lo, hi) for _, lo, hi in _row_runs(radius)) if radius is not None else 0
    n_words = _row_words(w, reach)
    chunk = max(1, _CHUNK_WORDS // (h * n_words))
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        pp, gg = _pack(p[s:e], n_words), _pack(g[s:e], n_words)
        out["inter"][s:e] = _popcount(pp & gg)
        out["union"][s:e] = _popcount(pp | gg)
        if radius is not None:
            fb, gb = _packed_boundary(pp, w), _packed_boundary(gg, w)
            out["n_fg"][s:e] = _popcount(fb)
            out["n_gt"][s:e] = _popcount(gb)
            out["fg_match"][s:e] = _popcount(fb & _packed_dilate(gb, radius))
            out["gt_match"][s:e] = _popcount(gb & _packed_dilate(fb, radius))
    return out


def _jf_numpy(p: np.ndarray, g: np.ndarray, bound_th: float, want_f: bool):
    n, h, w = p.shape
    radius = boundary_radius(h, w, bound_th) if want_f else None
    c = _jf_counts(p, g, radius)
    with np.errstate(divide="ignore", invalid="ignore"):
        j = np.where(c["union"] == 0, 1.0, c["inter"] / np.where(c["union"] == 0, 1, c["union"]))
    f = _f_from_counts(c["n_fg"], c["n_gt"], c["fg_match"], c["gt_match"]) if want_f else None
    return j, f


# --------------------------------------------------------------------------- public API


def seg2bmap(mask) -> torch.Tensor:
    """DAVIS ``seg2bmap`` boundary map(s) of binary ``[N,H,W]`` or ``[H,W]`` masks (bool)."""
    m = _as_bool_numpy(mask)
    n, h, w = m.shape
    b = _packed_boundary(_pack(m, _row_words(w, 0)), w)
    bits = np.unpackbits(b.view(np.uint8), axis=-1, count=w, bitorder="little")
    out = torch.from_numpy(bits.astype(bool).reshape(n, h, w))
    return out if np.ndim(mask) == 3 else out[0]


def jaccard(preds, target) -> torch.Tensor:
    """Per-frame region similarity J of binary ``[N,H,W]`` masks → float64 ``[N]``.

    Non-zero means foreground. J = 1 where both masks are empty.
    """
    p, g = _check_pair(preds, target)
    j, _ = _jf_numpy(p, g, 0.008, False)
    return torch.from_numpy(j)


def boundary_f(preds, target, bound_th: float = 0.008) -> torch.Tensor:
    """Per-frame DAVIS boundary F-measure of binary ``[N,H,W]`` masks → float64 ``[N]``."""
    p, g = _check_pair(preds, target)
    _, f = _jf_numpy(p, g, bound_th, True)
    return torch.from_numpy(f)


def jaccard_and_boundary_f(preds, target, bound_th: float = 0.008):
    """``(J[N], F[N])`` per frame in one pass over the inputs."""
    p, g = _check_pair(preds, target)
    j, f = _jf_numpy(p, g, bound_th, True)
    return torch.from_numpy(j), torch.from_numpy(f)


def jandf_per_expression(preds, target, bound_th: float = 0.008):
    """Means over the ``T`` frames of one expression: ``(J, F)`` float64 scalars."""
    j, f = jaccard_and_boundary_f(preds, target, bound_th)
    if j.numel() == 0:
        raise ValueError("an expression needs at least one frame")
    return j.mean(), f.mean()



def temporal_consistency(j) -> float:
    """REM's temporal consistency of one expression: ``mean_t |J_t - J_(t-1)|`` over its ``T - 1``
    consecutive frame pairs, from the per-frame region similarities ``J`` (``[T]``, fractions,
    as :func:`jaccard` returns them). **Lower is better**: 0 when the per-frame IoU never changes.

    Definition: REM ("ReferEverything", Bagchi et al., arXiv 2410.23287) reports temporal
    consistency in its Table H as the mean absolute IoU difference between consecutive frames.
    Its public code (github.com/miccooper9/ReferEverything) does not implement the metric, so the
    edge cases below are this project's choices:

    * the IoUs are those of J&F (DAVIS semantics), so a frame where both the prediction and the
      ground truth are empty has IoU 1. A target that leaves the view while the prediction
      correctly goes empty therefore still counts ``|1 - J_before|`` once: the figure measures
      how steadily the *score* moves, not how steadily the mask moves;
    * a one-frame expression (an image, a one-frame video) has no consecutive pair: NaN, and
      the aggregates leave it out (they report how many expressions had a value).
    """
    j = np.asarray(j.detach().cpu() if isinstance(j, torch.Tensor) else j, dtype=np.float64).reshape(-1)
    if j.size < 2:
        return math.nan
    return float(np.abs(np.diff(j)).mean())
