"""Loader, tiny bundles and the encoding conventions."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from rvosflow.models import encoding as E
from rvosflow.models.loader import BundleError, check_bundle, load_wan_bundle, resolve_dtype, save_wan_bundle
from rvosflow.models.tiny import TEST, build_random_bundle, build_tokenizer


def _inputs(bundle, seed=0, frames=5, size=16):
    g = torch.Generator().manual_seed(seed)
    pixels = torch.rand(1, 3, frames, size, size, generator=g) * 2 - 1
    return pixels


def test_bundle_layout(test_bundle_dir):
    idx = json.loads((test_bundle_dir / "model_index.json").read_text())
    assert idx["_class_name"] == "WanPipeline"
    assert idx["transformer"] == ["diffusers", "WanTransformer3DModel"]
    assert idx["vae"] == ["diffusers", "AutoencoderKLWan"]
    assert idx["text_encoder"] == ["transformers", "UMT5EncoderModel"]
    assert idx["scheduler"] == ["diffusers", "FlowMatchEulerDiscreteScheduler"]
    assert check_bundle(test_bundle_dir) == test_bundle_dir


def test_save_reload_identical(test_bundle, tmp_path):
    b = test_bundle
    save_wan_bundle(b, tmp_path / "copy")
    c = load_wan_bundle(tmp_path / "copy")
    px = _inputs(b)
    with torch.no_grad():
        z1, z2 = E.encode_video(b.vae, px), E.encode_video(c.vae, px)
        assert torch.equal(z1, z2)
        assert torch.equal(E.decode_video(b.vae, z1), E.decode_video(c.vae, z1))
        e1 = E.encode_text(b.text_encoder, b.tokenizer, ["the red circle", "a square moving left"], 16)
        e2 = E.encode_text(c.text_encoder, c.tokenizer, ["the red circle", "a square moving left"], 16)
        assert torch.equal(e1, e2)
        t = torch.tensor([500.0])
        o1 = b.transformer(hidden_states=z1, timestep=t, encoder_hidden_states=e1[:1]).sample
        o2 = c.transformer(hidden_states=z1, timestep=t, encoder_hidden_states=e1[:1]).sample
        assert torch.equal(o1, o2) and o1.shape == z1.shape
    assert c.scheduler.config.shift == b.scheduler.config.shift == 3.0
    assert b.tokenizer("the red circle").input_ids == c.tokenizer("the red circle").input_ids


def test_random_bundle_deterministic():
    a, b = build_random_bundle(TEST, ["red circle"], seed=3), build_random_bundle(TEST, ["red circle"], seed=3)
    for k in ("transformer", "vae", "text_encoder"):
        sa, sb = getattr(a, k).state_dict(), getattr(b, k).state_dict()
        assert all(torch.equal(sa[n], sb[n]) for n in sa)
    assert a.transformer.config.text_dim == a.text_encoder.config.d_model


def test_unknown_path_raises(tmp_path):
    with pytest.raises(BundleError, match="found nothing"):
        load_wan_bundle(tmp_path / "nope")
    assert issubclass(BundleError, FileNotFoundError)


@pytest.mark.parametrize("victim", ["transformer/diffusion_pytorch_model.safetensors", "vae/config.json",
                                    "text_encoder/model.safetensors", "tokenizer/tokenizer.json",
                                    "scheduler/scheduler_config.json", "model_index.json"])
def test_incomplete_bundle_names_missing_file(test_bundle_dir, tmp_path, victim):
    d = tmp_path / "broken"
    shutil.copytree(test_bundle_dir, d)
    (d / victim).unlink()
    with pytest.raises(BundleError) as err:
        load_wan_bundle(d)
    assert victim.split("/")[-1] in str(err.value)


def test_sharded_index_missing_shard(test_bundle_dir, tmp_path):
    d = tmp_path / "sharded"
    shutil.copytree(test_bundle_dir, d)
    (d / "vae/diffusion_pytorch_model.safetensors").unlink()
    (d / "vae/diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "diffusion_pytorch_model-00001-of-00002.safetensors"}}))
    with pytest.raises(BundleError, match="00001-of-00002"):
        check_bundle(d)


def test_components_subset(test_bundle_dir):
    b = load_wan_bundle(test_bundle_dir, components=("vae",))
    assert b.vae is not None and b.transformer is None and b.text_encoder is None


def test_dtype_strings(test_bundle_dir):
    assert resolve_dtype("bfloat16") is torch.bfloat16 and resolve_dtype("float16") is torch.float16
    assert resolve_dtype("float32") is torch.float32
    with pytest.raises(ValueError):
        resolve_dtype("int8")
    b = load_wan_bundle(test_bundle_dir, dtype="bfloat16", components=("transformer", "vae", "text_encoder"))
    assert b.text_encoder.dtype == torch.bfloat16
    assert b.transformer.proj_out.weight.dtype == torch.bfloat16
    assert b.vae.dtype == torch.float32  # kept in float32 on purpose


def test_tokenizer_autotokenizer(test_bundle_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(test_bundle_dir / "tokenizer"), local_files_only=True)
    assert tok.pad_token_id == 0 and tok.eos_token_id == 1
    ids = tok("The RED circle").input_ids
    assert ids[-1] == 1 and 2 not in ids  # eos appended, all words known
    assert tok("the zzzunknown").input_ids[1] == tok.unk_token_id
    assert build_tokenizer(["b a", "a"]).convert_ids_to_tokens([3, 4]) == ["a", "b"]


def test_normalize_caption():
    assert E.normalize_caption("  The Red\tCircle\n moving  LEFT ") == "the red circle moving left"


def test_encode_text_zeroes_past_length(test_bundle):
    b = test_bundle
    emb = E.encode_text(b.text_encoder, b.tokenizer, ["the red circle", "  THE red   circle moving left"], 16)
    assert emb.shape == (2, 16, b.text_encoder.config.d_model) and not emb.requires_grad
    # "the red circle" + </s> = 4 tokens, the rest zeroed; normalisation makes case/spacing irrelevant
    assert emb[0, :4].abs().sum(-1).gt(0).all() and emb[0, 4:].abs().sum() == 0
    assert emb[1, :6].abs().sum(-1).gt(0).all() and emb[1, 6:].abs().sum() == 0
    same = E.encode_text(b.text_encoder, b.tokenizer, "The Red Circle", 16)
    assert torch.allclose(same[0], emb[0], atol=1e-6)


def test_frames_and_masks_to_pixels():
    fr = np.zeros((2, 5, 8, 8, 3), np.uint8)
    fr[..., 0] = 255
    px = E.frames_to_pixels(fr)
    assert px.shape == (2, 3, 5, 8, 8) and px[:, 0].eq(1).all() and px[:, 1:].eq(-1).all()
    assert E.frames_to_pixels(fr[0]).shape == (1, 3, 5, 8, 8)
    assert torch.equal(E.pixels_to_frames(px), torch.from_numpy(fr))
    m = np.zeros((5, 8, 8), bool)
    m[:, 2:4, 2:4] = True
    mp = E.mask_to_pixels(m)
    assert mp.shape == (1, 3, 5, 8, 8)
    assert set(mp.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(mp[:, 0], mp[:, 1]) and torch.equal(mp[:, 1], mp[:, 2])
    assert mp[0, 0, :, 2:4, 2:4].eq(1).all() and mp[0, 0, :, 0].eq(-1).all()
    assert torch.equal(E.mask_to_pixels(torch.from_numpy(m).float()[None]), mp)


def test_normalize_round_trip(test_bundle):
    vae = test_bundle.vae
    z = torch.randn(2, vae.config.z_dim, 2, 4, 4)
    vae2 = build_random_bundle(TEST, ["a"], seed=0).vae
    c = vae2.config.z_dim
    vae2.register_to_config(latents_mean=[float(i) for i in range(c)], latents_std=[1.0 + i for i in range(c)])
    n = E.normalize_latents(vae2, z)
    assert torch.allclose(n[:, 3], (z[:, 3] - 3) / 4)
    assert torch.allclose(E.denormalize_latents(vae2, n), z, atol=1e-6)
    assert torch.allclose(E.denormalize_latents(vae, E.normalize_latents(vae, z)), z, atol=1e-6)


@pytest.mark.parametrize("frames", [1, 5, 9])
def test_shapes_1_plus_4k(test_bundle, frames):
    b = test_bundle
    vae = b.vae
    s = E.spatial_multiple(vae, b.transformer)
    assert s == vae.config.scale_factor_spatial * b.transformer.config.patch_size[1]
    px = _inputs(b, frames=frames, size=2 * s)
    with torch.no_grad():
        mean, std = E.vae_posterior(vae, px)
        assert mean.shape == std.shape == (1, *E.latent_shape(vae, frames, 2 * s, 2 * s))
        assert mean.shape[2] == 1 + (frames - 1) // 4 and (std > 0).all()
        raw = E.encode_mask(vae, E.mask_to_pixels(torch.ones(1, frames, 2 * s, 2 * s)))
        assert torch.allclose(raw, E.vae_posterior(vae, E.mask_to_pixels(torch.ones(1, frames, 2 * s, 2 * s)))[0])
        m = E.decode_mask(vae, raw)
        assert m.dtype == torch.bool and m.shape == (1, frames, 2 * s, 2 * s)
        v = E.decode_video(vae, E.encode_video(vae, px))
        assert v.shape == px.shape and v.abs().max() <= 1
    assert E.valid_num_frames(19) == 17 and E.valid_num_frames(17) == 17
