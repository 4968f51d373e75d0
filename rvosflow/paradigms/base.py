"""What a paradigm is: how it builds the DiT's input, target and timestep, and how it infers.

Everything in paper time (DESIGN §2); Wan timesteps come from :func:`to_wan_timestep` only.
Latents are ``[B, C, F, H, W]``; ``z_video`` is the (normalised) video latent, ``z_mask`` the
mask latent. ``model(x, timestep)`` is the DiT with its text condition already bound.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch

from rvosflow.flow import to_wan_timestep

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# Toggles a paradigm may accept besides weight init (which every paradigm takes).
TOGGLES = ("bbs", "spa", "dvi")


@dataclass(frozen=True)
class FlowSettings:
    """The flow settings a paradigm reads; built from the run config by the registry."""

    bbs_p: float = 0.0
    spa: bool = False
    dvi: bool = False
    steps: int = 1  # Euler steps at inference (the release's default is 1)
    shift: float = 3.0
    sigma_min: float = 0.001
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
    multistep: ClassVar[bool] = False  # integrates a path over solver.steps (so it has a trajectory to draw)

    def __init__(self, settings: FlowSettings):
        self.settings = settings

    def input_channels(self, latent_channels: int) -> int:
        """Channels the DiT's patch embedding must take."""
        return 2 * latent_channels if self.settings.dvi else latent_channels

    def wan_timestep(self, t: torch.Tensor) -> torch.Tensor:
        return to_wan_timestep(t, self.settings.start_at_noise_end)

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
