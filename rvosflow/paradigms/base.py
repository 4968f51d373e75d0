"""What a paradigm is: how it builds the DiT's input, target and timestep, and how it infers.

Everything in paper time (DESIGN §2). The DiT sees and emits Wan's convention (DESIGN §3):
its timestep comes from :meth:`Paradigm.wan_timestep` and a velocity paradigm's target and output
pass through :meth:`Paradigm.dit_target` / :meth:`Paradigm.velocity_field`, which are the only
callers of the conversions in ``rvosflow.flow``. Latents are ``[B, C, F, H, W]``; ``z_video`` is the (normalised) video latent, ``z_mask`` the
mask latent. ``model(x, timestep)`` is the DiT with its text condition already bound.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch

from rvosflow.flow import from_dit_velocity, inference_times, to_dit_velocity, to_wan_timestep

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# Toggles a paradigm may accept besides weight init (which every paradigm takes).
TOGGLES = ("bbs", "spa", "dvi")


@dataclass(frozen=True)
class FlowSettings:
    """The flow settings a paradigm reads; built from the run config by the registry."""

    bbs_p: float = 0.0
    bbs_sampler: str = "release"  # release: integer timesteps, int(B * p) of a batch at the boundary
    spa: bool = False
    dvi: bool = False
    steps: int = 1  # Euler steps at inference (the release's default is 1)
    shift: float = 3.0
    sigma_min: float = 0.001
    round_timesteps: bool = True  # release: inference timesteps rounded to integers
    start_at_noise_end: bool = True  # release: the start point sits at Wan's timestep 1000
    onestep_timestep: float = 0.0  # onestep_mask's fixed DiT timestep (REM uses 0)


@dataclass
class TrainingPair:
    model_input: torch.Tensor
    timestep: torch.Tensor  # Wan timestep [B]
    target: torch.Tensor


class Paradigm(ABC):
    name: ClassVar[str]
    accepts: ClassVar[frozenset[str]] = frozenset()
    # The DiT's output is a velocity (sign set by the convention); False: it is the mask latent itself.
    outputs_velocity: ClassVar[bool] = True
    multistep: ClassVar[bool] = False  # integrates a path over solver.steps (so it has a trajectory to draw)

    def __init__(self, settings: FlowSettings):
        self.settings = settings

    def input_channels(self, latent_channels: int) -> int:
        """Channels the DiT's patch embedding must take."""
        return 2 * latent_channels if self.settings.dvi else latent_channels

    def wan_timestep(self, t: torch.Tensor) -> torch.Tensor:
        return to_wan_timestep(t, self.settings.start_at_noise_end)

    def dit_target(self, v: torch.Tensor) -> torch.Tensor:
        """The DiT's training target for the paper velocity ``v = dz/dt`` (Wan's sign)."""
        return to_dit_velocity(v, self.settings.start_at_noise_end)

    def inference_grid(self) -> torch.Tensor:
        """Paper times of the Euler solver (the release's shifted, rounded schedule)."""
        s = self.settings
        return inference_times(s.steps, s.shift, s.sigma_min, s.round_timesteps)

    def velocity_field(self, model: ModelFn, model_input: Callable[[torch.Tensor], torch.Tensor]) -> Callable:
        """``(z, t) -> dz/dt`` in paper time from the DiT: its input is ``model_input(z)``, its
        timestep Wan's (rounded to an integer when ``round_timesteps``), its output converted from
        Wan's ``dz/dsigma``."""
        def velocity(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            timestep = self.wan_timestep(t)
            if self.settings.round_timesteps:
                timestep = torch.round(timestep)
            return from_dit_velocity(model(model_input(z), timestep), self.settings.start_at_noise_end)

        return velocity

    @abstractmethod
    def training_pair(
        self, z_video: torch.Tensor, z_mask: torch.Tensor, generator: torch.Generator | None
    ) -> TrainingPair: ...

    @abstractmethod
    def predict(
        self, model: ModelFn, z_video: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        """The predicted mask latent."""


PARADIGMS: dict[str, type[Paradigm]] = {}


def register(cls: type[Paradigm]) -> type[Paradigm]:
    PARADIGMS[cls.name] = cls
    return cls


def with_video(x: torch.Tensor, z_video: torch.Tensor, enabled: bool) -> torch.Tensor:
    """Concatenate the video latent on channels (direct video injection / conditioning)."""
    return torch.cat([x, z_video], dim=1) if enabled else x
