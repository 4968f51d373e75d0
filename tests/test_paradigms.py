"""Paradigms and toggles on a tiny real WanTransformer3DModel: what each feeds the DiT, DVI's
zero-init, WI, SPA's start-point distribution, and that every combination overfits a batch."""

import itertools

import pytest
import torch
from settings import paradigm, run_config

from rvosflow.models import encoding
from rvosflow.models.dit import build_dit, widen_patch_embedding
from rvosflow.models.tiny import build_random_bundle
from rvosflow.paradigms import PARADIGMS

C, F_, H, W = 16, 2, 4, 4  # latent [C, F, H, W] of the TEST bundle (patch 1x2x2)


@pytest.fixture(scope="module")
def bundle():
    return build_random_bundle("test", vocab=["the", "red", "circle"], seed=0)


def text(bundle, batch=2, length=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, length, bundle.text_encoder.config.d_model, generator=g)


def latents(batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, C, F_, H, W, generator=g), torch.randn(batch, C, F_, H, W, generator=g)


def model_fn(dit, cond):
    return lambda x, ts: dit(hidden_states=x, timestep=ts, encoder_hidden_states=cond, return_dict=False)[0]


def test_registry_holds_the_four_paradigms():
    assert sorted(PARADIGMS) == ["noise2mask", "onestep_mask", "onestep_velocity", "video2mask"]
    from rvosflow.errors import ConfigError

    with pytest.raises(ConfigError, match="paradigm.name: expected one of noise2mask"):
        run_config("mask2video")


def test_training_pairs_follow_the_definitions():
    zv, zm = latents()
    g = torch.Generator().manual_seed(0)
    v2m = paradigm("video2mask", bbs_p=1.0)  # p=1: always at the video end
    pair = v2m.training_pair(zv, zm, g)
    assert torch.equal(pair.model_input, zv) and torch.equal(pair.target, zv - zm)  # Wan's sign
    assert pair.timestep.tolist() == [1000.0, 1000.0]

    dvi = paradigm("video2mask", bbs_p=0.0, dvi=True).training_pair(zv, zm, g)
    t = 1 - dvi.timestep / 1000
    z_t = (1 - t.view(-1, 1, 1, 1, 1)) * zv + t.view(-1, 1, 1, 1, 1) * zm
    assert torch.allclose(dvi.model_input[:, :C], z_t, atol=1e-6) and torch.equal(dvi.model_input[:, C:], zv)

    ov = paradigm("onestep_velocity").training_pair(zv, zm, g)
    assert torch.equal(ov.model_input, zv) and torch.equal(ov.target, zv - zm) and ov.timestep.tolist() == [1000.0] * 2

    om = paradigm("onestep_mask", onestep_timestep=0.0).training_pair(zv, zm, g)
    assert torch.equal(om.model_input, zv) and torch.equal(om.target, zm) and om.timestep.tolist() == [0.0, 0.0]

    n2m = paradigm("noise2mask").training_pair(zv, zm, g)
    assert n2m.model_input.shape[1] == 2 * C and torch.equal(n2m.model_input[:, C:], zv)
    noise = zm + n2m.target  # target = noise - z1 (Wan's noise - data)
    t = (1 - n2m.timestep / 1000).view(-1, 1, 1, 1, 1)
    assert torch.allclose(n2m.model_input[:, :C], (1 - t) * noise + t * zm, atol=1e-5)


def test_video2mask_target_at_t0_is_wans_and_one_euler_step_lands_on_the_mask():
    """The release's convention at the DiT boundary (docs/design.md §3): at t=0 (timestep 1000) the DiT is
    trained on u = z_video - z_mask, and z += (sigma_next - sigma) * u from sigma=1 to 0 lands on the mask."""
    zv, zm = latents()
    for dvi in (False, True):
        p = paradigm("video2mask", bbs_p=1.0, dvi=dvi, steps=1)
        pair = p.training_pair(zv, zm, torch.Generator().manual_seed(0))
        assert pair.timestep.tolist() == [1000.0, 1000.0]
        assert torch.equal(pair.target, zv - zm)
        calls = []

        def dit(x, ts):  # returns that target
            calls.append(ts.clone())
            return x[:, :C] - zm
        assert torch.allclose(p.predict(dit, zv, None), zm, atol=1e-6)
        assert [c.tolist() for c in calls] == [[1000.0, 1000.0]]  # one DiT call, at the video end
        # the same step written as Wan's scheduler does it: sigma 1 -> 0
        assert torch.allclose(zv + (0.0 - 1.0) * pair.target, zm, atol=1e-6)


def test_inference_with_an_oracle_velocity_recovers_the_mask():
    zv, zm = latents()
    for steps in (1, 4):
        for rounding in (True, False):
            p = paradigm("video2mask", steps=steps, dvi=True, round_timesteps=rounding)
            oracle = lambda x, ts: x[:, C:] - zm  # noqa: E731  (Wan's z_video - z_mask, z_video is the injected half)
            assert torch.allclose(p.predict(oracle, zv, None), zm, atol=1e-5)
    ov = paradigm("onestep_velocity")
    assert torch.allclose(ov.predict(lambda x, ts: x - zm, zv, None), zm, atol=1e-6)
    # the linear mapping (flow.start_at_noise_end=false): sigma = t, so dz/dsigma = +v
    lin = paradigm("video2mask", steps=3, start_at_noise_end=False)
    assert torch.allclose(lin.predict(lambda x, ts: zm - zv, zv, None), zm, atol=1e-5)


def test_inference_timesteps_are_rounded_integers_by_default():
    zv, zm = latents()
    seen = {}
    for rounding in (True, False):
        p = paradigm("video2mask", steps=4, round_timesteps=rounding)
        seen[rounding] = []
        p.predict(lambda x, ts: seen[rounding].append(ts[0].item()) or torch.zeros_like(x), zv, None)
    assert seen[True][0] == 1000.0 and all(t == int(t) for t in seen[True])
    assert any(t != int(t) for t in seen[False])


def test_dvi_at_init_leaves_the_output_unchanged(bundle):
    zv, zm = latents()
    cond = text(bundle)
    base = build_dit(bundle.transformer, C, weight_init=True, seed=0).eval()
    wide = build_dit(bundle.transformer, 2 * C, weight_init=True, seed=0).eval()
    assert wide.config.in_channels == 2 * C and wide.patch_embedding.weight.shape[1] == 2 * C
    assert torch.count_nonzero(wide.patch_embedding.weight[:, C:]) == 0
    ts = torch.tensor([1000.0, 400.0])
    with torch.no_grad():
        out_base = model_fn(base, cond)(zv, ts)
        out_wide = model_fn(wide, cond)(torch.cat([zv, zm], 1), ts)
    assert torch.equal(out_base, out_wide)


def test_dvi_widening_round_trips_through_save_pretrained(bundle, tmp_path):
    wide = build_dit(bundle.transformer, 2 * C, weight_init=True, seed=0)
    wide.save_pretrained(tmp_path)
    again = type(wide).from_pretrained(tmp_path)
    assert again.config.in_channels == 2 * C
    assert torch.equal(again.patch_embedding.weight, wide.patch_embedding.weight)
    with pytest.raises(ValueError, match="narrow"):
        widen_patch_embedding(wide, C)


def test_weight_init_off_gives_weights_unlike_the_bundle(bundle):
    pretrained = dict(bundle.transformer.named_parameters())
    on = build_dit(bundle.transformer, C, weight_init=True, seed=0)
    off = build_dit(bundle.transformer, C, weight_init=False, seed=0)
    off_again = build_dit(bundle.transformer, C, weight_init=False, seed=0)
    assert all(torch.equal(p, pretrained[n]) for n, p in on.named_parameters())
    differing = [n for n, p in off.named_parameters() if not torch.equal(p, pretrained[n]) and p.numel() > 1]
    assert len(differing) > len(pretrained) // 2
    assert all(torch.equal(p, dict(off_again.named_parameters())[n]) for n, p in off.named_parameters())  # seeded
    assert on.patch_embedding.weight.data_ptr() != bundle.transformer.patch_embedding.weight.data_ptr()


def test_spa_start_points_have_the_posterior_mean_and_variance(bundle):
    vae = bundle.vae
    vae.register_to_config(latents_mean=[0.5] * C, latents_std=[2.0] * C)
    g = torch.Generator().manual_seed(0)
    mean = torch.randn(1, C, 1, 2, 2, generator=g)
    std = torch.rand(1, C, 1, 2, 2, generator=g) + 0.1
    spa, plain = paradigm("video2mask", spa=True), paradigm("video2mask", spa=False)
    normalize = lambda z: encoding.normalize_latents(vae, z)  # noqa: E731
    draws = torch.stack([spa.start_point(mean, std, normalize, g) for _ in range(20000)])
    raw = encoding.denormalize_latents(vae, draws.flatten(0, 1))
    assert torch.allclose(raw.mean(0), mean[0], atol=0.03)
    assert torch.allclose(raw.std(0), std[0], rtol=0.03)
    assert torch.allclose(draws.mean(0), encoding.normalize_latents(vae, mean), atol=0.02)  # normalised after
    assert torch.equal(plain.start_point(mean, std, normalize), encoding.normalize_latents(vae, mean))  # SPA off
    assert torch.equal(spa.start_point(mean, None, normalize), encoding.normalize_latents(vae, mean))  # inference
    vae.register_to_config(latents_mean=[0.0] * C, latents_std=[1.0] * C)


def combinations():
    for name, cls in sorted(PARADIGMS.items()):
        opts = {"bbs": [0.0, 0.5] if "bbs" in cls.accepts else [0.0],
                "spa": [False, True] if "spa" in cls.accepts else [False],
                "dvi": [False, True] if "dvi" in cls.accepts else [False]}
        for p, spa, dvi, wi in itertools.product(opts["bbs"], opts["spa"], opts["dvi"], [True, False]):
            yield pytest.param(name, p, spa, dvi, wi, id=f"{name}-p{p}-spa{int(spa)}-dvi{int(dvi)}-wi{int(wi)}")


@pytest.mark.parametrize("name,p,spa,dvi,wi", list(combinations()))
def test_every_combination_overfits_a_fixed_batch(bundle, name, p, spa, dvi, wi):
    torch.manual_seed(0)
    flow = paradigm(name, bbs_p=p, spa=spa, dvi=dvi, steps=2)
    dit = build_dit(bundle.transformer, flow.input_channels(C), weight_init=wi, seed=1).train()
    opt = torch.optim.AdamW(dit.parameters(), lr=3e-3)
    mean, zm = latents()
    std = torch.full_like(mean, 0.05)
    cond = text(bundle)
    g = torch.Generator().manual_seed(0)

    def loss_now(gen):
        zv = mean + std * torch.randn(mean.shape, generator=gen) if spa else mean
        pair = flow.training_pair(zv, zm, gen)
        return torch.nn.functional.mse_loss(model_fn(dit, cond)(pair.model_input, pair.timestep), pair.target)

    def eval_loss():  # the same draws each time, so the comparison is fair
        with torch.no_grad():
            return sum(loss_now(torch.Generator().manual_seed(s)).item() for s in range(8)) / 8

    before = eval_loss()
    for _ in range(60):
        opt.zero_grad()
        loss_now(g).backward()
        opt.step()
    after = eval_loss()
    assert after < 0.7 * before, (before, after)
