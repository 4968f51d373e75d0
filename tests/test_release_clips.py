"""The release's training clips (data.frame_sampler=release), augmentation (data.augment=release)
and empty-clip rule (data.empty_clips=resample): items per chunk, the anchor/local/global frame
structure, determinism, frame/mask/caption alignment under crop and flip, sizes, batches."""

from __future__ import annotations

import dataclasses
import math
from collections import Counter

import numpy as np
import pytest
import torch

from rvosflow.caches import content_key
from rvosflow.config import compose, resolve
from rvosflow.data.augment import release_augment, release_crop_box, swap_left_right
from rvosflow.data.datamodules import from_config
from rvosflow.data.datasets import ClipDataset
from rvosflow.data.formats.base import ExpressionRef
from rvosflow.data.sampling import (
    RELEASE_MAX_SKIP,
    clip_starts,
    release_frames,
    sample_frames,
)
from rvosflow.data.transforms import model_size
from rvosflow.errors import ConfigError
from rvosflow.models.encoding import clean_caption
from rvosflow.paths import PROJECT_ROOT
from rvosflow.text_cache import run_captions


def data_cfg(name, root, *extra, **over):
    cfg = compose([f"data={name}", f"data.root={root}", "data.num_workers=0", "data.height=32", "data.max_width=32",
                   *extra, *[f"data.{k}={v}" for k, v in over.items()]])
    return resolve(cfg).data


class SquareSource:
    """One video per expression: a white square on black in the left quarter of the frame (the
    mask is exactly the white pixels), or black frames for the videos in ``empty``."""

    def __init__(self, num_videos=3, frames=9, h=48, w=64, empty=(), text="the square on the left"):
        self.square = np.zeros((frames, h, w, 3), np.uint8)
        self.square[:, 12:36, 4:16] = 255
        self.empty = set(empty)
        self.expressions = [ExpressionRef(f"v{i}", "0", text, (1,), tuple(f"{t:05d}" for t in range(frames)))
                            for i in range(num_videos)]

    def load_frames(self, video_id, indices):
        return (0 * self.square if video_id in self.empty else self.square)[indices]

    def load_target(self, expr, indices):
        return self.load_frames(expr.video_id, indices)[..., 0] > 127


def size_fn(h, w):
    return model_size(h, w, 32, 32, 8)


def test_release_items_are_one_per_chunk_per_expression(tiny_benchmark):
    src = from_config(data_cfg("synthetic", tiny_benchmark / "mevis"), 8).source("train")
    for k in (1, 5, 9, 17):
        ds = ClipDataset(src, k, "release", size_fn)
        per_expr = Counter(e for e, _ in ds.items)
        assert len(per_expr) == len(src.expressions)
        for e, count in per_expr.items():
            assert count == math.ceil(len(src.expressions[e].frame_names) / k)  # 9-frame videos
        assert len(ds) == sum(per_expr.values())
        assert [a for e, a in ds.items if e == 0] == list(range(0, 9, k))
    assert len(ClipDataset(src, 5, "global", size_fn)) == len(src.expressions)  # others: one per expression


def test_release_frames_are_anchor_local_and_global():
    seen_skips, later_local_repeats = set(), 0
    for seed in range(300):
        n, k = 40, 17
        anchor = [0, 17, 34, 39][seed % 4]
        draws = np.random.default_rng(seed)
        before, after = int(draws.integers(1, RELEASE_MAX_SKIP + 1)), int(draws.integers(1, RELEASE_MAX_SKIP + 1))
        seen_skips |= {before, after}
        idx = release_frames(anchor, n, k, np.random.default_rng(seed))
        assert len(idx) == k and idx == sorted(idx) and all(0 <= i < n for i in idx)
        lo, hi = max(0, anchor - before), min(n - 1, anchor + after)
        rest = Counter(idx)
        for i in (anchor, lo, hi):  # the anchor and its two local frames, clamped (repeats at the ends)
            assert rest[i] > 0, (seed, anchor, idx)
            rest[i] -= 1
        glob = list(rest.elements())
        assert len(glob) == k - 3 and len(set(glob)) == len(glob)  # without replacement
        assert all(i < lo or i >= hi for i in glob)  # outside the local window; its last frame may repeat
        later_local_repeats += hi in glob
    assert seen_skips == {1, 2, 3} and later_local_repeats > 0
    assert release_frames(4, 9, 1, np.random.default_rng(0)) == [4]


@pytest.mark.parametrize("n", [1, 2, 5, 9, 14, 16, 17, 20, 35])
def test_release_frames_fill_short_videos(n):
    for anchor in clip_starts(n, 17, "release"):
        for seed in range(20):
            idx = sample_frames(n, 17, "release", np.random.default_rng(seed), anchor)
            assert len(idx) == 17 and idx == sorted(idx) and anchor in idx and all(0 <= i < n for i in idx)
    with pytest.raises(ValueError, match="anchor"):
        sample_frames(n, 17, "release", np.random.default_rng(0))


def test_release_clips_are_deterministic_under_a_seed(tiny_benchmark):
    src = from_config(data_cfg("synthetic", tiny_benchmark / "mevis"), 8).source("train")
    ds = ClipDataset(src, 5, "release", size_fn, release_augment_fn(), resample_empty=True)

    def draw(seed):
        torch.manual_seed(seed)
        return [(s["frames_key"], s["mask_key"], s["caption"], s["frame_indices"].tolist()) for s in map(ds.__getitem__, range(6))]

    assert draw(0) == draw(0)
    assert draw(0) != draw(1)


def release_augment_fn(height=32):
    from rvosflow.data.augment import make_augment

    return make_augment("release", height)


def test_flip_and_crop_keep_frames_masks_and_caption_aligned():
    src = SquareSource()
    frames, mask = src.square[:3], src.square[:3, :, :, 0] > 127
    size = size_fn(*frames.shape[1:3])
    plain_area = float(torch.nn.functional.interpolate(torch.as_tensor(mask[:1, None], dtype=torch.float32), size=size,
                                                       mode="area").sum())
    flips = crops = 0
    for seed in range(60):
        f, m, caption = release_augment(frames, mask, "the square on the left", size, np.random.default_rng(seed), 32)
        assert f.shape == (3, *size, 3) and f.dtype == torch.uint8 and m.shape == (3, *size) and m.dtype == torch.bool
        assert (m == (f[..., 0] > 127)).float().mean() > 0.98  # the mask is where the square is, every frame
        assert torch.equal(m[0], m[2])  # one box and one flip for the whole clip
        if not m.any():
            continue  # cropped away
        centre = m.nonzero()[:, 2].float().mean() / size[1]
        flipped = caption == "the square on the right"
        assert flipped or caption == "the square on the left"
        assert (centre > 0.5) == flipped, (seed, caption, float(centre))
        flips += flipped
        crops += float(m[0].sum()) > 1.1 * plain_area  # a crop zooms in
    assert 10 < flips < 50 and crops > 5


def test_crop_box_follows_the_release_sizes_at_480_rows():
    h, w = 720, 1280  # MeViS frames
    size = model_size(h, w, 480, 832, 16)
    assert size == (464, 832)
    heights = []
    for seed in range(400):
        y0, y1, x0, x1 = release_crop_box(h, w, size, np.random.default_rng(seed), 1.0)
        assert 0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w
        assert abs((x1 - x0) / (y1 - y0) / (size[1] / size[0]) - 1) < 0.01  # the model's aspect: no stretch
        heights.append(y1 - y0)
    # the release's crop heights 384..min(H', 600) at H' = 384 / 480 / 576 rows: 2/3 to all of the frame
    assert min(heights) >= 480 - 2 and max(heights) >= 710 and min(heights) <= 500  # 16:9 is a bit wider than 464x832
    frames, mask = np.zeros((1, 72, 128, 3), np.uint8), np.zeros((1, 72, 128), bool)
    size = model_size(72, 128, 48, 80, 16)
    for seed in range(10):  # both branches end at the model size: multiples of 16
        f, m, _ = release_augment(frames, mask, "", size, np.random.default_rng(seed), 48)
        assert f.shape == (1, *size, 3) and m.shape == (1, *size) and size[0] % 16 == size[1] % 16 == 0


def test_caption_swap_is_left_right_at_word_starts():
    assert swap_left_right("the leftmost car turning right") == "the rightmost car turning left"
    assert swap_left_right("the bright upright man on the left") == "the bright upright man on the right"
    assert swap_left_right("Left of the right-hand box") == "Right of the left-hand box"


def test_empty_clips_are_resampled_or_kept():
    src = SquareSource(num_videos=3, empty={"v2"})
    torch.manual_seed(0)
    kept = ClipDataset(src, 5, "release", size_fn)
    assert not kept[len(kept) - 1]["mask"].any()  # the empty video's last chunk, kept as is
    resampled = ClipDataset(src, 5, "release", size_fn, resample_empty=True)
    for _ in range(10):
        s = resampled[len(resampled) - 1]
        assert s["mask"].any() and s["video_id"] != "v2"
    with pytest.raises(RuntimeError, match="no clip with a target pixel"):
        ClipDataset(SquareSource(1, empty={"v0"}), 5, "release", size_fn, resample_empty=True)[0]


def test_a_release_datamodule_yields_batches_that_stack(tiny_benchmark):
    cfg = data_cfg("synthetic", tiny_benchmark / "mevis", "+data/clips=release", batch_size=4, num_frames=5)
    assert (cfg.frame_sampler, cfg.augment, cfg.empty_clips) == ("release", "release", "resample")
    dm = from_config(cfg, 8)
    src = dm.source("train")
    # captions with left/right, so that a flip changes them
    src.expressions = [dataclasses.replace(e, text=f"{e.text} on the left") for e in src.expressions]
    loader = dm.train_dataloader()
    assert len(loader.dataset) == 2 * len(src.expressions)  # 9-frame videos, 5-frame chunks
    captions = set()
    for i, b in enumerate(loader):
        assert b["frames"].shape == (4, 5, 32, 32, 3) and b["mask"].shape == (4, 5, 32, 32)
        assert b["mask"].flatten(1).any(1).all()  # resampled: never an empty target
        for j in range(4):  # the latent-cache keys are those of the augmented pixels
            assert b["frames_key"][j] == content_key(b["frames"][j]) and b["mask_key"][j] == content_key(b["mask"][j])
        captions |= set(b["caption"])
        if i == 8:
            break
    assert any(c.endswith("on the right") for c in captions)
    text = resolve(compose([])).text  # the text cache covers the flipped captions, cleaned as the module does
    cached = run_captions(dm, "train", text)
    assert {clean_caption(c, True, text.clean, text.lowercase) for c in captions} <= set(cached)
    assert not any(c.endswith("on the right") for c in run_captions(dm, "validate", text))


def test_release_keys_are_checked():
    for key, value in (("augment", "flip"), ("empty_clips", "drop"), ("frame_sampler", "chunks")):
        with pytest.raises(ConfigError, match=rf"^data\.{key}: expected one of .*, got '{value}'$"):
            resolve(compose([f"data.{key}={value}"]))
    defaults = compose()
    assert (defaults.data.frame_sampler, defaults.data.augment, defaults.data.empty_clips) == ("global", "none", "keep")
    assert defaults.cache_latents and not compose(["+data/clips=release"]).cache_latents  # every clip a miss


def test_the_release_recipe_trains_on_the_releases_clips(tiny_benchmark):
    cfg = resolve(compose(["+experiment=mevis_release", f"data.root={tiny_benchmark / 'mevis'}",
                           f"model.path={PROJECT_ROOT / 'data' / 'tiny-wan'}"]))
    assert (cfg.data.format, cfg.data.frame_sampler, cfg.data.augment, cfg.data.empty_clips) == \
        ("mevis", "release", "release", "resample")
    assert not cfg.cache_latents
