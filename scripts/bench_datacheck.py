"""How long the data check at setup (``rvosflow.data.check``) takes: on the synthetic splits a
default run reads, and on a generated MeViS-layout split of real MeViS's size.

    python scripts/bench_datacheck.py                       # synthetic tiers + a 2,000-video fixture
    python scripts/bench_datacheck.py --videos 200          # a smaller fixture
    python scripts/bench_datacheck.py --mask-size 300       # masks of 300x300 pixels: RLE strings of ~600 characters

The fixture (``--fixture``, default a temporary folder) has MeViS's proportions: 2,000 videos of 54
frames at 1280x720 (443k masks / 8,171 objects in MeViS), 4 objects and 14 expressions per video.
Every frame is a hard link to its video's copy of one real 1280x720 JPEG (the check reads its header
and its last 4 KiB, so the bytes in between do not matter), every present mask the same COCO RLE
of a ``--mask-size`` square (20 by default: a string of ~40 characters; the check decodes every
string's runs, so its cost grows with their length). Times are with the files in the page cache
(just written); a cold disk adds its seek time per file.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from rvosflow.data.formats.base import rle_encode


def write_fixture(split_dir: Path, videos: int, frames: int, objects: int, expressions: int,
                  height: int = 720, width: int = 1280, mask_size: int = 20) -> dict:
    """A MeViS-layout split: JPEGImages/<vid>/<frame>.jpg, meta_expressions.json, mask_dict.json."""
    split_dir.mkdir(parents=True, exist_ok=True)
    template = split_dir / "template.jpg"
    Image.fromarray(np.full((height, width, 3), 127, np.uint8)).save(template, quality=90)
    mask = np.zeros((height, width), bool)
    mask[100:100 + mask_size, 200:200 + mask_size] = True
    rle = rle_encode(mask)
    meta, mask_dict, anno = {}, {}, 0
    names = [f"{i:05d}" for i in range(frames)]
    for v in range(videos):
        vid = f"vid{v:05d}"
        d = split_dir / "JPEGImages" / vid
        d.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(template, d / f"{names[0]}.jpg")  # one file per video: a file has at most 65,000 links
        for n in names[1:]:
            os.link(d / f"{names[0]}.jpg", d / f"{n}.jpg")
        annos = list(range(anno, anno + objects))
        for a in annos:  # present in the first 80% of the frames, like an object that leaves
            mask_dict[str(a)] = [rle if t < 0.8 * frames else None for t in range(frames)]
        anno += objects
        exps = {str(e): {"exp": f"object {e % objects}", "obj_id": [e % objects], "anno_id": [annos[e % objects]]}
                for e in range(expressions)}
        meta[vid] = {"expressions": exps, "frames": names}
    (split_dir / "meta_expressions.json").write_text(json.dumps({"videos": meta}))
    (split_dir / "mask_dict.json").write_text(json.dumps(mask_dict))
    template.unlink()
    return {"videos": videos, "frames": videos * frames, "masks": sum(r is not None for v in mask_dict.values() for r in v),
            "expressions": videos * expressions, "rle_chars": len(rle["counts"])}


def time_check(sources) -> float:
    from rvosflow.data.check import check_sources

    return check_sources(sources)


def synthetic(overrides: list[str]) -> dict:
    """The check of what ``python run.py <overrides>`` reads (train + validation splits)."""
    from rvosflow.config import compose
    from rvosflow.train import build_datamodule, ensure_data

    cfg = compose(overrides)
    ensure_data(cfg)
    t0 = time.perf_counter()
    sources = build_datamodule(cfg, 16).sources_read("train")
    t_read = time.perf_counter() - t0
    return {"overrides": " ".join(overrides) or "(default)", "read_s": round(t_read, 3),
            "check_s": round(time_check(sources), 3),
            "frames": sum(len(s.frame_paths(v)) for s in sources for v in s.video_ids())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fixture", type=Path, default=None, help="where to write the fixture (default: a temp folder, removed)")
    ap.add_argument("--videos", type=int, default=2000)
    ap.add_argument("--frames", type=int, default=54)
    ap.add_argument("--objects", type=int, default=4)
    ap.add_argument("--expressions", type=int, default=14)
    ap.add_argument("--mask-size", type=int, default=20, help="side of every mask's square, in pixels (at most 600)")
    ap.add_argument("--skip-synthetic", action="store_true")
    args = ap.parse_args(argv)
    out = {}
    if not args.skip_synthetic:
        out["synthetic"] = [synthetic([]), synthetic(["data=synthetic_hard"])]
    from rvosflow.data.formats import MevisSource

    root = args.fixture or Path(tempfile.mkdtemp(prefix="datacheck-"))
    try:
        t0 = time.perf_counter()
        sizes = write_fixture(root / "train", args.videos, args.frames, args.objects, args.expressions,
                              mask_size=args.mask_size)
        t_write = time.perf_counter() - t0
        t0 = time.perf_counter()
        source = MevisSource(root / "train")
        t_read = time.perf_counter() - t0
        out["mevis_fixture"] = {**sizes, "write_s": round(t_write, 1), "read_s": round(t_read, 2),
                                "check_s": round(time_check([source]), 2)}
    finally:
        if args.fixture is None:
            shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
