"""(b) One-step mask (REM's formulation): the DiT maps the video latent to the mask latent
itself in one forward pass, at a fixed DiT timestep (``paradigm.timestep``, 0 as REM)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rvosflow.axes import axis
from rvosflow.paradigms.base import Paradigm, ParadigmOptions, TrainingPair, register


@dataclass(kw_only=True)
class OneStepMaskOptions(ParadigmOptions):
    # A DiT timestep, not paper time: REM feeds the pretrained model timestep 0 directly.
    timestep: float = axis(0.0, label="timestep", token=lambda t: f"ts{t:g}" if t else None, scope="all", lo=0, hi=1000)


@register
class OneStepMask(Paradigm):
    name = "onestep_mask"
    options = OneStepMaskOptions
    accepts = frozenset({"spa"})
    outputs_velocity = False  # the DiT's output is the mask latent: no sign to convert

    def _timestep(self, z: torch.Tensor) -> torch.Tensor:
        return torch.full((z.shape[0],), float(self.cfg.paradigm.timestep), device=z.device)

    def training_pair(self, z_video, z_mask, generator) -> TrainingPair:
        return TrainingPair(z_video, self._timestep(z_video), z_mask)

    def predict(self, model, z_video, generator, steps=None) -> torch.Tensor:
        return model(z_video, self._timestep(z_video))
