"""Torch datasets over any :class:`ReferringSource` (one per on-disk format), one sample schema.

Training sample (fixed shapes, default-collatable):
    frames uint8 [T, h, w, 3] at model resolution, mask bool [T, h, w], caption (as written; left and
    right swapped when ``data.augment`` flipped the clip),
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
from rvosflow.data.augment import Augment
from rvosflow.data.sampling import clip_starts, sample_frames
from rvosflow.data.transforms import resize_frames, resize_masks

SizeFn = Callable[[int, int], tuple[int, int]]

# data.empty_clips: keep a clip whose target is empty, or draw another item (the release).
EMPTY_CLIPS = ("keep", "resample")
MAX_DRAWS = 100  # resample: draws before giving up (the release never gives up)


class ClipDataset(Dataset):
    """Training clips of ``num_frames`` frames: one item per expression, or with
    ``frame_sampler="release"`` one per ``num_frames``-frame chunk of its video (``clip_starts``).

    ``augment`` (``augment.make_augment``) replaces the plain resize to the model size;
    ``resample_empty`` replaces a clip with no target pixel by a random item, as the release does.
    """

    def __init__(self, source, num_frames: int, frame_sampler: str, size_fn: SizeFn,
                 augment: Augment | None = None, resample_empty: bool = False):
        self.source = source
        self.num_frames = num_frames
        self.frame_sampler = frame_sampler
        self.size_fn = size_fn
        self.augment = augment
        self.resample_empty = resample_empty
        # (expression index, anchor frame or None) per item
        self.items = [(i, start) for i, e in enumerate(source.expressions)
                      for start in clip_starts(len(e.frame_names), num_frames, frame_sampler)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        # Torch's RNG is seeded per worker by Lightning's seed_everything(workers=True).
        rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,))))
        for _ in range(MAX_DRAWS):
            expr, idx, frames, mask, caption = self.clip(i, rng)
            if not self.resample_empty or bool(mask.any()):
                break
            i = int(rng.integers(len(self.items)))  # the release draws any item of the dataset
        else:
            raise RuntimeError(f"{self.source!r}: no clip with a target pixel in {MAX_DRAWS} draws "
                               "(data.empty_clips=resample)")
        return {
            "frames": frames,
            "mask": mask,
            "caption": caption,  # as written (swapped when flipped); the module cleans it (text.*)
            "video_id": expr.video_id,
            "exp_id": expr.exp_id,
            "frame_indices": torch.tensor(idx),
            "frames_key": content_key(frames),
            "mask_key": content_key(mask),
        }

    def clip(self, i: int, rng: np.random.Generator):
        """Item ``i``'s expression, frame indices, frames and mask at the model size, and caption."""
        e, anchor = self.items[i]
        expr = self.source.expressions[e]
        idx = sample_frames(len(expr.frame_names), self.num_frames, self.frame_sampler, rng, anchor)
        frames = self.source.load_frames(expr.video_id, idx)
        mask = self.source.load_target(expr, idx)
        size = self.size_fn(*frames.shape[1:3])
        caption = expr.text
        if self.augment is None:
            return expr, idx, resize_frames(frames, size), resize_masks(mask, size), caption
        return expr, idx, *self.augment(frames, mask, caption, size, rng)


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
