"""The synthetic benchmark's videos and expressions, generated deterministically per split."""

from __future__ import annotations

import numpy as np

from rvosflow.data.schema import Expression, Video
from rvosflow.data.synthetic.language import World, candidates_for, caption, resolve, select, select_colour
from rvosflow.data.synthetic.world import SyntheticConfig, sample_scene, split_rng


def world_of(video: Video) -> World:
    """The language's view of a generated video (attributes, tracks, motion facts)."""
    T, H, W = video.frames.shape[:3]
    return World(video.meta["objects"], H, W)


def resolve_expression(text: str, video: Video) -> set[int]:
    """Object ids an expression refers to in a generated video (ValueError if not unique)."""
    return resolve(text, world_of(video))


def generate_video(rng: np.random.Generator, cfg: SyntheticConfig, split: str, video_id: str) -> Video:
    for _ in range(50):
        scene = sample_scene(rng, cfg, split)
        objects = [o.to_meta() for o in scene.objects]
        world = World(objects, cfg.height, cfg.width)
        cands = candidates_for(world, cfg.tier)
        if cfg.tier == "default":
            chosen = select_colour(cands, rng)[: cfg.max_expressions]
        else:
            chosen = select(cands, rng, cfg.max_expressions)
        if len(chosen) >= 2:
            break
    expressions = [
        Expression(str(i), c.text, sorted(int(k) for k in c.targets), expression_kind(c), c.single_frame_resolvable)
        for i, c in enumerate(chosen)
    ]
    meta = {"objects": objects, "background": scene.background, "split": split, "tier": cfg.tier}
    return Video(video_id, scene.frames, scene.masks, expressions,
                 caption=caption(objects, scene.background), meta=meta)


def expression_kind(c) -> str:
    """The kind reported for an expression: ``multi-object`` whenever it has several targets
    (whatever cue picks them), else the cue the grammar used."""
    return "multi-object" if len(c.targets) > 1 else c.kind


def iter_split(split: str, cfg: SyntheticConfig | None = None):
    """Yield the videos of a split one by one; deterministic in (cfg, split)."""
    cfg = cfg or SyntheticConfig()
    rng = split_rng(cfg.seed, split)
    for i in range(cfg.videos(split)):
        yield generate_video(rng, cfg, split, f"{split}_{i:04d}")


def generate_split(split: str, cfg: SyntheticConfig | None = None) -> list[Video]:
    """All videos of a split; deterministic in (cfg, split)."""
    return list(iter_split(split, cfg))
