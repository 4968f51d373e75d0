"""DataModules of every benchmark (MeViS, Ref-YTVOS, Ref-DAVIS, RefCOCO/+/g, image/video mixed):
one sample schema, selectable by config, 1-frame image clips, batch-level mixing."""

from __future__ import annotations

import pytest
import torch

from rvosflow.config import compose
from rvosflow.data.datamodules import DATAMODULES, MixedBatchSampler, MixedDataModule, from_config
from rvosflow.data.formats.refcoco import write_refcoco

TRAIN_KEYS = {"frames", "mask", "caption", "video_id", "exp_id", "frame_indices", "frames_key", "mask_key"}
EVAL_KEYS = TRAIN_KEYS - {"mask", "mask_key"} | {"target", "orig_size", "frame_names", "kind"}


def data_cfg(name, root, **over):
    cfg = compose([f"data={name}", f"data.root={root}", "data.num_workers=0", "data.height=32", "data.max_width=32",
                   *[f"data.{k}={v}" for k, v in over.items()]])
    return cfg.data


@pytest.fixture(scope="module")
def refcoco_three(tiny_benchmark, tmp_path_factory):
    """RefCOCO, RefCOCO+ and RefCOCOg (polygons and RLE) written from the tiny benchmark's frames."""
    from rvosflow.data.synthetic import SyntheticConfig, iter_split
    from rvosflow.data.synthetic.writer import refcoco_samples

    root = tmp_path_factory.mktemp("refcoco3")
    videos = list(iter_split("train", SyntheticConfig(seed=0, frames=9, height=32, width=32, train_videos=6,
                                                      valid_u_videos=3, valid_videos=3)))
    for ds in ("refcoco", "refcoco+", "refcocog"):
        samples = list(refcoco_samples(videos))
        for s in samples:
            s["split"] = "train"
        write_refcoco(root, samples, dataset=ds)
    return root


@pytest.mark.parametrize("name,sub,split", [("synthetic", "mevis", "train"), ("synthetic_ytvos", "ref_ytvos", "train"),
                                            ("synthetic_refcoco", "refcoco", "train")])
def test_training_batches_share_one_schema(tiny_benchmark, name, sub, split):
    dm = from_config(data_cfg(name, tiny_benchmark / sub, batch_size=2), 16)
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == TRAIN_KEYS
    frames, mask = batch["frames"], batch["mask"]
    assert frames.dtype == torch.uint8 and mask.dtype == torch.bool
    assert frames.shape[:4] == (2, dm.num_frames, 32, 32) and mask.shape == frames.shape[:4]
    assert len(batch["caption"]) == 2 and batch["frame_indices"].shape == (2, dm.num_frames)


def test_every_benchmark_is_selectable_and_yields_whole_videos(tiny_benchmark):
    for name, sub, cls in [("synthetic", "mevis", "MevisDataModule"), ("synthetic_ytvos", "ref_ytvos", "RefYTVOSDataModule"),
                           ("synthetic_davis", "ref_davis", "RefDAVISDataModule"),
                           ("synthetic_refcoco", "refcoco", "RefCOCODataModule")]:
        over = {"val_split": "train"} if name == "synthetic_refcoco" else {}  # the tiny one has no val images
        dm = from_config(data_cfg(name, tiny_benchmark / sub, **over), 16)
        assert type(dm).__name__ == cls and type(dm) in DATAMODULES.values()
        sample = next(iter(dm.val_dataloader()))[0]
        assert set(sample) == EVAL_KEYS
        assert sample["target"].shape == (len(sample["frame_names"]), *sample["orig_size"])
        assert sample["frames"].shape[0] == len(sample["frame_names"])
        pred = next(iter(dm.predict_dataloader()))[0]
        assert pred["target"] is None  # prediction never loads masks


def test_refcoco_images_are_one_frame_clips_and_replicate_into_videos(tiny_benchmark):
    dm = from_config(data_cfg("synthetic_refcoco", tiny_benchmark / "refcoco", batch_size=3), 16)
    b = next(iter(dm.train_dataloader()))
    assert b["frames"].shape[1] == 1 and b["mask"].shape[1] == 1 and b["mask"].any()
    dm17 = from_config(data_cfg("synthetic_refcoco", tiny_benchmark / "refcoco", batch_size=1, num_frames=5), 16)
    b = next(iter(dm17.train_dataloader()))
    assert b["frames"].shape[1] == 5 and torch.equal(b["frames"][0, 0], b["frames"][0, 4])


def test_refcoco_plus_and_g_concatenate_with_unique_ids(refcoco_three):
    single = from_config(data_cfg("refcoco", refcoco_three, datasets="[refcoco]"), 16).source("train")
    dm = from_config(data_cfg("refcoco", refcoco_three, datasets="[refcoco,refcoco+,refcocog]"), 16)
    src = dm.source("train")
    assert len(src) == 3 * len(single)
    keys = {(e.video_id, e.exp_id) for e in src.expressions}
    assert len(keys) == len(src.expressions)  # sentence ids overlap between datasets, exp_ids do not
    assert {e.exp_id.split("-")[0] for e in src.expressions} == {"refcoco", "refcoco+", "refcocog"}
    e = src.expressions[-1]
    m = src.load_target(e, [0])
    assert m.shape[0] == 1 and m.any()


def test_ref_davis_annotator_subsets(tiny_benchmark):
    all_sets = from_config(data_cfg("synthetic_davis", tiny_benchmark / "ref_davis"), 16).source("valid")
    one = from_config(data_cfg("synthetic_davis", tiny_benchmark / "ref_davis", annotators="[1]"), 16).source("valid")
    assert len(one) * 4 == len(all_sets) and {e.annotator for e in one.expressions} == {1}


@pytest.mark.parametrize("sampler", ["global", "uniform", "random_sorted", "first"])
def test_frame_sampler_is_a_setting(tiny_benchmark, sampler):
    dm = from_config(data_cfg("synthetic_ytvos", tiny_benchmark / "ref_ytvos", frame_sampler=sampler,
                              num_frames=5, batch_size=1), 16)
    idx = next(iter(dm.train_dataloader()))["frame_indices"][0].tolist()
    assert idx == sorted(idx) and len(idx) == 5
    if sampler == "first":
        assert idx == [0, 1, 2, 3, 4]


def test_mixed_batches_are_all_images_or_all_videos(tiny_benchmark):
    cfg = data_cfg("synthetic_mixed", tiny_benchmark / "mevis", image_root=tiny_benchmark / "refcoco",
                   batch_size=2, image_ratio=0.5, num_frames=5)
    dm = from_config(cfg, 16, seed=3)
    assert isinstance(dm, MixedDataModule)
    kinds = []
    for b in dm.train_dataloader():
        t = b["frames"].shape[1]
        assert t in (1, 5) and b["mask"].shape[1] == t
        if t == 1:
            assert all(v.startswith("coco-") for v in b["video_id"])
        kinds.append(t)
    assert 1 in kinds and 5 in kinds
    assert next(iter(dm.val_dataloader()))[0]["video_id"].startswith("valid_u")


def test_mixed_batch_sampler_ratio_and_determinism():
    s = MixedBatchSampler(num_images=40, num_videos=60, batch_size=4, image_ratio=0.25, seed=0)
    batches = list(s)
    assert len(batches) == len(s) == 20
    img = [b for b in batches if b[0] < 40]
    assert all(all(i < 40 for i in b) or all(i >= 40 for i in b) for b in batches)
    assert 2 <= len(img) <= 10
    s2 = MixedBatchSampler(40, 60, 4, 0.25, seed=0)
    assert list(s2) == batches  # same seed and epoch
    assert list(MixedBatchSampler(40, 60, 4, 0.0, seed=0)) and all(i >= 40 for b in MixedBatchSampler(40, 60, 4, 0.0) for i in b)
    with pytest.raises(ValueError, match="image_ratio"):
        MixedBatchSampler(40, 60, 4, 1.5)


def test_eval_videos_keeps_the_first_videos_of_the_scored_split(tiny_benchmark):
    dm = from_config(data_cfg("synthetic", tiny_benchmark / "mevis", eval_videos=2), 16)
    full = dm.source("valid_u")
    sub = dm.eval_source("valid_u")
    assert sub.video_ids() == full.video_ids()[:2] and len(full) > len(sub) > 0
    assert {s["video_id"] for b in dm.predict_dataloader() for s in b} == set(full.video_ids()[:2])
    assert len(dm.source("train")) == len(from_config(data_cfg("synthetic", tiny_benchmark / "mevis"), 16).source("train"))
