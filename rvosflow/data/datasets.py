"""Torch datasets over any :class:`ReferringSource` (one per on-disk format), one sample schema.

Training sample (fixed shapes, default-collatable):
    frames uint8 [T, h, w, 3] at model resolution, mask bool [T, h, w], caption (as written),
    video_id, exp_id, frame_indices long [T], frames_key and mask_key (content hashes of the
    frames and mask, the latent-cache keys).
Evaluation sample (whole video; batches are lists of these):
    the same keys over all frames (frames_key, no mask_key), plus orig_size (H, W), frame_names,
    kind, and ``target`` bool
    [T, H, W] at the original resolution (None when the split has no masks).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from rvosflow.caches import content_key
from rvosflow.data.sampling import sample_frames
from rvosflow.data.transforms import resize_frames, resize_masks

SizeFn = Callable[[int, int], tuple[int, int]]


class ClipDataset(Dataset):
    """One item per expression: a ``num_frames`` clip sampled from its video."""

    def __init__(self, source, num_frames: int, frame_sampler: str, size_fn: SizeFn):
        self.source = source
        self.num_frames = num_frames
        self.frame_sampler = frame_sampler
        self.size_fn = size_fn

    def __len__(self) -> int:
        return len(self.source.expressions)

    def __getitem__(self, i: int) -> dict:
        expr = self.source.expressions[i]
        # Torch's RNG is seeded per worker by Lightning's seed_everything(workers=True).
        rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,))))
        idx = sample_frames(len(expr.frame_names), self.num_frames, self.frame_sampler, rng)
        frames = self.source.load_frames(expr.video_id, idx)
        size = self.size_fn(*frames.shape[1:3])
        frames = resize_frames(frames, size)
        mask = resize_masks(self.source.load_target(expr, idx), size)
        return {
            "frames": frames,
            "mask": mask,
            "caption": expr.text,  # as written; the module cleans it for the text encoder (text.*)
            "video_id": expr.video_id,
            "exp_id": expr.exp_id,
            "frame_indices": torch.tensor(idx),
            "frames_key": content_key(frames),
            "mask_key": content_key(mask),
        }


class VideoDataset(Dataset):
    """One item per expression: its whole video, scored at the original resolution."""

    def __init__(self, source, size_fn: SizeFn, limit: int | None = None, with_target: bool = True):
        self.source = source
        self.size_fn = size_fn
        self.with_target = with_target and source.has_masks
        self.expressions = source.expressions
        if limit is not None and limit < len(self.expressions):
            # An evenly spread, deterministic subset (for quick in-training validation).
            keep = np.linspace(0, len(self.expressions) - 1, limit).round().astype(int)
            self.expressions = [self.expressions[k] for k in keep]

    def __len__(self) -> int:
        return len(self.expressions)

    def __getitem__(self, i: int) -> dict:
        expr = self.expressions[i]
        frames = self.source.load_frames(expr.video_id)
        orig_size = tuple(frames.shape[1:3])
        frames = resize_frames(frames, self.size_fn(*orig_size))
        return {
            "frames": frames,
            "frames_key": content_key(frames),
            "target": torch.as_tensor(self.source.load_target(expr)) if self.with_target else None,
            "caption": expr.text,  # as written; the module cleans it for the text encoder (text.*)
            "video_id": expr.video_id,
            "exp_id": expr.exp_id,
            "frame_indices": torch.arange(len(frames)),
            "frame_names": list(expr.frame_names),
            "orig_size": orig_size,
            "kind": expr.kind,  # "" unless the benchmark has an expression_kinds.json sidecar
        }


def as_list(batch: list[dict]) -> list[dict]:
    """Collate for whole-video evaluation: videos differ in length and size, so a batch stays a
    list (the module runs equally shaped ones together)."""
    return batch
