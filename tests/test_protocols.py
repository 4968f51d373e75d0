"""Protocols as experiments: every preset composes with the Table 4 settings, and both chains run
end to end on the tiny benchmark (checkpoint handed from stage to stage, official scoring)."""

from __future__ import annotations

import json

import pytest
import torch

from rvosflow.config import compose
from rvosflow.protocols import PROTOCOLS, run_protocol, stage_overrides


@pytest.mark.parametrize("exp,fmt,lr,epochs", [("mevis", "mevis", 6e-5, 6), ("refcoco_pretrain", "refcoco", 7e-5, 6),
                                               ("ytvos_finetune", "ref_ytvos", 6e-5, 7)])
def test_real_presets_carry_table4(exp, fmt, lr, epochs):
    cfg = compose([f"+experiment={exp}"])
    assert cfg.data.format == fmt and cfg.model.name == "wan2.1_t2v_1.3b"
    assert cfg.optim.lr == pytest.approx(lr) and cfg.trainer.max_epochs == epochs
    assert list(cfg.optim.betas) == [0.9, 0.999] and cfg.optim.weight_decay == pytest.approx(5e-4)
    assert cfg.trainer.precision == "bf16-mixed" and cfg.data.batch_size == 1


def test_every_stage_preset_composes():
    for stages in PROTOCOLS.values():
        for st in stages:
            for exp in (st.experiment, f"synthetic_{st.experiment}"):
                cfg = compose([f"+experiment={exp}", "init_from=null", "ckpt_path=null"])
                assert cfg.logger.tags.stage


def test_stage_scoped_overrides():
    ov = ["seed=1", "pretrain:data.root=/a", "finetune:data.root=/b", "model.path=x:y"]
    assert stage_overrides(ov, "pretrain") == ["seed=1", "data.root=/a", "model.path=x:y"]
    assert stage_overrides(ov, "davis_zeroshot") == ["seed=1", "model.path=x:y"]


def tiny(bench, bundle, tmp):
    return [
        f"model.path={bundle}", "text.max_length=16", "data.height=32", "data.max_width=32",
        "data.val_batch_size=4", "data.val_limit=4", "trainer.max_steps=2", "trainer.val_check_interval=2",
        "trainer.enable_progress_bar=false", "num_overlays=0", "latent_cache_dir=null", "text_cache_dir=null",
        f"logger.tracking_uri=sqlite:///{tmp / 'mlflow.db'}",
        f"pretrain:data.root={bench / 'refcoco'}", "pretrain:data.val_split=train", "pretrain:data.batch_size=2",
        f"finetune:data.root={bench / 'ref_ytvos'}", "finetune:data.num_frames=5", "finetune:data.batch_size=2",
        f"ytvos_valid:data.root={bench / 'ref_ytvos'}", f"davis_zeroshot:data.root={bench / 'ref_davis'}",
        f"davis_official:data.root={bench / 'ref_davis'}",
    ]


@pytest.mark.slow  # ~25 s: five runs
def test_ytvos_protocol_chains_pretrain_finetune_and_zero_shot(tiny_benchmark, test_bundle_dir, tmp_path):
    s = run_protocol("ytvos", tmp_path / "p", overrides=tiny(tiny_benchmark, test_bundle_dir, tmp_path))
    st = s["stages"]
    assert list(st) == ["pretrain", "finetune", "ytvos_valid", "davis_zeroshot", "davis_official"]
    assert st["finetune"]["overrides"].count(f"init_from={st['pretrain']['checkpoint']}") == 1
    assert f"ckpt_path={st['finetune']['checkpoint']}" in st["davis_zeroshot"]["overrides"]
    # Fine-tuning started from the pre-trained DiT and moved on from it.
    a = torch.load(st["pretrain"]["checkpoint"], map_location="cpu", weights_only=False)["state_dict"]
    b = torch.load(st["finetune"]["checkpoint"], map_location="cpu", weights_only=False)["state_dict"]
    assert a.keys() == b.keys() and any(not torch.equal(a[k], b[k]) for k in a)
    ev = st["ytvos_valid"]["evaluation"]
    assert ev["submission"]["pngs"] > 0 and not ev["missing"] and 0 <= ev["JF"] <= 100
    davis = st["davis_official"]["evaluation"]
    assert len(davis["sets"]) == 4 and not davis["missing"] and 0 <= davis["JF"] <= 100
    assert 0 <= st["davis_zeroshot"]["JF"] <= 100
    assert json.loads((tmp_path / "p" / "protocol.json").read_text())["stages"].keys() == st.keys()


@pytest.mark.slow
def test_mevis_protocol_runs(tiny_benchmark, test_bundle_dir, tmp_path):
    ov = [o for o in tiny(tiny_benchmark, test_bundle_dir, tmp_path) if ":" not in o.split("=")[0]]
    ov += [f"data.root={tiny_benchmark / 'mevis'}", "data.num_frames=5", "data.batch_size=2"]
    s = run_protocol("mevis", tmp_path / "m", overrides=ov)
    assert "JF" in s["stages"]["valid_u"]["evaluation"] and "submission" in s["stages"]["valid"]["evaluation"]
