"""(b) One-step mask (REM's formulation): the DiT maps the video latent to the mask latent
itself in one forward pass, at a fixed DiT timestep (``paradigm.timestep``, 0 as REM)."""

from __future__ import annotations

import torch

from rvosflow.paradigms.base import Paradigm, TrainingPair, register


@register
class OneStepMask(Paradigm):
    name = "onestep_mask"
    accepts = frozenset({"spa"})
    outputs_velocity = False  # the DiT's output is the mask latent: no sign to convert

    def _timestep(self, z: torch.Tensor) -> torch.Tensor:
        # A DiT timestep, not paper time: REM feeds the pretrained model timestep 0 directly.
        return torch.full((z.shape[0],), float(self.settings.onestep_timestep), device=z.device)

    def training_pair(self, z_video, z_mask, generator) -> TrainingPair:
        return TrainingPair(z_video, self._timestep(z_video), z_mask)

    def predict(self, model, z_video, generator) -> torch.Tensor:
        return model(z_video, self._timestep(z_video))
