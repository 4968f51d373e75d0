"""Flow numerics: time conventions, BBS, the release's shifted Euler schedule."""

import pytest
import torch

from rvosflow.flow import (
    euler_integrate,
    from_dit_velocity,
    inference_times,
    interpolate,
    sample_bbs_times,
    shift_sigma,
    to_dit_velocity,
    to_wan_timestep,
)


def test_release_maps_start_to_wan_noise_end():
    t = torch.tensor([0.0, 0.25, 1.0])
    assert to_wan_timestep(t).tolist() == [1000.0, 750.0, 0.0]
    assert to_wan_timestep(t, start_at_noise_end=False).tolist() == [0.0, 250.0, 1000.0]


def test_interpolation_ends():
    z0, z1 = torch.randn(3, 4, 2, 2, 2), torch.randn(3, 4, 2, 2, 2)
    assert torch.equal(interpolate(z0, z1, torch.zeros(3)), z0)
    assert torch.allclose(interpolate(z0, z1, torch.ones(3)), z1)
    mid = interpolate(z0, z1, torch.tensor([0.5, 0.5, 0.5]))
    assert torch.allclose(mid, (z0 + z1) / 2)


@pytest.mark.parametrize("sampler", ["release", "bernoulli"])
@pytest.mark.parametrize("p", [0.0, 0.25, 0.5, 0.75, 1.0])
def test_bbs_share_of_t0_matches_p(p, sampler):
    g = torch.Generator().manual_seed(0)
    t = sample_bbs_times(200_000, p, g, sampler=sampler)
    share = (t == 0).float().mean().item()
    assert share == p if sampler == "release" else abs(share - p) < 0.005  # release: exactly int(B p) per batch
    rest = t[t > 0]
    if p < 1:  # the rest is U(0, 1): continuous (bernoulli) or on the release's 1/1000 grid, never t=1
        assert abs(rest.mean().item() - 0.5) < 0.01 and rest.max() < 1
        grid = (1 - rest) * 1000
        assert torch.allclose(grid, grid.round(), atol=1e-6) if sampler == "release" else not torch.allclose(grid, grid.round())
    with pytest.raises(ValueError, match="bbs.p"):
        sample_bbs_times(4, 1.5, sampler=sampler)
    with pytest.raises(ValueError, match="bbs.sampler"):
        sample_bbs_times(4, 0.5, sampler="uniform")


def test_release_bbs_truncates_the_boundary_count_per_batch():
    g = torch.Generator().manual_seed(0)
    assert all(int((sample_bbs_times(2, 0.25, g) == 0).sum()) == 0 for _ in range(200))  # int(2 * 0.25) = 0
    assert all(int((sample_bbs_times(8, 0.75, g) == 0).sum()) == 6 for _ in range(200))


def test_shift_matches_definition():
    s = torch.tensor([0.0, 0.1, 0.5, 1.0])
    assert torch.allclose(shift_sigma(s, 3.0), 3 * s / (1 + 2 * s))
    assert torch.equal(shift_sigma(s, 1.0), s)


def test_inference_grid_is_the_release_schedule():
    # N=1: one model call at t=0 (Wan timestep 1000) then straight to the mask.
    assert inference_times(1).tolist() == [0.0, 1.0]
    steps = 4
    sigmas = shift_sigma(torch.linspace(1, 0.001, steps + 1, dtype=torch.float64), 3.0)[:-1]
    exact = inference_times(steps, shift=3.0, round_timesteps=False)
    assert torch.allclose(to_wan_timestep(exact[:-1]), sigmas * 1000)
    rounded = inference_times(steps, shift=3.0)  # the release's default: integer timesteps
    assert to_wan_timestep(rounded[:-1]).tolist() == pytest.approx(torch.round(sigmas * 1000).tolist(), abs=1e-9)
    for times in (exact, rounded):
        assert times[0] == 0 and times[-1] == 1 and torch.all(times[1:] > times[:-1])


def test_dit_velocity_is_wans_sign_under_the_release_mapping():
    v = torch.randn(2, 3)
    assert torch.equal(to_dit_velocity(v), -v) and torch.equal(from_dit_velocity(-v), v)
    assert torch.equal(to_dit_velocity(v, start_at_noise_end=False), v)
    # Euler in sigma (Wan's scheduler: z += (sigma_next - sigma) u) is Euler in t on v
    z0, z1 = torch.randn(2, 3), torch.randn(2, 3)
    u = to_dit_velocity(z1 - z0)
    assert torch.allclose(z0 + (0.0 - 1.0) * u, z1, atol=1e-6)


@pytest.mark.parametrize("steps", [1, 3, 10])
def test_euler_on_constant_velocity_lands_exactly_on_end_point(steps):
    z0 = torch.randn(2, 16, 3, 4, 4, dtype=torch.float64)
    z1 = torch.randn_like(z0)
    out = euler_integrate(lambda z, t: z1 - z0, z0, inference_times(steps))
    assert torch.allclose(out, z1, atol=1e-12)


def test_euler_passes_paper_time_to_the_field():
    seen = []
    euler_integrate(lambda z, t: seen.append(t.clone()) or torch.zeros_like(z), torch.zeros(2, 1), inference_times(3))
    assert [s[0].item() for s in seen] == pytest.approx(inference_times(3)[:-1].tolist())
