"""The release's weight files at the tiny size: read in their published layouts (weights_only),
DVI read off the patch embedding, EMA kept and exported, a train -> export -> load round trip
giving identical predictions, and old-convention checkpoints converted exactly."""

import json
from pathlib import Path

import pytest
import torch

from rvosflow import release
from rvosflow.config import ConfigError, compose
from rvosflow.decoder import DecoderSettings, train_decoder
from rvosflow.models.dit import build_dit
from rvosflow.module import CONVENTION_KEY, EMA_PREFIX
from rvosflow.train import run
from test_run import tiny_overrides


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def test_read_dit_takes_the_published_keys_and_refuses_the_rest(test_bundle, tmp_path):
    C = test_bundle.vae.config.z_dim
    dvi = build_dit(test_bundle.transformer, 2 * C, weight_init=True, seed=0).state_dict()
    release.write(tmp_path / "mevis_ckpt.pth", dvi, {k: v + 1 for k, v in dvi.items()})
    ema = release.read_dit(tmp_path / "mevis_ckpt.pth", "ema")
    model = release.read_dit(tmp_path / "mevis_ckpt.pth", "model")
    assert torch.equal(model["proj_out.bias"], dvi["proj_out.bias"]) and torch.equal(ema["proj_out.bias"], dvi["proj_out.bias"] + 1)
    assert release.dit_input_channels(model) == 2 * C
    release.check_dit_channels(model, C, 2 * C, True, "f")
    with pytest.raises(ConfigError, match=rf"{2 * C} input channels \(DVI on\); this run \(dvi.enabled=false\) expects {C}"):
        release.check_dit_channels(model, C, C, False, "f")
    release.write(tmp_path / "no_ema.pth", dvi)
    with pytest.raises(ConfigError, match="model.dit_weights=model"):
        release.read_dit(tmp_path / "no_ema.pth", "ema")
    torch.save({"model": {"x": torch.zeros(1)}, "ema_model": {}}, tmp_path / "other.pth")
    with pytest.raises(ConfigError, match="WanTransformer3DModel keys"):
        release.read_dit(tmp_path / "other.pth", "model")
    torch.save({"model": dvi, "code": Path("x")}, tmp_path / "code.pth")  # not plain tensors
    with pytest.raises(ConfigError, match="weights_only"):
        release.read_dit(tmp_path / "code.pth", "model")


def predict_pngs(cfg, run_dir) -> dict[str, bytes]:
    results = run(cfg, run_dir)
    out = Path(results["predictions"])
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*.png"))}


def test_release_layout_round_trip_gives_identical_predictions(tiny_benchmark, test_bundle_dir, test_bundle,
                                                               tracking_uri, tmp_path):
    """Train briefly (with an EMA), tune a decoder, export both in the release layout, load them with
    model.dit_ckpt / model.vae_ckpt: the predicted masks are identical, byte for byte."""
    base = tiny_overrides(tiny_benchmark, test_bundle_dir, tracking_uri)
    trained = run(compose([*base, "ema.enabled=true", "ema.decay=0.5"]), tmp_path / "train")
    ckpt = trained["checkpoint"]
    state = torch.load(ckpt, weights_only=True)
    assert state[CONVENTION_KEY] == "wan"
    ema = {k: v for k, v in state["state_dict"].items() if k.startswith(EMA_PREFIX)}
    assert ema and any(not torch.equal(v, state["state_dict"]["transformer." + k[len(EMA_PREFIX):]]) for k, v in ema.items())

    masks = torch.zeros(2, 9, 32, 32, dtype=torch.bool)
    masks[:, :, 8:20, 4:16] = True
    tuned, _ = train_decoder(test_bundle.vae, [{"mask": masks}] * 2, DecoderSettings(lr=1e-3), log_every=0)
    tuned.save_pretrained(tmp_path / "decoder", safe_serialization=True)

    files = release.export(ckpt, tmp_path / "release", decoder=str(tmp_path / "decoder"))
    published = torch.load(files["dit"], weights_only=True)
    assert set(published) == {"model", "ema_model"}
    assert next(iter(torch.load(files["decoder"], weights_only=True))).startswith("vae.")

    ours = predict_pngs(compose([*base, "mode=predict", f"ckpt_path={ckpt}",
                                 f"model.vae_decoder_path={tmp_path / 'decoder'}"]), tmp_path / "ours")
    theirs = predict_pngs(compose([*base, "mode=predict", f"model.dit_ckpt={files['dit']}",
                                   f"model.vae_ckpt={files['decoder']}"]), tmp_path / "theirs")
    assert ours and ours == theirs
    raw = predict_pngs(compose([*base, "mode=predict", f"model.dit_ckpt={files['dit']}", "model.dit_weights=model",
                                f"model.vae_ckpt={files['decoder']}"]), tmp_path / "raw")
    frozen = predict_pngs(compose([*base, "mode=predict", f"ckpt_path={ckpt}"]), tmp_path / "frozen")
    assert raw != theirs and frozen != ours  # the EMA and the tuned decoder are what was compared
    # a server-scored split (no masks, like MeViS valid): mode=predict also writes the submission zip
    import shutil
    import zipfile

    shutil.copytree(tiny_benchmark / "mevis", tmp_path / "server", ignore=lambda d, names: (
        ["mask_dict.json"] if Path(d).name == "valid" else []))
    sub = run(compose([*base, "mode=predict", f"data.root={tmp_path / 'server'}", "data.predict_split=valid",
                       f"model.dit_ckpt={files['dit']}", f"model.vae_ckpt={files['decoder']}"]), tmp_path / "sub")
    names = zipfile.ZipFile(sub["submission"]).namelist()
    assert names and all(n.startswith("Annotations/") and n.endswith(".png") for n in names)
    # validation scores the EMA weights: the same J&F from the release files
    a = run(compose([*base, "mode=validate", f"ckpt_path={ckpt}", f"model.vae_decoder_path={tmp_path / 'decoder'}"]),
            tmp_path / "va")
    b = run(compose([*base, "mode=validate", f"model.dit_ckpt={files['dit']}", f"model.vae_ckpt={files['decoder']}",
                     "ema.enabled=true"]), tmp_path / "vb")
    assert a["JF"] == pytest.approx(b["JF"], abs=1e-9)
    assert a["config"]["ema"]["enabled"] is True  # taken from the checkpoint
    # DVI is read off the file: a config without DVI is an error naming both
    with pytest.raises(ConfigError, match="DVI on.*dvi.enabled=false"):
        run(compose([*base, "mode=validate", f"model.dit_ckpt={files['dit']}", "dvi.enabled=false"]), tmp_path / "vc")


def test_old_convention_checkpoint_is_converted_exactly(tiny_benchmark, test_bundle_dir, test_bundle, tracking_uri, tmp_path):
    """A checkpoint without the convention tag holds a DiT trained on +v: the same weights with
    proj_out negated, untagged, must score exactly as the tagged original; resuming it is refused."""
    base = tiny_overrides(tiny_benchmark, test_bundle_dir, tracking_uri, "trainer.max_steps=2")
    trained = run(compose(base), tmp_path / "train")
    ckpt = torch.load(trained["checkpoint"], weights_only=True)
    old = dict(ckpt)
    del old[CONVENTION_KEY]
    old["state_dict"] = {k: (-v if k.startswith("transformer.proj_out.") else v) for k, v in ckpt["state_dict"].items()}
    torch.save(old, tmp_path / "old.ckpt")
    new = run(compose([*base, "mode=validate", f"ckpt_path={trained['checkpoint']}"]), tmp_path / "vnew")
    conv = run(compose([*base, "mode=validate", f"ckpt_path={tmp_path / 'old.ckpt'}"]), tmp_path / "vold")
    assert conv["JF"] == pytest.approx(new["JF"], abs=1e-9)
    # init_from converts it the same way: the DiT starts from the tagged original's weights
    from rvosflow.module import FlowRVSModule
    from rvosflow.paradigms import FlowSettings, build_paradigm
    from rvosflow.train import init_transformer_from

    module = FlowRVSModule(test_bundle, build_paradigm("video2mask", FlowSettings(bbs_p=0.5, spa=True, dvi=True)))
    init_transformer_from(module, tmp_path / "old.ckpt")
    assert torch.equal(module.transformer.proj_out.weight, ckpt["state_dict"]["transformer.proj_out.weight"])
    with pytest.raises(ValueError, match="cannot resume training"):
        run(compose([*base, "trainer.max_steps=4", f"ckpt_path={tmp_path / 'old.ckpt'}"]), tmp_path / "resume")
    with pytest.raises(ConfigError, match="predates"):
        release.export(tmp_path / "old.ckpt", tmp_path / "out")


def test_ema_follows_the_weights_by_its_decay_and_is_what_inference_uses(test_bundle):
    from rvosflow.module import FlowRVSModule
    from rvosflow.paradigms import FlowSettings, build_paradigm

    module = FlowRVSModule(test_bundle, build_paradigm("video2mask", FlowSettings()), ema_decay=0.9)
    assert module.inference_transformer is module.ema_transformer
    assert all(not p.requires_grad for p in module.ema_transformer.parameters())
    start = {n: p.detach().clone() for n, p in module.transformer.named_parameters()}
    with torch.no_grad():
        for p in module.transformer.parameters():
            p.add_(1.0)
    module.on_train_batch_end(None, None, 0)
    for n, p in module.ema_transformer.named_parameters():
        assert torch.allclose(p, start[n] + 0.1, atol=1e-6), n  # 0.9 * w + 0.1 * (w + 1)
    assert set(k for k in module.state_dict() if k.startswith(EMA_PREFIX))  # checkpoints keep both
    plain = FlowRVSModule(test_bundle, build_paradigm("video2mask", FlowSettings()))
    assert plain.ema_transformer is None and plain.inference_transformer is plain.transformer
