"""The release's weight files at the tiny size: read in their published layouts (weights_only),
DVI read off the patch embedding, EMA kept and exported, a train -> export -> load round trip
giving identical predictions, and old-convention checkpoints converted exactly."""

from pathlib import Path

import pytest
import torch
from settings import run_config
from test_run import tiny_overrides

from rvosflow import checkpoints
from rvosflow.checkpoints import CONVENTION_KEY, EMA_KEY, ema_shadows
from rvosflow.config import compose
from rvosflow.decoder import train_decoder
from rvosflow.errors import ConfigError
from rvosflow.models.dit import build_dit
from rvosflow.schema import Decoder
from rvosflow.train import run


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def test_read_dit_takes_the_published_keys_and_refuses_the_rest(test_bundle, tmp_path):
    C = test_bundle.vae.config.z_dim
    net = build_dit(test_bundle.transformer, 2 * C, weight_init=True, seed=0)
    dvi = net.state_dict()
    names = [n for n, _ in net.named_parameters()]
    ema = checkpoints.release_ema_state({n: dvi[n] + 1 for n in names}, names, decay=0.9999, optimization_step=3)
    checkpoints.write_release_dit(tmp_path / "mevis_ckpt.pth", dvi, ema, use_dvi=True)
    read_ema = checkpoints.read_release_dit(tmp_path / "mevis_ckpt.pth", "ema", net)
    model = checkpoints.read_release_dit(tmp_path / "mevis_ckpt.pth", "model", net)
    assert torch.equal(model["proj_out.bias"], dvi["proj_out.bias"])
    assert torch.equal(read_ema["proj_out.bias"], dvi["proj_out.bias"] + 1)
    assert all(torch.equal(read_ema[n], dvi[n] + 1) for n in names)  # mapped by the release's order, every name
    assert checkpoints.dit_input_channels(model) == 2 * C
    checkpoints.check_dit_channels(model, C, 2 * C, True, "f")
    with pytest.raises(ConfigError, match=rf"{2 * C} input channels \(DVI on\); this run \(dvi.enabled=false\) expects {C}"):
        checkpoints.check_dit_channels(model, C, C, False, "f")
    checkpoints.write_release_dit(tmp_path / "no_ema.pth", dvi, None, use_dvi=True)
    with pytest.raises(ConfigError, match="model.dit_weights=model"):
        checkpoints.read_release_dit(tmp_path / "no_ema.pth", "ema", net)
    torch.save({"model": {"x": torch.zeros(1)}, "ema_model": {}}, tmp_path / "other.pth")
    with pytest.raises(ConfigError, match="WanTransformer3DModel keys"):
        checkpoints.read_release_dit(tmp_path / "other.pth", "model", net)
    torch.save({"model": dvi, "code": Path("x")}, tmp_path / "code.pth")  # not plain tensors
    with pytest.raises(ConfigError, match="weights_only"):
        checkpoints.read_release_dit(tmp_path / "code.pth", "model", net)


def release_loader_ema(path, net) -> dict:
    """What the release's inference does with a mevis_ckpt.pth (``prepare()``): ``model`` loaded
    non-strictly, then ``EMAModel.load_state_dict(ema_model)`` and ``copy_to`` over its parameters,
    here in the fork's ``parameters()`` order (``release_param_order``)."""
    import argparse
    import copy

    from diffusers.training_utils import EMAModel

    obj = torch.load(path, weights_only=False)
    assert isinstance(obj["args"], argparse.Namespace) and path.read_bytes()[:2] == b"\x80\x02"
    fork = copy.deepcopy(net)
    fork.load_state_dict(obj["model"], strict=False)
    params = dict(fork.named_parameters())
    ordered = [params[n] for n in checkpoints.release_param_order(list(params))]
    helper = EMAModel(ordered, decay=0.9999)
    helper.load_state_dict(obj["ema_model"])
    helper.copy_to(ordered)
    return fork.state_dict()


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
    assert state[EMA_KEY]["optimization_step"] == 4 and state[EMA_KEY]["decay"] == 0.5  # diffusers' EMAModel state
    names = [k[len("transformer."):] for k in state["state_dict"] if k.startswith("transformer.")]
    ema = dict(zip(names, ema_shadows(state, names)))
    assert any(not torch.equal(v, state["state_dict"]["transformer." + k]) for k, v in ema.items())

    masks = torch.zeros(2, 9, 32, 32, dtype=torch.bool)
    masks[:, :, 8:20, 4:16] = True
    tuned, _ = train_decoder(test_bundle.vae, [{"mask": masks}] * 2, Decoder(lr=1e-3), log_every=0)
    tuned.save_pretrained(tmp_path / "decoder", safe_serialization=True)

    files = checkpoints.export(ckpt, tmp_path / "release", decoder=str(tmp_path / "decoder"))
    published = torch.load(files["dit"], weights_only=False)
    assert set(published) == {"model", "ema_model", "epoch", "args"} and published["args"].use_dvi == "True"
    assert next(iter(torch.load(files["decoder"], weights_only=True)["model"])).startswith("vae.")
    # the release's own loader reads the export back with the EMA applied
    net = build_dit(test_bundle.transformer, 2 * test_bundle.vae.config.z_dim, weight_init=True, seed=0)
    applied = release_loader_ema(files["dit"], net)
    assert all(torch.equal(applied[n], ema[n].to(applied[n].dtype)) for n in names)
    with pytest.raises(ConfigError, match="exists: expected a new export folder"):
        checkpoints.export(ckpt, tmp_path / "release")  # an export is never overwritten silently

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

    module = FlowRVSModule(run_config("video2mask", {"bbs.p": 0.5}), test_bundle)
    checkpoints.init_dit_from(module, tmp_path / "old.ckpt")
    assert torch.equal(module.transformer.proj_out.weight, ckpt["state_dict"]["transformer.proj_out.weight"])
    with pytest.raises(ConfigError, match="cannot resume training"):
        run(compose([*base, "trainer.max_steps=4", f"ckpt_path={tmp_path / 'old.ckpt'}"]), tmp_path / "resume")
    with pytest.raises(ConfigError, match="predates"):
        checkpoints.export(tmp_path / "old.ckpt", tmp_path / "out")


def test_ema_is_diffusers_warmup_and_what_inference_uses(test_bundle):
    """diffusers' EMAModel with the release's decay: step 1 copies the weights, step 2 averages with
    min(decay, 2/11); inference calls the DiT on the EMA weights without touching its own."""
    from rvosflow.module import FlowRVSModule

    module = FlowRVSModule(run_config("video2mask", {"ema.enabled": True}), test_bundle)
    params = list(module.transformer.parameters())
    start = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p in params:
            p.add_(1.0)
    module.ema.step(params)
    assert all(torch.allclose(s, w + 1) for s, w in zip(module.ema.shadow_params, start))  # decay 0 at step 1
    with torch.no_grad():
        for p in params:
            p.add_(1.0)
    module.ema.step(params)
    d = 2 / 11  # (1 + k) / (10 + k) at k = 1, below 0.9999
    assert all(torch.allclose(s, d * (w + 1) + (1 - d) * (w + 2), atol=1e-6) for s, w in zip(module.ema.shadow_params, start))
    trained = [p.detach().clone() for p in params]
    module.on_validation_start()
    names = [n for n, _ in module.transformer.named_parameters()]
    assert all(torch.equal(module._inference_weights[n], s) for n, s in zip(names, module.ema.shadow_params))
    assert all(torch.equal(p, w) for p, w in zip(params, trained))  # the trained weights are untouched
    checkpoint = {"state_dict": {f"transformer.{k}": v for k, v in module.transformer.state_dict().items()}}
    module.on_save_checkpoint(checkpoint)
    assert checkpoint[EMA_KEY]["optimization_step"] == 2 and len(checkpoint[EMA_KEY]["shadow_params"]) == len(names)
    plain = FlowRVSModule(run_config("video2mask"), test_bundle)
    assert plain.ema is None
