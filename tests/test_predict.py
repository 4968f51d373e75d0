"""mode=predict writes <out>/<video>/<exp_id>/<frame>.png (0/255, original size) for any split;
init_from starts training from a checkpoint's DiT."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from rvosflow.config import compose
from rvosflow.data.formats.ytvos import RefYTVOSSource
from rvosflow.train import run


def overrides(bench, bundle, tmp, data="synthetic_ytvos", sub="ref_ytvos", *extra):
    return [
        f"data={data}", f"data.root={bench / sub}", "data.height=32", "data.max_width=32", "data.num_frames=5",
        "data.batch_size=2", "data.val_limit=3", f"model.path={bundle}", "text.max_length=16",
        "trainer.max_steps=2", "trainer.val_check_interval=2", "trainer.enable_progress_bar=false",
        f"logger.tracking_uri=sqlite:///{tmp / 'mlflow.db'}", "num_overlays=0", "data.val_batch_size=4",
        "latent_cache_dir=null", "text_cache_dir=null", *extra,
    ]


class _Evil:
    def __reduce__(self):
        return (print, ("pickled code ran",))


@pytest.fixture(scope="module")
def trained(tiny_benchmark, test_bundle_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pred")
    res = run(compose(overrides(tiny_benchmark, test_bundle_dir, tmp)), tmp / "train")
    return tmp, res


def test_predict_writes_binary_pngs_at_original_size_for_any_split(tiny_benchmark, test_bundle_dir, trained):
    tmp, res = trained
    out = tmp / "preds"
    r = run(compose(overrides(tiny_benchmark, test_bundle_dir, tmp, "synthetic_ytvos", "ref_ytvos", "mode=predict",
                              f"ckpt_path={res['checkpoint']}", "data.predict_split=train", f"predict.out_dir={out}")),
            tmp / "predict")
    src = RefYTVOSSource(tiny_benchmark / "ref_ytvos", "train")
    assert r["expressions"] == len(src) and r["split"] == "train"
    assert json.loads((tmp / "predict" / "results.json").read_text())["predictions"] == str(out)
    for e in src.expressions:
        names = sorted(p.stem for p in (out / e.video_id / e.exp_id).glob("*.png"))
        assert names == sorted(e.frame_names)
    e = src.expressions[0]
    im = Image.open(out / e.video_id / e.exp_id / f"{e.frame_names[0]}.png")
    arr = np.asarray(im)
    assert im.mode == "L" and arr.shape == src.load_frames(e.video_id, [0]).shape[1:3]
    assert set(np.unique(arr).tolist()) <= {0, 255}


def test_init_from_loads_the_dit_of_a_checkpoint(tiny_benchmark, test_bundle_dir, trained):
    from rvosflow.checkpoints import init_dit_from as init_transformer_from
    from rvosflow.config import resolve
    from rvosflow.models.loader import load_wan_bundle
    from rvosflow.module import FlowRVSModule

    tmp, res = trained
    cfg = resolve(compose(overrides(tiny_benchmark, test_bundle_dir, tmp)))
    module = FlowRVSModule(cfg, load_wan_bundle(cfg.model.path))
    saved = torch.load(res["checkpoint"], map_location="cpu", weights_only=False)["state_dict"]
    key = next(k for k in saved if k.startswith("transformer."))
    assert not torch.equal(module.state_dict()[key], saved[key])
    init_transformer_from(module, res["checkpoint"])
    assert all(torch.equal(v, saved[k]) for k, v in module.state_dict().items() if k.startswith("transformer."))
    evil = tmp / "evil.ckpt"
    torch.save({"state_dict": {}, "x": _Evil()}, evil)
    with pytest.raises(ValueError, match="expected a plain-data checkpoint, found code"):
        init_transformer_from(module, evil)
    bad = tmp / "bad.ckpt"
    torch.save({"state_dict": {"other.weight": torch.zeros(1)}}, bad)
    with pytest.raises(ValueError, match="expected transformer.\* weights, found none"):
        init_transformer_from(module, bad)


def test_a_split_without_masks_trains_without_validation(tiny_benchmark, test_bundle_dir, tmp_path):
    """Real Ref-YTVOS / MeViS `valid` are server-scored: training runs, nothing is scored."""
    import shutil

    root = shutil.copytree(tiny_benchmark / "ref_ytvos", tmp_path / "ytvos")
    shutil.rmtree(root / "valid" / "Annotations")
    cfg = compose(overrides(tmp_path, test_bundle_dir, tmp_path, "synthetic_ytvos", "ytvos"))
    r = run(cfg, tmp_path / "run")
    assert r["JF"] is None and (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()
