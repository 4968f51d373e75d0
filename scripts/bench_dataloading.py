"""Training-clip loading rate: clips/s per DataLoader worker for 17-frame clips at the release's
480-row / <= 832-column resolution, decoded from JPEG in the MeViS layout.

    python scripts/bench_dataloading.py [--videos 4] [--frames 48] [--clips 24] [--workers 0 2]

Writes a temporary MeViS split of ``--videos`` videos of ``--frames`` 720x1280 JPEG frames
(textured backgrounds + moving shapes, quality 90, ~ the size of real MeViS/YouTube frames) with
COCO-RLE masks, then times ``ClipDataset`` (global frame sampling, decode, antialiased resize of
frames and masks to 464x832 -- 720x1280 at <= 480 rows and <= 832 columns, multiples of 16) in
the main process (= one worker) and through DataLoaders with ``--workers`` processes.

What a GPU consumes (estimate, Wan2.1-T2V-1.3B, one 17x480x832 clip -> 5x60x104 latents ->
7,800 tokens with 2x2 patches): linear layers 6 x 1.3e9 x 7,800 = 6.1e13 FLOP (forward +
backward), self-attention 3 x 4 x 7,800^2 x 1,536 x 30 layers = 3.4e13, so ~1e14 FLOP per clip;
an H100 at ~40% of its 989 TFLOP/s bf16 peak does ~4 clips/s. Loading keeps up when
workers x clips/s per worker exceeds that (the real-data configs use ``num_workers: 8``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def write_split(root: Path, videos: int, frames: int, height: int, width: int, seed: int = 0) -> Path:
    from rvosflow.data.formats.base import rle_encode, write_jpeg

    rng = np.random.default_rng(seed)
    split = root / "train"
    meta, masks = {}, {}
    yy, xx = np.mgrid[0:height, 0:width]
    for v in range(videos):
        vid = f"bench{v:03d}"
        # A smooth random background (low-frequency noise upsampled) with fine grain, like a photo.
        low = rng.uniform(0, 255, (height // 40 + 2, width // 40 + 2, 3)).astype(np.float32)
        bg = torch.nn.functional.interpolate(torch.from_numpy(low).permute(2, 0, 1)[None], size=(height, width),
                                             mode="bicubic", align_corners=False)[0].permute(1, 2, 0).numpy()
        cx, cy, r = rng.uniform(0.2, 0.8) * width, rng.uniform(0.2, 0.8) * height, height / 6
        obj = np.zeros((frames, height, width), bool)
        names = []
        for t in range(frames):
            img = bg + rng.normal(0, 3, bg.shape)
            m = (xx - cx - 4 * t) ** 2 + (yy - cy) ** 2 < r * r
            obj[t] = m
            img[m] = (img[m] * 0.3 + np.array([200, 40, 40]) * 0.7)
            name = f"{t:05d}"
            names.append(name)
            write_jpeg(split / "JPEGImages" / vid / f"{name}.jpg", np.clip(img, 0, 255).astype(np.uint8), quality=90)
        masks[str(v)] = [rle_encode(obj[t]) for t in range(frames)]
        meta[vid] = {"frames": names, "expressions": {"0": {"exp": "the red circle moving right",
                                                             "obj_id": [1], "anno_id": [v]}}}
    (split / "meta_expressions.json").write_text(json.dumps({"videos": meta}))
    (split / "mask_dict.json").write_text(json.dumps(masks))
    return split


def torch_resize_frames(frames, size):
    """The float32 torch resize that ``rvosflow.data.transforms.resize_frames`` (Pillow, uint8)
    replaced, timed side by side by ``--compare-torch``."""
    import torch.nn.functional as F

    x = torch.as_tensor(frames).permute(0, 3, 1, 2).contiguous().float()
    y = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    return y.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


def time_dataset(ds, clips: int) -> float:
    ds[0]  # warm up (file cache, imports)
    t0 = time.perf_counter()
    for i in range(clips):
        ds[i % len(ds)]
    return clips / (time.perf_counter() - t0)


def time_loader(ds, clips: int, workers: int) -> float:
    from torch.utils.data import DataLoader, RandomSampler

    sampler = RandomSampler(ds, replacement=True, num_samples=clips + 2 * max(workers, 1))
    loader = DataLoader(ds, batch_size=1, sampler=sampler, num_workers=workers, prefetch_factor=2 if workers else None)
    it = iter(loader)
    for _ in range(max(workers, 1)):  # workers started and warm
        next(it)
    t0 = time.perf_counter()
    n = 0
    for _ in it:
        n += 1
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--videos", type=int, default=4)
    ap.add_argument("--frames", type=int, default=48)
    ap.add_argument("--clips", type=int, default=24)
    ap.add_argument("--num-frames", type=int, default=17)
    ap.add_argument("--workers", type=int, nargs="*", default=[2])
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads per process (DataLoader workers use 1)")
    ap.add_argument("--compare-torch", action="store_true", help="also time the float32 torch frame resize")
    ap.add_argument("--out", default=None, help="also write the numbers to this JSON file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from rvosflow.data.datasets import ClipDataset
    from rvosflow.data.formats.mevis import MevisSource
    from rvosflow.data.transforms import model_size

    size_fn = partial(model_size, target_height=480, max_width=832, multiple=16)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        split = write_split(Path(tmp), args.videos, args.frames, 720, 1280)
        jpeg_kb = np.mean([p.stat().st_size for p in split.glob("JPEGImages/*/*.jpg")]) / 1024
        print(f"wrote {args.videos} x {args.frames} frames 720x1280 (mean JPEG {jpeg_kb:.0f} KiB) "
              f"in {time.perf_counter() - t0:.1f} s")
        ds = ClipDataset(MevisSource(split), args.num_frames, "global", size_fn)
        # Each expression is one item: repeat the index so every clip is a fresh random sample.
        sample = ds[0]
        shape = tuple(sample["frames"].shape)
        one = time_dataset(ds, args.clips)
        print(f"clip {shape} uint8 + mask {tuple(sample['mask'].shape)}: {one:.2f} clips/s in one process "
              f"({1000 / one:.0f} ms per clip, {args.threads} thread)")
        results = {"clip_shape": shape, "jpeg_kib": jpeg_kb, "clips_per_s_one_worker": one, "cpu_count": os.cpu_count(),
                   "loader": {}}
        if args.compare_torch:
            import rvosflow.data.datasets as datasets

            orig = datasets.resize_frames
            datasets.resize_frames = torch_resize_frames
            try:
                rate = time_dataset(ds, args.clips)
            finally:
                datasets.resize_frames = orig
            results["clips_per_s_one_worker_torch_resize"] = rate
            print(f"with the float32 torch frame resize instead: {rate:.2f} clips/s in one process "
                  f"({1000 / rate:.0f} ms per clip; Pillow is {one / rate:.2f}x)")
        for w in args.workers:
            rate = time_loader(ds, args.clips, w)
            results["loader"][w] = rate
            print(f"DataLoader num_workers={w}: {rate:.2f} clips/s ({rate / max(w, 1):.2f} per worker)")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
