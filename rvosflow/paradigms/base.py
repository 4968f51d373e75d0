"""What a paradigm is: how it builds the DiT's input, target and timestep, and how it infers.

A paradigm is one small class, registered with :func:`register` in its own module of this package
(every module here is imported by ``rvosflow.paradigms``), plus one preset
``configs/paradigm/<name>.yaml``. It reads the run's typed config (``rvosflow.schema.RunConfig``)
as ``self.cfg``; ``accepts`` names the axes it takes (their config group, ``"bbs"`` for ``bbs.p``,
or a key): an axis declared with ``scope="accepted"`` is inert for every other paradigm. A
paradigm's own knobs go into an ``options`` dataclass (its ``paradigm.*`` keys, declared with
``rvosflow.axes``), checked like every other setting.

Everything is in paper time (docs/design.md §2). The DiT sees and emits Wan's convention (docs/design.md §3): its
timestep comes from :meth:`Paradigm.wan_timestep` and a velocity paradigm's target and output pass
through :meth:`Paradigm.dit_target` / :meth:`Paradigm.velocity_field`, the only callers of the
conversions in ``rvosflow.flow``. Latents are ``[B, C, F, H, W]``; ``z_video`` is the (normalised)
video latent, ``z_mask`` the mask latent. ``model(x, timestep)`` is the DiT with its text condition bound.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch

from rvosflow.axes import axis
from rvosflow.flow import from_dit_velocity, inference_times, to_dit_velocity, to_wan_timestep

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

PARADIGMS: dict[str, type[Paradigm]] = {}


@dataclass(kw_only=True)
class ParadigmOptions:
    """The ``paradigm.*`` keys every paradigm has; a paradigm with knobs of its own subclasses it."""

    name: str = axis("???", label="Paradigm", token=str, scope="all", choices=lambda: sorted(PARADIGMS))


@dataclass
class TrainingPair:
    model_input: torch.Tensor
    timestep: torch.Tensor  # Wan timestep [B]
    target: torch.Tensor


class Paradigm(ABC):
    name: ClassVar[str]
    options: ClassVar[type] = ParadigmOptions
    accepts: ClassVar[frozenset[str]] = frozenset()
    # The DiT's output is a velocity (sign set by the convention); False: it is the mask latent itself.
    outputs_velocity: ClassVar[bool] = True
    multistep: ClassVar[bool] = False  # integrates a path over solver.steps (so it has a trajectory to draw)

    def __init__(self, cfg):
        self.cfg = cfg

    def start_point(self, mean: torch.Tensor, std: torch.Tensor | None, normalize: Callable,
                    generator: torch.Generator | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
        """The normalised video latent z0 from the VAE posterior (raw space): its mean, or with SPA in
        training (``std`` given, ``spa.enabled``) a sample ``mean + std * noise`` (the release's
        ``latent_dist.sample()``; paper App. D.2), normalised like every latent (``normalize``)."""
        if std is not None and self.cfg.spa.enabled:
            if noise is None:
                noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
            mean = mean + std * noise
        return normalize(mean)

    def input_channels(self, latent_channels: int) -> int:
        """Channels the DiT's patch embedding must take."""
        return 2 * latent_channels if self.cfg.dvi.enabled else latent_channels

    def wan_timestep(self, t: torch.Tensor) -> torch.Tensor:
        return to_wan_timestep(t, self.cfg.flow.start_at_noise_end)

    def dit_target(self, v: torch.Tensor) -> torch.Tensor:
        """The DiT's training target for the paper velocity ``v = dz/dt`` (Wan's sign)."""
        return to_dit_velocity(v, self.cfg.flow.start_at_noise_end)

    def inference_grid(self, steps: int | None = None) -> torch.Tensor:
        """Paper times of the Euler solver (the release's shifted, rounded schedule); ``steps``
        replaces ``solver.steps`` (the trajectory picture draws more)."""
        s = self.cfg.solver
        return inference_times(steps or s.steps, s.shift, s.sigma_min, s.round_timesteps)

    def velocity_field(self, model: ModelFn, model_input: Callable[[torch.Tensor], torch.Tensor]) -> Callable:
        """``(z, t) -> dz/dt`` in paper time from the DiT: its input is ``model_input(z)``, its
        timestep Wan's (rounded to an integer when ``round_timesteps``), its output converted from
        Wan's ``dz/dsigma``."""
        def velocity(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            timestep = self.wan_timestep(t)
            if self.cfg.solver.round_timesteps:
                timestep = torch.round(timestep)
            return from_dit_velocity(model(model_input(z), timestep), self.cfg.flow.start_at_noise_end)

        return velocity

    @abstractmethod
    def training_pair(
        self, z_video: torch.Tensor, z_mask: torch.Tensor, generator: torch.Generator | None
    ) -> TrainingPair: ...

    @abstractmethod
    def predict(
        self, model: ModelFn, z_video: torch.Tensor, generator: torch.Generator | None, steps: int | None = None
    ) -> torch.Tensor:
        """The predicted mask latent (``steps``: Euler steps instead of ``solver.steps``)."""


def register(cls: type[Paradigm]) -> type[Paradigm]:
    PARADIGMS[cls.name] = cls
    return cls


def with_video(x: torch.Tensor, z_video: torch.Tensor, enabled: bool) -> torch.Tensor:
    """Concatenate the video latent on channels (direct video injection / conditioning)."""
    return torch.cat([x, z_video], dim=1) if enabled else x
