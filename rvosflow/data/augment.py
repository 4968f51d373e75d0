"""The public FlowRVS release's training clips and augmentation, as data options.

    data.frame_sampler: release   # one clip per num_frames-frame chunk per expression, anchored
    data.augment: release         # random resize/crop, then a horizontal flip that swaps left/right
    data.empty_clips: resample    # a clip with no target pixel is replaced by a random item
    (all three at once, with the latent cache off: ``+data/clips=release``)

What the release does, read from github.com/xmz111/FlowRVS at f133982 (MIT):

Items (``datasets/mevis.py``, ``MeViSDataset.prepare_metas``):
  - one item per expression per chunk: ``for frame_id in range(0, vid_len, num_frames)``, so an
    expression of a ``vid_len``-frame video gives ``ceil(vid_len / num_frames)`` items (17 frames:
    ``--num_frames`` default, ``opts.py``), each anchored at its chunk's first frame ``frame_id``;
  - a video's frame names are sorted (``sorted(vid_data['frames'])``) and masks are indexed by the
    position in that sorted list (rvosflow keeps the file's order, which MeViS lists sorted);
  - no video is skipped for being short (``datasets/ytvos.py`` skips videos shorter than
    ``num_frames``; MeViS does not).

Frames (``datasets/mevis.py``, ``FrameSampler.sample_global_frames(frame_id, vid_len, num_frames)``;
the same code sits in ``datasets/transform_utils.py`` and inline in ``datasets/ytvos.py``):
  - the anchor ``frame_id``; then two local frames ``max(0, frame_id - b)`` and
    ``min(vid_len - 1, frame_id + a)``, ``a, b = random.randint(1, 3)`` each (inclusive; the
    ``--max_skip 3`` of ``opts.py`` is not read), so at the video's ends the anchor repeats;
  - for ``num_frames > 3``, ``num_frames - 3`` global frames by ``random.sample`` (no replacement)
    from ``all_inds[:min(local)] + all_inds[max(local):]`` — the later local frame itself stays in
    the pool, so it can repeat; if that pool has ``<= num_frames - 3`` frames, from the whole video
    without replacement (any frame may repeat one already taken); if the video has fewer than
    ``num_frames - 3`` frames, one ``random.sample`` at a time, with replacement;
  - the indices are sorted (``sample_indx.sort()``); no temporal reversal for MeViS
    (``datasets/ytvos.py`` reverses the clip with probability 0.3 in training; not reproduced here);
  - ``num_frames == 1`` is the anchor alone; ``num_frames == 2`` would return 3 frames (refused here).

Target (``MeViSDataset.__getitem__``):
  - the mask is the union of the expression's objects: ``mask += coco_mask.decode(...)`` over its
    ``anno_id`` (a ``None`` RLE adds nothing), later binarised (> 0.5) by the resize;
  - a frame whose mask is empty is ``valid = 0``; after the transforms, if *no* frame of the clip is
    valid (its box, the bounding box of the mask, clipped by the crop, has no area: ``T.Check``
    in ``datasets/transforms_video.py``), the item is dropped and ``idx = random.randint(0,
    len - 1)`` — any item of the dataset — is drawn instead, until one is valid (no bound);
  - caption: ``" ".join(exp.lower().split())`` (lower-cased, whitespace collapsed); rvosflow's
    module does the same at training time (``text.clean``, ``text.lowercase: train``).

Augmentation (``datasets/transform_utils.py``, ``make_coco_transforms('train', max_size=832)``,
``--max_size 832`` in ``opts.py``; the classes are in ``datasets/transforms_video.py``):
  - ``RandomSelect(p=0.5)``: with probability 0.5 ``RandomResize([480], max_size=832)``, else
    ``RandomResize([400, 500, 600])`` (no max size), ``RandomSizeCrop(384, 600)``,
    ``RandomResize([480], max_size=832)``; one draw per clip, the same for all its frames;
  - ``resize``: the shorter side to the drawn size with the aspect kept (``int()`` of the longer
    side), lowered so the longer side stays <= ``max_size``, then each side floored to a multiple
    of 32; frames by torchvision's ``F.resize`` (PIL bilinear), masks by nearest then > 0.5;
  - ``RandomSizeCrop``: width ``randint(384, min(W, 600))``, height ``randint(384, min(H, 600))``
    (independent, inclusive), at a uniform position (``T.RandomCrop.get_params``), so a crop's
    aspect ratio is random and clips differ in size (the release trains with batch 1 per GPU);
  - ``RandomHorizontalFlip(p=0.5)`` of all frames and masks, with the caption rewritten
    ``caption.replace('left', '@').replace('right', 'left').replace('@', 'right')``: plain substring
    replacement, so "bright" becomes "bleft", "upright" "upleft", and any "@" becomes "right";
  - then ``ToTensor`` and ``Normalize([0.5] * 3, [0.5] * 3)``: pixels to [-1, 1]; in training
    ``engine.py`` calls ``check_shape`` (resize up to a multiple of 16: a no-op, the sides are
    multiples of 32 already). No colour jitter (``PhotometricDistort`` is defined, not used).

What ``data.augment: release`` does here, and where it differs:
  - the same two branches with the same probabilities, but the result is always the model size
    of the frame (``transforms.model_size``: rows ``data.height``, columns <= ``data.max_width``,
    multiples of the bundle's spatial multiple) so that clips stack into batches: the plain branch
    is rvosflow's usual resize (the release's 32-multiple floor is not applied);
  - the crop branch draws the release's intermediate size (shorter side 400/500/600, floored to
    32) and the crop's *height* as the release does (``randint(384, min(H', 600))``), but takes the
    crop's width from the model size's aspect ratio (capped by the frame, then the height follows)
    instead of an independent ``randint(384, min(W', 600))``: resizing a random-aspect crop to a
    fixed size would stretch objects up to ~2.7x, which the release never does. The crop box is
    mapped back to the original pixels (rounded), and frames and masks are cut by the same box and
    resized once, as without augmentation (bilinear antialiased frames; area-weighted masks > 0.5);
  - the release's pixel sizes are for 480-row clips: they scale by ``data.height / 480`` (exact at
    the release's 480; at the embedded default's 64 rows, crops keep 64-100% of the height);
  - the flip swaps "left" and "right" at the start of a word ("leftmost" -> "rightmost",
    "right-hand" -> "left-hand"), not inside one ("bright", "upright" stay): the release's intent
    without its substring accidents;
  - ``data.empty_clips: resample`` redraws any item while the clip has no target pixel after
    augmentation (the release's rule is its box check: a 1-pixel-wide object counts as empty
    there), at most ``datasets.MAX_DRAWS`` times, then an error.

Cost: the latent cache keys are content hashes of the final pixels (``caches.content_key``,
computed by ``ClipDataset`` after augmentation), so an augmented or newly drawn clip is a new key:
it is encoded afresh, never served a stale latent. But nearly every clip these options draw is
new, so the cache saves nothing for them, and every miss is still stored, in memory and under
``latent_cache_dir``: at the embedded default 3,146 entries, 4.8 GB on disk after 200 steps of 8
(today's clips: 793 entries for the whole run, reused every epoch). ``+data/clips=release``
therefore sets ``cache_latents: false``; each training step then encodes its clips and masks,
which on CPU outweighs the tiny DiT: at the embedded default the VAE encodes of one batch took
5.7-6.2 s against a 1.3-3.4 s step from cached latents (2 shared cores, 2026-12-01), and 100 steps
took 18 min against 1 min with today's clips and a warm cache.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import partial

import numpy as np
import torch

from rvosflow.data.transforms import resize_frames, resize_masks

AUGMENTATIONS = ("none", "release")

# The release's sizes (datasets/transform_utils.py make_coco_transforms), for clips of 480 rows.
RELEASE_HEIGHT = 480
CROP_SHORT_SIDES = (400, 500, 600)   # RandomResize([400, 500, 600]) before the crop
CROP_MIN, CROP_MAX = 384, 600        # RandomSizeCrop(384, 600)
RELEASE_MULTIPLE = 32                # transforms_video.resize floors each side to a multiple of 32

Augment = Callable[[np.ndarray, np.ndarray, str, tuple[int, int], np.random.Generator],
                   tuple[torch.Tensor, torch.Tensor, str]]


def make_augment(name: str, height: int) -> Augment | None:
    """The training augmentation ``data.augment`` names (None for ``none``); ``height`` is
    ``data.height``, which scales the release's pixel sizes."""
    if name == "none":
        return None
    if name == "release":
        return partial(release_augment, height=height)
    raise ValueError(f"data.augment: expected one of {', '.join(AUGMENTATIONS)}, got {name!r}")


def release_augment(frames: np.ndarray, mask: np.ndarray, caption: str, size: tuple[int, int],
                    rng: np.random.Generator, height: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """uint8 [T, H, W, 3] frames and bool [T, H, W] mask at the original size -> the same at
    ``size`` (model size), cut by one crop box (or none) and flipped together; the caption with
    left/right swapped when flipped."""
    frames, mask = np.asarray(frames), np.asarray(mask)
    y0, y1, x0, x1 = 0, frames.shape[1], 0, frames.shape[2]
    if rng.random() >= 0.5:  # RandomSelect: p = 0.5 the plain resize, else resize + crop
        y0, y1, x0, x1 = release_crop_box(frames.shape[1], frames.shape[2], size, rng, height / RELEASE_HEIGHT)
    out_frames = resize_frames(np.ascontiguousarray(frames[:, y0:y1, x0:x1]), size)
    out_mask = resize_masks(np.ascontiguousarray(mask[:, y0:y1, x0:x1]), size)
    if rng.random() < 0.5:  # RandomHorizontalFlip(p=0.5)
        out_frames, out_mask, caption = out_frames.flip(2), out_mask.flip(2), swap_left_right(caption)
    return out_frames, out_mask, caption


def release_crop_box(h: int, w: int, size: tuple[int, int], rng: np.random.Generator,
                     scale: float = 1.0) -> tuple[int, int, int, int]:
    """``(y0, y1, x0, x1)`` in the original ``h x w`` frame: the release's resize of the shorter
    side to 400/500/600 (x ``scale``, floored to 32 x ``scale``), a crop of the release's height
    at a uniform position, mapped back to the original pixels, where it has ``size``'s aspect ratio."""
    mult = max(1, round(RELEASE_MULTIPLE * scale))
    short = round(CROP_SHORT_SIDES[int(rng.integers(len(CROP_SHORT_SIDES)))] * scale)
    # transforms_video.resize: shorter side to `short`, the longer one int() of the aspect
    h2, w2 = (short, int(short * w / h)) if h <= w else (int(short * h / w), short)
    h2, w2 = max(mult, h2 // mult * mult), max(mult, w2 // mult * mult)
    lo = min(round(CROP_MIN * scale), h2)
    ch = int(rng.integers(lo, min(h2, round(CROP_MAX * scale)) + 1))
    # the crop's width/height in resized pixels that is the model size's in original pixels (the
    # floors above scale rows and columns slightly differently)
    aspect = size[1] / size[0] * (h / h2) / (w / w2)
    cw = max(1, round(ch * aspect))
    if cw > w2:  # the model's aspect does not fit at this height: the width binds
        cw, ch = w2, max(1, round(w2 / aspect))
    top, left = int(rng.integers(0, h2 - ch + 1)), int(rng.integers(0, w2 - cw + 1))
    sy, sx = h / h2, w / w2
    y0, x0 = min(round(top * sy), h - 1), min(round(left * sx), w - 1)
    return y0, max(y0 + 1, min(h, round((top + ch) * sy))), x0, max(x0 + 1, min(w, round((left + cw) * sx)))


_LEFT_RIGHT = re.compile(r"\b(left|right)", re.IGNORECASE)


def swap_left_right(caption: str) -> str:
    """'left' <-> 'right' where a word starts with one (leftmost, right-hand), case kept."""
    def swap(m: re.Match) -> str:
        new = "right" if m.group(0).lower() == "left" else "left"
        return new.capitalize() if m.group(0)[0].isupper() else new

    return _LEFT_RIGHT.sub(swap, caption)
