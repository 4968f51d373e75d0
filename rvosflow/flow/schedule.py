"""Time conventions, timestep sampling and the Euler solver.

The code's API speaks the paper's time: ``z_t = (1 - t) z0 + t z1`` with the start point at
t=0 and the mask at t=1. Wan's DiT embeds a timestep in [0, 1000] where 1000 is its noise end.
The public release puts the *start* (video, or noise for noise2mask) at Wan's noise end, so
``timestep = (1 - t) * 1000``. Wan's DiT also emits the velocity in its own time: it predicts
``dz/dsigma`` (``noise - data``) with sigma = timestep / 1000, where the paper's velocity is
``v = dz/dt``. With the release's mapping (sigma = 1 - t) the DiT's output is ``-v``: with the
video in the noise slot it is trained on ``u = z_video - z_mask`` (docs/design.md §3, "Velocity sign").
:func:`to_wan_timestep` and :func:`wan_velocity_factor` are the one place that converts.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

WAN_NUM_TRAIN_TIMESTEPS = 1000


def to_wan_timestep(t: torch.Tensor, start_at_noise_end: bool = True) -> torch.Tensor:
    """Paper time t in [0, 1] -> Wan DiT timestep in [0, 1000].

    ``start_at_noise_end=True`` is the release's choice (video end = timestep 1000); False maps
    t linearly (t=0 -> 0), an alternative kept as a setting for ablation.
    """
    sigma = (1.0 - t) if start_at_noise_end else t
    return sigma * WAN_NUM_TRAIN_TIMESTEPS


def wan_velocity_factor(start_at_noise_end: bool = True) -> float:
    """``dsigma/dt``: the DiT's velocity ``dz/dsigma`` = factor x the paper's ``dz/dt``.

    -1 for the release's mapping (sigma = 1 - t: the DiT predicts ``z_start - z_end``, Wan's
    ``noise - data`` with the start in the noise slot), +1 for the linear one (sigma = t). The
    factor is its own inverse, so the same product converts either way.
    """
    return -1.0 if start_at_noise_end else 1.0


def to_dit_velocity(v: torch.Tensor, start_at_noise_end: bool = True) -> torch.Tensor:
    """Paper velocity ``dz/dt`` -> the DiT's training target ``dz/dsigma`` (Wan's convention)."""
    return wan_velocity_factor(start_at_noise_end) * v


def from_dit_velocity(u: torch.Tensor, start_at_noise_end: bool = True) -> torch.Tensor:
    """The DiT's output ``dz/dsigma`` -> the paper velocity ``dz/dt`` the solver integrates."""
    return wan_velocity_factor(start_at_noise_end) * u


def interpolate(z0: torch.Tensor, z1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Linear path ``(1 - t) z0 + t z1`` with t of shape [B] broadcast over the rest."""
    t = t.view(-1, *([1] * (z0.dim() - 1))).to(z0.dtype)
    return (1.0 - t) * z0 + t * z1


BBS_SAMPLERS = ("release", "bernoulli")


def sample_bbs_times(
    batch_size: int, p: float, generator: torch.Generator | None = None, device=None, sampler: str = "release"
) -> torch.Tensor:
    """Boundary-biased sampling of paper times: t ~ p * delta(0) + (1 - p) * U(0, 1); p=0 is the base flow.

    ``sampler`` says how the mixture is drawn (``bbs.sampler``):

    * ``release`` (the public code's ``boundary_biased_sample(..., 'bias_video', bias_param=0,
      special_timesteps=[1000], special_freq=p)``): integer Wan timesteps k. For a batch of B > 1
      exactly ``int(B * p)`` samples sit at k = 1000 (t = 0) and the rest are ``floor(1000 u)``
      clamped to [1, 999], then the batch is shuffled; for B = 1 the sample is 1000 with
      probability p. So t = 1 - k / 1000 takes 1,000 values, and ``int(B * p)`` truncates: p=0.25
      with B=2 never draws the boundary (a quirk of the release, kept).
    * ``bernoulli``: one Bernoulli(p) draw per sample, continuous U(0, 1) otherwise.

    Returned as float64 so that ``1 - t`` gives back k / 1000 exactly for the release's integers.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"bbs.p must lie in [0, 1], got {p}")
    if sampler == "bernoulli":
        uniform = torch.rand(batch_size, generator=generator, device=device)
        at_start = torch.rand(batch_size, generator=generator, device=device) < p
        return torch.where(at_start, torch.zeros_like(uniform), uniform).double()
    if sampler != "release":
        raise ValueError(f"bbs.sampler: expected one of {', '.join(BBS_SAMPLERS)}, got {sampler!r}")
    regular = (torch.rand(batch_size, generator=generator, device=device) * WAN_NUM_TRAIN_TIMESTEPS)
    k = regular.long().clamp(1, WAN_NUM_TRAIN_TIMESTEPS - 1)
    if batch_size == 1:
        at_boundary = torch.rand(1, generator=generator, device=device) < p
    else:
        at_boundary = torch.zeros(batch_size, dtype=torch.bool, device=device)
        at_boundary[torch.randperm(batch_size, generator=generator, device=device)[: int(batch_size * p)]] = True
    k = torch.where(at_boundary, torch.full_like(k, WAN_NUM_TRAIN_TIMESTEPS), k)
    return 1.0 - k.double() / WAN_NUM_TRAIN_TIMESTEPS


def shift_sigma(sigma: torch.Tensor, shift: float) -> torch.Tensor:
    """Wan/SD3 timestep shift ``s * sigma / (1 + (s - 1) * sigma)``."""
    return shift * sigma / (1.0 + (shift - 1.0) * sigma)


def inference_times(steps: int, shift: float = 3.0, sigma_min: float = 0.001,
                    round_timesteps: bool = True) -> torch.Tensor:
    """Paper-time grid of ``steps + 1`` points from 0 (start) to exactly 1 (mask).

    The release evaluates the DiT at ``shift(linspace(1, sigma_min, N + 1))`` x 1000 with the last
    value dropped and the timesteps **rounded to integers** (``round_timesteps``, the release's
    choice), and (as diffusers' flow-matching Euler scheduler does) steps with sigma = timestep /
    1000 to sigma = 0 at the end, so the final point is the end point itself. With N=1 the model
    is evaluated once, at t=0 (timestep 1000), whatever the rounding.
    """
    if steps < 1:
        raise ValueError(f"solver.steps must be >= 1, got {steps}")
    sigmas = shift_sigma(torch.linspace(1.0, sigma_min, steps + 1, dtype=torch.float64), shift)
    if round_timesteps:
        sigmas = torch.round(sigmas * WAN_NUM_TRAIN_TIMESTEPS) / WAN_NUM_TRAIN_TIMESTEPS
    sigmas = torch.cat([sigmas[:-1], torch.zeros(1, dtype=torch.float64)])
    return 1.0 - sigmas


def euler_integrate(
    velocity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    z_start: torch.Tensor,
    times: torch.Tensor,
) -> torch.Tensor:
    """Integrate dz/dt = velocity(z, t) over the grid ``times`` with explicit Euler.

    ``velocity`` receives z and the batch's paper time t of shape [B].
    """
    z = z_start
    batch = z_start.shape[0]
    for t_now, t_next in zip(times[:-1], times[1:]):
        t = torch.full((batch,), float(t_now), dtype=z.dtype, device=z.device)
        z = z + (float(t_next) - float(t_now)) * velocity(z, t)
    return z
