"""VAE decoder adaptation: the losses, the 1-channel logit head, tuned-decoder files, the
frozen/tuned mask rules and `model.vae_decoder` selection (docs/design.md §3 "Decoder")."""

import pytest
import torch

from rvosflow import checkpoints
from rvosflow.checkpoints import read_tuned_decoder as load_tuned_state
from rvosflow.config import compose
from rvosflow.config import resolve as validate
from rvosflow.decoder import dice_loss, focal_loss, reconstruction_scores, train_decoder, tuned_vae, with_logit_head
from rvosflow.errors import ConfigError
from rvosflow.models import encoding
from rvosflow.schema import Decoder as DecoderSettings


def test_focal_loss_matches_its_definition():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 4, generator=g) * 3
    y = (torch.rand(2, 3, 4, 4, generator=g) > 0.5).float()
    p = torch.sigmoid(x)
    p_t = torch.where(y > 0, p, 1 - p)
    a_t = torch.where(y > 0, torch.full_like(p, 0.25), torch.full_like(p, 0.75))
    expected = (-a_t * (1 - p_t) ** 2 * torch.log(p_t)).mean()
    assert focal_loss(x, y, 0.25, 2.0) == pytest.approx(expected.item(), rel=1e-5)
    # gamma 0, alpha -1: plain binary cross-entropy
    bce = torch.nn.functional.binary_cross_entropy_with_logits(x, y)
    assert focal_loss(x, y, -1, 0.0) == pytest.approx(bce.item(), rel=1e-6)


def test_dice_loss_is_zero_for_a_confident_match_and_one_for_disjoint():
    y = torch.zeros(2, 1, 4, 4)
    y[:, :, :2] = 1
    assert dice_loss((y * 2 - 1) * 50, y) == pytest.approx(0.0, abs=1e-2)
    assert dice_loss((1 - y) * 100 - 50, y, smooth=0.0) == pytest.approx(1.0, abs=1e-6)


def latent(vae, batch=2, frames=2, size=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, vae.config.z_dim, frames, size, size, generator=g)


def test_decode_raw_is_decode_without_the_clamp(test_bundle):
    vae = test_bundle.vae
    z = latent(vae) * 3
    with torch.no_grad():
        raw = encoding.decode_raw(vae, z)
        assert torch.allclose(raw.clamp(-1, 1), vae.decode(z).sample, atol=1e-6)


def test_logit_head_is_one_channel_and_starts_as_the_frozen_rule(test_bundle):
    vae = test_bundle.vae
    tuned = with_logit_head(vae)
    conv = tuned.decoder.conv_out
    assert conv.out_channels == 1 and conv.kernel_size == (3, 3, 3) and type(conv).__name__ == "WanCausalConv3d"
    assert encoding.is_logit_decoder(tuned) and not encoding.is_logit_decoder(vae)
    assert tuned.config.out_channels == 1
    for k, v in vae.encoder.state_dict().items():  # the encoder is the same
        assert torch.equal(tuned.encoder.state_dict()[k], v)
    z = latent(vae)
    with torch.no_grad():
        raw = encoding.decode_raw(vae, z)
        logits = encoding.decode_raw(tuned, z)[:, 0]
        assert torch.allclose(logits, 4.0 * raw.mean(1), atol=1e-5)
        inside = (raw.abs() <= 1).all(1)  # where decode's clamp changes nothing, the rules agree
        frozen = encoding.mask_probs(vae, z) > 0.5
        assert torch.equal((encoding.mask_probs(tuned, z) > 0.5)[inside], frozen[inside])
    with pytest.raises(ValueError, match="already"):
        with_logit_head(tuned)


def test_tuned_decoder_round_trips_through_both_layouts(test_bundle, tmp_path):
    vae = test_bundle.vae
    tuned = with_logit_head(vae, init="random")
    tuned.save_pretrained(tmp_path / "folder", safe_serialization=True)
    checkpoints.write_release_decoder(tmp_path / "decoder.pth", tuned.state_dict())
    published = torch.load(tmp_path / "decoder.pth", weights_only=True)
    assert (tmp_path / "decoder.pth").read_bytes()[:2] == b"\x80\x02"  # legacy container, as the release writes
    assert set(published) == {"model"} and all(k.startswith("vae.") for k in published["model"])
    # an older rvosflow export held the prefixed dict at the top level
    torch.save(published["model"], tmp_path / "nested.pth")
    z = latent(vae)
    with torch.no_grad():
        want = encoding.mask_probs(tuned, z)
        for src in ("folder", "decoder.pth", "nested.pth"):
            state = load_tuned_state(tmp_path / src)
            got = encoding.mask_probs(tuned_vae(vae, state), z)
            assert torch.equal(got, want), src
    # the encoder is the base VAE's, whatever the file holds
    state = load_tuned_state(tmp_path / "folder")
    state = {k: (v + 1 if k.startswith("encoder.") else v) for k, v in state.items()}
    again = tuned_vae(vae, state)
    assert all(torch.equal(again.encoder.state_dict()[k], v) for k, v in vae.encoder.state_dict().items())
    with pytest.raises(ValueError, match="1-channel"):
        tuned_vae(vae, vae.state_dict())


def test_training_moves_the_decoder_only(test_bundle):
    vae = test_bundle.vae
    g = torch.Generator().manual_seed(0)
    masks = torch.zeros(4, 5, 16, 16, dtype=torch.bool)
    masks[:, :, 4:12, 2:9] = True
    loader = [{"mask": masks}] * 6
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    tuned, history = train_decoder(vae, loader, DecoderSettings(lr=3e-3), generator=g, log_every=0)
    assert history["steps"] == 6 and history["loss"][-1] < history["loss"][0]
    assert all(torch.equal(v, before[k]) for k, v in vae.state_dict().items())  # the base VAE untouched
    state = tuned.state_dict()
    assert all(torch.equal(state[k], v) for k, v in before.items() if k.startswith(("encoder.", "quant_conv.")))
    assert not torch.equal(state["decoder.conv_out.weight"], 4.0 * before["decoder.conv_out.weight"].mean(0, keepdim=True))
    assert all(not p.requires_grad for p in tuned.parameters())
    capped, h = train_decoder(vae, loader, DecoderSettings(max_steps=2), log_every=0)
    assert h["steps"] == 2


def test_reconstruction_scores_on_a_benchmark(test_bundle, tiny_benchmark):
    from functools import partial

    from rvosflow.data.formats import MevisSource
    from rvosflow.data.transforms import model_size

    src = MevisSource(tiny_benchmark / "mevis" / "valid_u")
    size_fn = partial(model_size, target_height=32, max_width=32, multiple=16)
    tuned = with_logit_head(test_bundle.vae)
    both = reconstruction_scores({"frozen": test_bundle.vae, "tuned": tuned}, src, size_fn, limit=3, batch_size=2)
    for out in both.values():
        assert out["n"] == 3 and 0 <= out["JF"] <= 100 and out["JF"] == pytest.approx((out["J"] + out["F"]) / 2)
    alone = reconstruction_scores({"frozen": test_bundle.vae}, src, size_fn, limit=3, batch_size=1)
    assert alone["frozen"]["JF"] == pytest.approx(both["frozen"]["JF"], abs=1e-6)  # batching changes nothing


def test_crop_masks_takes_frames_and_a_window():
    from rvosflow.decoder import crop_masks

    m = torch.arange(2 * 17 * 8 * 8).view(2, 17, 8, 8)
    out = crop_masks(m, 4, 9, torch.Generator().manual_seed(0))
    assert out.shape == (2, 9, 4, 4)
    assert crop_masks(m, None, None, torch.Generator()).shape == m.shape


def test_vae_decoder_setting_follows_the_files_and_names_conflicts():
    assert compose([]).model.vae_decoder == "frozen"
    assert compose(["model.vae_ckpt=/x/decoder.pth"]).model.vae_decoder == "tuned"
    assert compose(["model.vae_decoder_path=/x/dec"]).model.vae_decoder == "tuned"
    cases = {
        ("model.vae_decoder=tuned",): "needs model.vae_decoder_path",
        ("model.vae_decoder=frozen", "model.vae_ckpt=/x.pth"): "frozen, but model.vae_ckpt",
        ("model.vae_ckpt=/x.pth", "model.vae_decoder_path=/y"): "expected one tuned decoder",
        ("model.vae_decoder=best",): "one of frozen, tuned",
        ("model.dit_weights=last",): "one of ema, model",
        ("decoder.head_init=zeros",): "one of mean, random",
        ("model.dit_ckpt=/a.pth", "init_from=/b.ckpt"): "one source of DiT weights",
        ("ema.decay=1.5",): "ema.decay",
        ("decoder.frames=8",): "1 \\+ 4k frames",
    }
    for overrides, message in cases.items():
        with pytest.raises(ConfigError, match=message):
            validate(compose(list(overrides)))
