"""Write the synthetic benchmark in the four real formats, atomically and cached.

Layout under ``out_dir``::

    manifest.json                          config + format version (the cache key)
    mevis/{train,valid_u,valid}/           JPEGImages/, meta_expressions.json, mask_dict.json, captions.json
    ref_ytvos/{train,valid}/               JPEGImages/, Annotations/ (palette PNG), meta.json
    ref_ytvos/meta_expressions/{train,valid}/meta_expressions.json     (single-object expressions)
    ref_davis/valid/                       JPEGImages/, Annotations/, meta.json   (from valid_u videos)
    ref_davis/meta_expressions/valid/meta_expressions.json             (4 per object, see formats/davis.py)
    refcoco/refcoco/{refs(unc).p,instances.json}, refcoco/images/train2014/COCO_train2014_<id>.jpg
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Iterable, Iterator

from tqdm import tqdm

from rvosflow import atomic
from rvosflow.data.formats import write_davis, write_mevis, write_refcoco, write_ytvos
from rvosflow.data.schema import Video
from rvosflow.data.synthetic.generate import expression_kind, iter_split
from rvosflow.data.synthetic.language import World, candidates_for
from rvosflow.data.synthetic.world import SPLITS, SyntheticConfig

# Bump when the generator's output changes for the same config (part of the cache key).
# 2: bigger objects (radius 0.13 / 0.2 of the frame side instead of 0.085 / 0.14).
# 3: tiers (default = colour-led, hard = the version-2 world) and expression_kinds.json sidecars.
FORMAT_VERSION = 3
FORMAT_DIRS = ("mevis/train", "mevis/valid_u", "mevis/valid", "ref_ytvos", "ref_davis", "refcoco")
REFCOCO_SPLITS = ("train",) * 16 + ("val",) * 2 + ("testA", "testB")


def manifest_for(cfg: SyntheticConfig) -> dict:
    return {"format_version": FORMAT_VERSION, "config": cfg.to_dict(), "formats": list(FORMAT_DIRS)}


def is_complete(out_dir: Path, cfg: SyntheticConfig) -> bool:
    try:
        manifest = json.loads((out_dir / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    return manifest == manifest_for(cfg) and all((out_dir / d).is_dir() for d in FORMAT_DIRS)


def davis_expression_sets(v: Video) -> dict[int, list[str]] | None:
    """Four texts per object: [first-frame, full-video, first-frame, full-video] (two 'annotators')."""
    T, H, W = v.frames.shape[:3]
    cands = candidates_for(World(v.meta["objects"], H, W), v.meta.get("tier", "hard"))
    out = {}
    for k in sorted(v.masks):
        single = [c for c in cands if c.targets == frozenset({k})]
        first = [c.text for c in single if c.first_frame]
        full = [c.text for c in single if c.kind in ("motion", "temporal")] or first
        first = first or full
        if not first:
            return None
        out[k] = [first[0], full[0], first[1 % len(first)], full[1 % len(full)]]
    return out


def text_kinds(v: Video) -> dict[str, str]:
    """{text: kind} of every expression the video's tier supports (for the Ref-DAVIS sidecar)."""
    T, H, W = v.frames.shape[:3]
    return {c.text: expression_kind(c) for c in candidates_for(World(v.meta["objects"], H, W), v.meta.get("tier", "hard"))}


def refcoco_samples(videos: list[Video]) -> Iterator[dict]:
    for i, v in enumerate(videos):
        T, H, W = v.frames.shape[:3]
        t = T // 2
        cands = candidates_for(World(v.meta["objects"], H, W), v.meta.get("tier", "hard"))
        refs: dict[int, list[str]] = {}
        for c in cands:
            if (c.single_frame_resolvable and c.kind in ("colour", "appearance", "relation") and len(c.targets) == 1
                    and not c.text.endswith("at the start")):
                refs.setdefault(next(iter(c.targets)), []).append(c.text)
        yield {
            "image_id": i + 1,
            "frame": v.frames[t],
            "masks": {k: m[t] for k, m in v.masks.items()},
            "categories": {k: o["shape"] for k, o in zip(sorted(v.masks), v.meta["objects"])},
            "refs": sorted(refs.items()),
            "split": REFCOCO_SPLITS[i % len(REFCOCO_SPLITS)],
        }


def _tick(items: Iterable, bar: tqdm) -> Iterator:
    for x in items:
        yield x
        bar.update(1)


def write_benchmark(out_dir, cfg: SyntheticConfig | None = None, progress: bool = True) -> Path:
    """Write every split in every format under ``out_dir``; return ``out_dir``.

    Returns at once when ``out_dir/manifest.json`` matches ``cfg`` and every format is there.
    Otherwise writes into a temporary sibling directory and renames it into place, so a reader
    never sees a half-written benchmark.
    """
    out_dir, cfg = Path(out_dir), cfg or SyntheticConfig()
    if is_complete(out_dir, cfg):
        return out_dir
    tmp = atomic.temporary_folder(out_dir)
    try:
        n = sum(cfg.videos(s) for s in SPLITS)
        with tqdm(total=2 * n + cfg.train_videos + cfg.valid_videos + 2 * cfg.valid_u_videos,
                  desc=f"synthetic benchmark -> {out_dir}", unit="video", disable=not progress) as bar:
            splits: dict[str, list[Video]] = {}
            for s in SPLITS:
                splits[s] = list(_tick(iter_split(s, cfg), bar))
            for s in SPLITS:
                write_mevis(tmp / "mevis" / s, _tick(splits[s], bar))
            write_ytvos(tmp / "ref_ytvos", "train", _tick(splits["train"], bar))
            write_ytvos(tmp / "ref_ytvos", "valid", _tick(splits["valid"], bar))
            davis = [(v, sets) for v in _tick(splits["valid_u"], bar) if (sets := davis_expression_sets(v))]
            write_davis(tmp / "ref_davis", _tick(davis, bar), text_kinds={v.video_id: text_kinds(v) for v, _ in davis})
            bar.update(cfg.valid_u_videos - len(davis))
            write_refcoco(tmp / "refcoco", refcoco_samples(splits["train"]))
        (tmp / "manifest.json").write_text(json.dumps(manifest_for(cfg), indent=2))
        atomic.swap_in(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir

