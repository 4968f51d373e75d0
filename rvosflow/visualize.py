"""Mask overlays for people to look at: prediction in red, ground truth outlined in green."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from rvosflow.data.transforms import resize_frames  # noqa: E402


def _outline(mask: np.ndarray) -> np.ndarray:
    inner = mask.copy()
    inner[1:-1, 1:-1] = mask[1:-1, 1:-1] & mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2] & mask[1:-1, 2:]
    return mask & ~inner


def overlay(frame: np.ndarray, pred: np.ndarray, target: np.ndarray | None) -> np.ndarray:
    """uint8 [H, W, 3] with the predicted mask tinted red and the target's outline in green."""
    out = frame.astype(np.float32)
    out[pred] = 0.5 * out[pred] + 0.5 * np.array([255, 0, 0])
    if target is not None:
        out[_outline(target)] = (0, 255, 0)
    return out.clip(0, 255).astype(np.uint8)


def overlay_figure(items: list[dict], frames_per_row: int = 6):
    """One row per expression: evenly spaced frames with overlays, the expression above them."""
    fig, axes = plt.subplots(len(items), frames_per_row, figsize=(2.0 * frames_per_row, 2.3 * len(items)),
                             squeeze=False)
    for row, item in zip(axes, items):
        pred = item["pred"].numpy()
        frames = resize_frames(item["frames"], pred.shape[1:]).numpy()
        target = item["target"].numpy() if item.get("target") is not None else None
        for ax, t in zip(row, np.linspace(0, len(pred) - 1, frames_per_row).round().astype(int)):
            ax.imshow(overlay(frames[t], pred[t], None if target is None else target[t]), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(f"frame {t}", fontsize=7)
        row[0].set_title(f"{item['video_id']}/{item['exp_id']}: {item['caption']}", fontsize=8, loc="left")
    fig.subplots_adjust(left=0.02, right=0.98, top=0.95, bottom=0.03, wspace=0.05, hspace=0.35)
    return fig


__all__ = ["overlay", "overlay_figure"]
