"""The synthetic world: determinism, correct and unambiguous expressions, held-out combinations;
the two tiers (default: colour-led, hard: the full motion-centric world) and their kinds."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from rvosflow.data.synthetic import (
    HELD_OUT_SHAPE_COLOUR,
    HELD_OUT_SHAPE_MOTION,
    SyntheticConfig,
    generate_split,
    resolve_expression,
    vocabulary,
    world_of,
)
from rvosflow.data.synthetic.language import motion_facts
from rvosflow.data.synthetic.world import COLOURS, SHAPES, shape_mask

SMALL = SyntheticConfig(tier="hard", train_videos=24, valid_u_videos=8, valid_videos=12)
DEFAULT_SMALL = SyntheticConfig(train_videos=60, valid_u_videos=20, valid_videos=20)


@pytest.fixture(scope="module")
def train_videos():
    return generate_split("train", SMALL)


@pytest.fixture(scope="module")
def valid_videos():
    return generate_split("valid", SMALL)


def test_deterministic(tiny_synthetic_cfg):
    a = generate_split("valid_u", tiny_synthetic_cfg)
    b = generate_split("valid_u", tiny_synthetic_cfg)
    c = generate_split("valid_u", dataclasses.replace(tiny_synthetic_cfg, seed=1))
    for va, vb in zip(a, b):
        assert np.array_equal(va.frames, vb.frames)
        assert va.masks.keys() == vb.masks.keys()
        assert all(np.array_equal(va.masks[k], vb.masks[k]) for k in va.masks)
        assert [e.text for e in va.expressions] == [e.text for e in vb.expressions]
        assert va.caption == vb.caption
    assert any(not np.array_equal(va.frames, vc.frames) for va, vc in zip(a, c))
    # splits differ from each other
    assert not np.array_equal(a[0].frames, generate_split("valid", tiny_synthetic_cfg)[0].frames)


def test_video_structure(train_videos):
    cfg = SMALL
    for v in train_videos:
        assert v.frames.shape == (cfg.frames, cfg.height, cfg.width, 3) and v.frames.dtype == np.uint8
        n = len(v.masks)
        assert cfg.min_objects <= n <= cfg.max_objects
        assert sorted(v.masks) == list(range(1, n + 1))
        stack = np.stack([v.masks[k] for k in sorted(v.masks)])
        assert stack.dtype == bool and stack.shape == (n, cfg.frames, cfg.height, cfg.width)
        assert stack.sum(0).max() <= 1, "visible masks must be disjoint (occlusion)"
        assert 2 <= len(v.expressions) <= cfg.max_expressions
        assert len({e.exp_id for e in v.expressions}) == len(v.expressions)
        assert v.caption and v.caption == v.caption.lower()
    # the background is textured and noisy, not flat
    bg = ~np.stack([np.stack(list(v.masks.values())).any(0) for v in train_videos[:3]])
    frames = np.stack([v.frames for v in train_videos[:3]])
    assert frames[bg].std(0).mean() > 8


def test_masks_are_visible_parts_of_drawn_shapes(train_videos):
    """Each mask = the shape at its simulated position minus what later objects cover."""
    v = train_videos[0]
    T, H, W = v.frames.shape[:3]
    yy, xx = np.mgrid[0:H, 0:W].astype(float)
    objs = v.meta["objects"]
    for t in (0, T - 1):
        full = [shape_mask(o["shape"], *o["track"][t], o["radius"], yy, xx) for o in objs]
        for i in range(len(objs)):
            covered = np.zeros((H, W), bool)
            for j in range(i + 1, len(objs)):
                covered |= full[j]
            assert np.array_equal(v.masks[i + 1][t], full[i] & ~covered)


def test_every_expression_resolves_to_its_targets(train_videos, valid_videos):
    for v in train_videos + valid_videos:
        for e in v.expressions:
            assert resolve_expression(e.text, v) == set(e.obj_ids), (v.video_id, e.text)


def test_motion_expressions_match_trajectories(train_videos):
    """Checked from the rendered masks' centroids too, independently of the language module."""
    checked = 0
    for v in train_videos:
        w = world_of(v)
        for e in v.expressions:
            for d, axis, sign in (("left", 0, -1), ("right", 0, 1), ("up", 1, -1), ("down", 1, 1)):
                if e.text.endswith(f"moving {d}"):
                    for k in e.obj_ids:
                        steps = np.diff(w.centre(k)[:, axis]) * sign
                        assert (steps >= 0).all() and (steps > 0).any(), (v.video_id, e.text, k)
                    checked += 1
            if e.text.endswith("that stops"):
                for k in e.obj_ids:
                    moving = np.abs(np.diff(w.centre(k), axis=0)).max(1) > 0
                    assert moving[0] and not moving[-1]
                    assert list(moving) == sorted(moving, reverse=True)
                # and no other object of the video stops (if the noun is 'shape')
                if e.text == "the shape that stops":
                    for k in set(v.masks) - set(e.obj_ids):
                        f = motion_facts(w.centre(k), *v.frames.shape[1:3])
                        assert f.pattern != "MS"
                checked += 1
            if e.text == "the first shape to move":
                starts = {k: f.first_move for k, f in w.facts.items() if f.first_move is not None}
                (k,) = e.obj_ids
                assert all(starts[k] < s for j, s in starts.items() if j != k)
                checked += 1
    assert checked > 10


def test_centroids_agree_with_tracks(train_videos):
    """Where an object is fully visible, its mask centroid follows the simulated track."""
    checked = 0
    for v in train_videos[:8]:
        w = world_of(v)
        H, W = v.frames.shape[1:3]
        yy, xx = np.mgrid[0:H, 0:W]
        for k, m in v.masks.items():
            o = w.objects[k]
            for t in range(len(m)):
                cx, cy = w.centre(k)[t]
                if not np.array_equal(m[t], shape_mask(o["shape"], cx, cy, o["radius"], yy, xx)):
                    continue  # occluded or clipped by the frame border
                ys, xs = np.nonzero(m[t])
                assert abs(xs.mean() + 0.5 - cx) < 1.5
                assert abs(ys.mean() + 0.5 - cy) < 1.0 + 0.25 * o["radius"]  # a triangle's centroid sits 0.22 r low
                checked += 1
    assert checked > 50


def test_mostly_not_single_frame_resolvable():
    videos = generate_split("train", SyntheticConfig(tier="hard"))  # the default size: must stay quick
    exps = [e for v in videos for e in v.expressions]
    share = np.mean([not e.single_frame_resolvable for e in exps])
    assert share >= 0.5, share
    kinds = {e.kind for e in exps}
    assert kinds == {"appearance", "motion", "relation", "temporal", "multi-object"}
    assert any(len(e.obj_ids) > 1 for e in exps)
    # honesty: a non single-frame expression's static noun phrase does not pick the target alone
    for v in videos[:40]:
        w = world_of(v)
        for e in v.expressions:
            if e.kind == "appearance":
                assert e.single_frame_resolvable
            if e.kind == "temporal":
                assert not e.single_frame_resolvable


def test_twins_only_motion_tells_apart(train_videos):
    found = 0
    for v in train_videos:
        objs = v.meta["objects"]
        looks = [(o["size"], o["texture"], o["colour"], o["shape"]) for o in objs]
        if len(set(looks)) < len(looks):
            found += 1
    assert found >= len(train_videos) // 4


def test_vocabulary_closed(train_videos, valid_videos):
    vocab = set(vocabulary())
    assert all(w == w.lower() and w.isalpha() for w in vocab)
    for v in train_videos + valid_videos:
        assert set(v.caption.split()) <= vocab, v.caption
        for e in v.expressions:
            assert set(e.text.split()) <= vocab, e.text


def test_caption_describes_objects(train_videos):
    for v in train_videos:
        for o in v.meta["objects"]:
            assert f"{o['colour']} {o['shape']}" in v.caption
        assert v.meta["background"][1] in v.caption


def test_valid_holds_out_combinations(train_videos, valid_videos):
    def combos(videos):
        sc, sm = set(), set()
        for v in videos:
            for o in v.meta["objects"]:
                sc.add((o["shape"], o["colour"]))
                sm.add((o["shape"], o["motion"]))
        return sc, sm

    for videos in (train_videos, generate_split("valid_u", SMALL)):
        sc, sm = combos(videos)
        assert not sc & HELD_OUT_SHAPE_COLOUR and not sm & HELD_OUT_SHAPE_MOTION
    for v in valid_videos:
        assert any((o["shape"], o["colour"]) in HELD_OUT_SHAPE_COLOUR or (o["shape"], o["motion"]) in HELD_OUT_SHAPE_MOTION
                   for o in v.meta["objects"])
    sc, sm = combos(valid_videos)
    assert sc & HELD_OUT_SHAPE_COLOUR and sm & HELD_OUT_SHAPE_MOTION
    assert {s for s, _ in HELD_OUT_SHAPE_COLOUR} <= set(SHAPES) and {c for _, c in HELD_OUT_SHAPE_COLOUR} <= set(COLOURS)


# ------------------------------------------------------------------------ the default tier


@pytest.fixture(scope="module")
def default_tier_videos():
    return [v for split in ("train", "valid_u", "valid") for v in generate_split(split, DEFAULT_SMALL)]


def test_default_tier_every_expression_leaves_a_non_target_object(default_tier_videos):
    """The text is needed: no default-tier expression refers to every object of its video."""
    for v in default_tier_videos:
        for e in v.expressions:
            assert set(e.obj_ids) < set(v.masks), (v.video_id, e.text, e.obj_ids)


@pytest.mark.slow
def test_default_tier_full_size_every_expression_leaves_a_non_target_object():
    """The shipped benchmark itself (the default SyntheticConfig, all splits)."""
    cfg = SyntheticConfig()
    for split in ("train", "valid_u", "valid"):
        for v in generate_split(split, cfg):
            for e in v.expressions:
                assert set(e.obj_ids) < set(v.masks), (v.video_id, e.text)


def test_default_tier_is_colour_led(default_tier_videos):
    kinds = {e.kind for v in default_tier_videos for e in v.expressions}
    assert kinds == {"colour", "multi-object"}
    for v in default_tier_videos:
        objs = v.meta["objects"]
        colours = [o["colour"] for o in objs]
        assert len(colours) - len(set(colours)) <= 1  # one same-colour pair at most
        for e in v.expressions:
            assert resolve_expression(e.text, v) == set(e.obj_ids)
            named = [w for w in e.text.split() if w in COLOURS]
            assert len(named) == 1
            assert {k for k, o in enumerate(objs, 1) if o["colour"] == named[0]} == set(e.obj_ids)
            assert e.kind == ("multi-object" if len(e.obj_ids) > 1 else "colour")
    assert sum(len(e.obj_ids) > 1 for v in default_tier_videos for e in v.expressions) >= 3


def test_tiers_are_named_and_checked():
    with pytest.raises(ValueError, match="tier"):
        SyntheticConfig(tier="medium")
