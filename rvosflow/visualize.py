"""Pictures for people: mask overlays of validation expressions, and the flow's trajectory from
video to mask. Both are logged to MLflow by ``rvosflow.trainer.OverlayLogger``.

Colours are ones no synthetic object or background uses (``data/synthetic/world.py``): the
ground truth is a white outline, the prediction a cyan fill with a cyan outline.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from PIL import Image  # noqa: E402

from rvosflow.data.transforms import resize_frames  # noqa: E402

TARGET_COLOUR = (255, 255, 255)
PRED_COLOUR = (0, 235, 255)
TILE_PX = 160  # each frame is drawn this many pixels wide: crisp outlines on 64-px frames too


def _outline(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """Pixels of ``mask`` within ``width`` pixels of its border (4-neighbourhood erosion)."""
    inner = mask.copy()
    for _ in range(width):
        eroded = inner.copy()
        eroded[1:-1, 1:-1] = inner[1:-1, 1:-1] & inner[:-2, 1:-1] & inner[2:, 1:-1] & inner[1:-1, :-2] & inner[1:-1, 2:]
        eroded[[0, -1], :] = False
        eroded[:, [0, -1]] = False
        inner = eroded
    return mask & ~inner


def _upscale(x: np.ndarray, factor: int) -> np.ndarray:
    return x.repeat(factor, axis=0).repeat(factor, axis=1)


def overlay(frame: np.ndarray, pred: np.ndarray, target: np.ndarray | None, factor: int = 1) -> np.ndarray:
    """uint8 [H*factor, W*factor, 3]: the prediction as a translucent cyan fill with a cyan outline,
    the ground truth as a white outline on top (so misses and false alarms both show)."""
    frame, pred = _upscale(frame, factor), _upscale(pred, factor)
    width = max(1, factor)
    out = frame.astype(np.float32)
    out[pred] = 0.55 * out[pred] + 0.45 * np.array(PRED_COLOUR)
    out[_outline(pred, width)] = PRED_COLOUR
    if target is not None:
        out[_outline(_upscale(target, factor), width)] = TARGET_COLOUR
    return out.clip(0, 255).astype(np.uint8)


def _tile_grid(rows: int, cols: int, title_in: float, top_in: float):
    """A figure of ``rows`` x ``cols`` square tiles of TILE_PX pixels, ``title_in`` inches above each
    row for its title and ``top_in`` above all for a legend or heading (fixed sizes, no tight_layout:
    long titles must not shrink the pictures)."""
    tile, gap, label = TILE_PX / 100, 0.06, 0.25
    width = cols * tile + (cols + 1) * gap
    height = top_in + rows * (title_in + tile + label)
    fig = plt.figure(figsize=(width, height), dpi=100)
    axes = []
    for r in range(rows):
        bottom = height - top_in - r * (title_in + tile + label) - title_in - tile
        axes.append([fig.add_axes(((gap + c * (tile + gap)) / width, bottom / height, tile / width, tile / height))
                     for c in range(cols)])
    for ax in (a for row in axes for a in row):
        ax.set_xticks([])
        ax.set_yticks([])
    return fig, axes


def overlay_figure(items: list[dict], frames_per_row: int = 5):
    """One row per expression (one expression per video): evenly spaced frames with overlays,
    the expression and its J&F above them, and a legend."""
    fig, axes = _tile_grid(len(items), frames_per_row, title_in=0.32, top_in=0.35)
    for row, item in zip(axes, items):
        pred = item["pred"].numpy()
        frames = resize_frames(item["frames"], pred.shape[1:]).numpy()
        target = item["target"].numpy() if item.get("target") is not None else None
        factor = max(1, TILE_PX // pred.shape[2])
        for ax, t in zip(row, np.linspace(0, len(pred) - 1, frames_per_row).round().astype(int)):
            ax.imshow(overlay(frames[t], pred[t], None if target is None else target[t], factor), interpolation="nearest")
            ax.set_xlabel(f"frame {t}", fontsize=9, labelpad=2)
        score = f"J&F {item['JF']:.1f}   " if item.get("JF") is not None else ""
        row[0].set_title(f"{score}\u201c{item['caption']}\u201d   ({item['video_id']}/{item['exp_id']})",
                         fontsize=11, loc="left", fontweight="bold")
    fig.legend(handles=[Patch(facecolor=np.array(PRED_COLOUR) / 255, edgecolor="black", label="prediction"),
                        Patch(facecolor="white", edgecolor="black", label="ground truth (outline)")],
               loc="upper center", ncol=2, fontsize=10, frameon=False)
    return fig


def trajectory_figure(traj: dict):
    """The flow as a strip: the input frame, the decoded state z_t at each solver time t from the
    start point (the video, or noise for noise2mask) at t=0 to the predicted mask at t=1, and the
    ground truth."""
    tiles = [("input frame", traj["frame"])]
    tiles += [(f"z_t, t = {t:.2f}", p) for t, p in zip(traj["times"], traj["pictures"])]
    if traj.get("target") is not None:
        tiles.append(("ground truth", traj["target"]))
    fig, axes = _tile_grid(1, len(tiles), title_in=0.0, top_in=0.4)
    for ax, (label, picture) in zip(axes[0], tiles):
        picture = np.asarray(picture)
        ax.imshow(_upscale(picture, max(1, TILE_PX // picture.shape[1])), cmap="gray", vmin=0, vmax=1 if picture.dtype == bool else 255,
                  interpolation="nearest")
        ax.set_xlabel(label, fontsize=10, labelpad=2)
    fig.suptitle(f"\u201c{traj['caption']}\u201d ({traj['video_id']}/{traj['exp_id']}): the flow from video to mask, "
                 "decoded by the VAE (middle frame)", fontsize=11, y=1 - 0.12 / fig.get_figheight())
    return fig


def figure_image(fig) -> Image.Image:
    """The figure as an RGB picture, at its own size and dpi (what ``savefig`` writes)."""
    fig.canvas.draw()
    return Image.fromarray(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy())


__all__ = ["overlay", "overlay_figure", "trajectory_figure", "figure_image"]
