"""Shape conventions: model resolution (multiples of VAE factor x patch), 1+4k frame padding,
windows over long videos, and resizing masks and frames."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def model_size(height: int, width: int, target_height: int, max_width: int, multiple: int) -> tuple[int, int]:
    """Scale (aspect kept) so rows = ``target_height`` but columns <= ``max_width``, then round
    each side down to ``multiple`` (VAE spatial factor x DiT patch: 16 for Wan2.1)."""
    scale = min(target_height / height, max_width / width)
    h = max(multiple, int(height * scale) // multiple * multiple)
    w = max(multiple, int(width * scale) // multiple * multiple)
    return h, w


def padded_frame_count(n: int, temporal_factor: int = 4) -> int:
    """Smallest ``1 + k * temporal_factor`` >= n (the Wan VAE silently drops other frames)."""
    return 1 + math.ceil(max(n - 1, 0) / temporal_factor) * temporal_factor


def pad_frames(x: torch.Tensor, length: int, dim: int = 0) -> torch.Tensor:
    """Pad along ``dim`` to ``length`` by repeating the last frame."""
    n = x.shape[dim]
    if n >= length:
        return x
    last = x.narrow(dim, n - 1, 1)
    return torch.cat([x, last.expand(*[length - n if d == dim else -1 for d in range(x.dim())])], dim=dim)


def windows(num_frames: int, window: int) -> list[tuple[int, int]]:
    """Consecutive ``[start, stop)`` windows of at most ``window`` frames covering the video."""
    return [(s, min(s + window, num_frames)) for s in range(0, num_frames, window)]


def resize_frames(frames: np.ndarray | torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 [T, H, W, 3] -> uint8 [T, h, w, 3] (bilinear, antialiased when shrinking).

    Pillow on uint8 frames: 1.8x more clips/s per DataLoader worker than a float32 torch
    ``interpolate(antialias=True)`` (``make bench-dataloading`` measures both side by side).
    """
    x = frames.numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    if tuple(x.shape[1:3]) == tuple(size):
        return torch.from_numpy(np.ascontiguousarray(x))
    h, w = size
    return torch.from_numpy(np.stack([np.asarray(Image.fromarray(f).resize((w, h), Image.BILINEAR)) for f in x]))


def resize_masks(masks: np.ndarray | torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """bool/probability [T, H, W] -> bool [T, h, w]: area-weighted resize, then > 0.5."""
    x = torch.as_tensor(masks)
    if tuple(x.shape[1:3]) == tuple(size) and x.dtype == torch.bool:
        return x
    y = F.interpolate(x[:, None].float(), size=size, mode="bilinear", antialias=True, align_corners=False)
    return y[:, 0] > 0.5
