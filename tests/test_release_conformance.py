"""Conformance with the public FlowRVS release, against ``../shared/fixtures/flowrvs-release/``: files
written by the release's own code (commit f133982) with its outputs; the fixture's README is the
specification. From its ``bundle/``, ``clip/``, ``mevis_ckpt.pth`` and ``decoder.pth`` alone, through
the documented command (``run.py mode=predict model.dit_ckpt=... model.vae_ckpt=...``), rvosflow must
give the release's masks; and its text, latents, training pair and BBS sampler must match."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rvosflow.config import compose
from rvosflow.paths import PROJECT_ROOT

FIXTURE = PROJECT_ROOT.parent / "shared" / "fixtures" / "flowrvs-release"
pytestmark = pytest.mark.skipif(not FIXTURE.is_dir(), reason=f"no release fixture at {FIXTURE}")
CAPTIONS = json.loads((FIXTURE / "clip" / "captions.json").read_text()) if FIXTURE.is_dir() else {}
VIDEO = CAPTIONS.get("video")
STEPS = (1, 3)


@pytest.fixture(scope="module")
def split_root(tmp_path_factory):
    """The fixture's clip as a server-scored MeViS ``valid`` split: its frames, one expression per caption."""
    root = tmp_path_factory.mktemp("release-clip")
    split = root / "valid"
    (split / "JPEGImages").mkdir(parents=True)
    (split / "JPEGImages" / VIDEO).symlink_to(FIXTURE / "clip" / "JPEGImages" / VIDEO)
    exps = {k: {"exp": text, "obj_id": [0], "anno_id": [0]} for k, text in CAPTIONS["captions"].items()}
    (split / "meta_expressions.json").write_text(json.dumps(
        {"videos": {VIDEO: {"expressions": exps, "frames": CAPTIONS["frames"]}}}))
    return root


def release_overrides(root: Path, steps: int, *extra: str) -> list[str]:
    """What a user types to run the published files on a clip: the release's box (reso_h x reso_w =
    48 x 64), its checkpoints, DVI (read off the file, so it must be on), N Euler steps."""
    return ["mode=predict", "data=mevis", f"data.root={root}", "data.train_split=valid", "data.val_split=valid",
            "data.predict_split=valid", "data.height=48", "data.max_width=64", "data.num_workers=0",
            f"model.path={FIXTURE / 'bundle'}", "text.max_length=256", f"model.dit_ckpt={FIXTURE / 'mevis_ckpt.pth'}",
            f"model.vae_ckpt={FIXTURE / 'decoder.pth'}", "dvi.enabled=true", f"solver.steps={steps}",
            "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "latent_cache_dir=null",
            "text_cache_dir=null", *extra]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return 1.0 if union == 0 else float((a & b).sum() / union)


@pytest.mark.parametrize("steps", STEPS)
def test_run_py_predicts_the_release_masks(split_root, tmp_path, steps):
    """The documented command, as a subprocess: every caption's PNGs equal the release's, pixel for pixel."""
    out = tmp_path / "pred"
    proc = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "run.py"), *release_overrides(split_root, steps),
         f"predict.out_dir={out}", f"logger.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
         f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    worst = {}
    for cap in CAPTIONS["captions"]:
        expected = sorted((FIXTURE / "expected" / cap / f"N{steps}").glob("*.png"))
        assert len(expected) == len(CAPTIONS["frames"])
        for png in expected:
            want = np.asarray(Image.open(png))
            got = np.asarray(Image.open(out / VIDEO / cap / png.name))
            assert got.shape == want.shape == (72, 96) and set(np.unique(got)) <= {0, 255}
            worst[cap] = min(worst.get(cap, 1.0), iou(got > 0, want > 0))
            assert np.array_equal(got, want), f"caption {cap} N{steps} frame {png.name}: IoU {worst[cap]:.4f}"
    assert worst == {cap: 1.0 for cap in CAPTIONS["captions"]}


@pytest.fixture(scope="module")
def release_run(split_root):
    """The module of such a run, built by the run's own functions (weights, decoder, text, data)."""
    from rvosflow.checkpoints import load_release_dit
    from rvosflow.config import resolve
    from rvosflow.data.setup import prepare_data
    from rvosflow.decoder import select_vae
    from rvosflow.models.loader import load_wan_bundle
    from rvosflow.module import FlowRVSModule

    cfg = resolve(compose(release_overrides(split_root, 1)))
    bundle = load_wan_bundle(cfg.model.path, components=("transformer", "vae", "text_encoder", "tokenizer"))
    bundle.vae = select_vae(cfg.model, bundle.vae)
    module = FlowRVSModule(cfg, bundle)  # the text encoder loaded: the test embeds captions itself
    load_release_dit(module, cfg)
    module.eval()
    module.on_predict_start()
    return cfg, bundle, module, prepare_data(cfg).predict_dataloader().dataset


@pytest.mark.parametrize("steps", STEPS)
def test_final_latents_and_video_latent_match(release_run, steps):
    from rvosflow.data.transforms import pad_frames, padded_frame_count

    cfg, bundle, module, dataset = release_run
    sample = dataset[0]
    assert tuple(sample["frames"].shape) == (10, 48, 64, 3)  # 72 x 96 into the 48 x 64 box, sides floored to 16
    clip = pad_frames(sample["frames"], padded_frame_count(10))  # 13 frames: the last repeated
    mean, _ = module.video_posteriors([clip], [("conformance", len(clip))])
    z_video = module.start_point(mean)
    want = torch.load(FIXTURE / "expected" / "video_latent.pt", weights_only=True)
    assert (z_video - want).abs().max() < 1e-5
    for cap, text in CAPTIONS["captions"].items():
        model = module.inference_dit(module.text_embeddings([text]))
        with torch.no_grad():
            z = module.paradigm.predict(model, z_video, None, steps=steps)
        latent = torch.load(FIXTURE / "expected" / cap / f"N{steps}" / "latent.pt", weights_only=True)
        assert (z - latent).abs().max() < 1e-4, f"caption {cap} N{steps}: {(z - latent).abs().max():.2e}"


def test_token_ids_and_embeddings_match(release_run):
    from rvosflow.models import encoding

    cfg, bundle, module, _ = release_run
    for cap, text in CAPTIONS["captions"].items():
        tokens = json.loads((FIXTURE / "expected" / cap / "tokens.json").read_text())
        cleaned = module.caption(text, training=False)
        assert cleaned == tokens["cleaned"]
        ids, mask = encoding.tokenize(bundle.tokenizer, [cleaned], 256)
        assert ids[0].tolist() == tokens["input_ids"] and mask[0].tolist() == tokens["attention_mask"]
        assert int(mask.sum()) == tokens["seq_len"]
        embeds = module.text_embeddings([text]).float()
        want = torch.load(FIXTURE / "expected" / cap / "prompt_embeds.pt", weights_only=True)
        assert embeds.shape == want.shape == (1, 256, 64)
        assert (embeds - want).abs().max() < 1e-5 and not embeds[0, tokens["seq_len"]:].any()


def test_training_pair_is_reproduced_from_its_inputs(release_run, split_root):
    """``expected/training.pt``: one B=8 step of the release's engine.train_one_epoch. From its frames,
    masks, captions, SPA noise and BBS timesteps: the latents, x_t, the DiT timestep, the target,
    the DiT's output (at ``mevis_ckpt.pth['model']``) and the loss."""
    import torch.nn.functional as F

    from rvosflow.checkpoints import load_release_dit
    from rvosflow.config import resolve
    from rvosflow.models import encoding
    from rvosflow.module import FlowRVSModule

    cfg, bundle, _, _ = release_run
    want = torch.load(FIXTURE / "expected" / "training.pt", weights_only=False)
    cfg = resolve(compose(release_overrides(split_root, 1, "model.dit_weights=model", "model.vae_ckpt=null")))
    module = FlowRVSModule(cfg, bundle)  # its VAE encoder is the bundle's (decoder.pth's equals it)
    load_release_dit(module, cfg)
    keys = [(str(i),) for i in range(8)]
    mean, std = module.video_posteriors(list(want["frames_uint8"]), keys)
    assert (mean - want["z_video_mean"]).abs().max() < 1e-5 and (std - want["z_video_std"]).abs().max() < 1e-5
    z_video = module.start_point(mean, std, noise=want["z_video_eps"])  # SPA: the release's latent_dist.sample()
    assert (z_video - want["z_video"]).abs().max() < 1e-5
    z_mask = module.mask_latents(list(want["masks_uint8"].bool()), keys)
    assert (z_mask - want["z_mask"]).abs().max() < 1e-5
    k = want["timestep_for_dit"]
    pair = module.paradigm.pair_at(z_video, z_mask, 1.0 - k.double() / 1000)
    assert torch.equal(pair.timestep, want["dit_timestep"].float())
    assert (pair.model_input[:, :16] - want["x_t"]).abs().max() < 1e-5
    assert torch.equal(pair.model_input[:, 16:], z_video)  # DVI: [z_t, z_video]
    assert (pair.target - want["target"]).abs().max() < 1e-5
    text = module.text_embeddings(want["captions"], training=True)
    assert (text.float() - want["prompt_embeds"]).abs().max() < 1e-5
    with torch.no_grad():
        out = module.dit(text)(pair.model_input, pair.timestep)
    assert (out - want["dit_output"]).abs().max() < 1e-4
    assert float(F.mse_loss(out.float(), pair.target.float())) == pytest.approx(float(want["loss"]), rel=1e-5)
    assert torch.equal(encoding.mask_to_pixels(want["masks_uint8"])[:, :1], want["masks_uint8"][:, None].float() * 2 - 1)


@pytest.mark.parametrize("case", ["p=0.5,B=8", "p=0.25,B=8", "p=0.5,B=1"])
def test_bbs_sampler_matches_the_release(case):
    """``expected/bbs.json``: the release's boundary_biased_sample, measured. Exactly int(B p) of a
    batch at timestep 1000 when B > 1; otherwise integers floor(1000 u) clamped to [1, 999]."""
    from rvosflow.flow import sample_bbs_times, to_wan_timestep

    facts = json.loads((FIXTURE / "expected" / "bbs.json").read_text())["cases"][case]
    p, batch = (float(case.split(",")[0][2:]), int(case.split("B=")[1]))
    g = torch.Generator().manual_seed(0)
    batches = 20000 if batch > 1 else 100000
    k = torch.stack([to_wan_timestep(sample_bbs_times(batch, p, g)) for _ in range(batches)])
    assert (k - k.round()).abs().max() < 1e-9  # integers, up to the round-off of paper time (the pair rounds)
    k = k.round()
    assert k.min() >= 1 and k.max() <= 1000
    at_boundary = (k == 1000).sum(dim=1)
    if batch > 1:
        assert set(at_boundary.tolist()) == {int(n) for n in facts["count_at_1000_per_batch"]}
    else:
        assert abs(at_boundary.float().mean() - facts["P(timestep==1000)"]) < 0.01
    regular = k[k < 1000]
    assert regular.min() == facts["regular_min"] and regular.max() == facts["regular_max"]
    assert abs(regular.mean() - facts["regular_mean"]) < 5
    assert abs((regular == 1).float().mean() - 0.002) < 0.0008  # u < 0.002 maps to 1 (0 clamped up)


def test_release_parameter_order_is_the_fixtures_and_holds_at_full_size(release_run):
    from diffusers import WanTransformer3DModel

    from rvosflow.checkpoints import release_param_order
    from rvosflow.models.scale import WAN21_T2V_1_3B

    _, _, module, _ = release_run
    names = [n for n, _ in module.transformer.named_parameters()]
    assert release_param_order(names) == (FIXTURE / "ema_param_order.txt").read_text().split()
    with torch.device("meta"):
        full = WanTransformer3DModel(**WAN21_T2V_1_3B)
    order = release_param_order([n for n, _ in full.named_parameters()])
    assert len(order) == 825 == 13 + 27 * 30 + 2 and order[14:17] == [
        "blocks.0.attn1.norm_q.weight", "blocks.0.attn1.norm_k.weight", "blocks.0.attn1.to_q.weight"]


def test_release_checkpoint_loads_as_published_and_code_is_refused(release_run, tmp_path):
    """The legacy container with its ``args`` Namespace loads; an EMA that does not fit is an error
    naming the file; a file carrying code is refused, never executed."""
    import argparse
    import os

    from rvosflow import checkpoints
    from rvosflow.errors import ConfigError

    _, _, module, _ = release_run
    assert (FIXTURE / "mevis_ckpt.pth").read_bytes()[:2] == b"\x80\x02"  # legacy pickle, not a zip
    ema = checkpoints.read_release_dit(FIXTURE / "mevis_ckpt.pth", "ema", module.transformer)
    raw = checkpoints.read_release_dit(FIXTURE / "mevis_ckpt.pth", "model", module.transformer)
    assert set(ema) == set(raw) and any(not torch.equal(ema[n], raw[n].float()) for n in raw)
    obj = torch.load(FIXTURE / "mevis_ckpt.pth", weights_only=False)
    short = {**obj, "ema_model": {**obj["ema_model"], "shadow_params": obj["ema_model"]["shadow_params"][:-1]}}
    torch.save(short, tmp_path / "short.pth", _use_new_zipfile_serialization=False)
    with pytest.raises(ConfigError, match=r"short.pth: expected 123 EMA shadow tensors .* found 122"):
        checkpoints.read_release_dit(tmp_path / "short.pth", "ema", module.transformer)
    swapped = list(obj["ema_model"]["shadow_params"])
    swapped[14], swapped[16] = swapped[16], swapped[14]  # norm_q where to_q belongs
    torch.save({**obj, "ema_model": {**obj["ema_model"], "shadow_params": swapped}}, tmp_path / "swapped.pth",
               _use_new_zipfile_serialization=False)
    with pytest.raises(ConfigError, match=r"swapped.pth: EMA shadow for blocks.0.attn1.norm_q.weight has shape"):
        checkpoints.read_release_dit(tmp_path / "swapped.pth", "ema", module.transformer)

    marker = tmp_path / "executed"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({**obj, "args": Payload()}, tmp_path / "code.pth", _use_new_zipfile_serialization=False)
    with pytest.raises(ConfigError, match=r"code.pth: expected a plain-data checkpoint, found code"):
        checkpoints.read_release_dit(tmp_path / "code.pth", "ema", module.transformer)
    assert not marker.exists()
    assert isinstance(obj["args"], argparse.Namespace)
