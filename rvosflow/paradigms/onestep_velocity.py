"""(c) One-step velocity: predict v = z1 - z0 at t=0 and take one step z1 = z0 + v (the DiT
predicts it in Wan's sign, ``z0 - z1``, at timestep 1000 with the release's mapping)."""

from __future__ import annotations

import torch

from rvosflow.paradigms.base import Paradigm, TrainingPair, register


@register
class OneStepVelocity(Paradigm):
    name = "onestep_velocity"
    accepts = frozenset({"spa"})

    def training_pair(self, z_video, z_mask, generator) -> TrainingPair:
        t = torch.zeros(z_video.shape[0], device=z_video.device)
        return TrainingPair(z_video, self.wan_timestep(t), self.dit_target(z_mask - z_video))

    def predict(self, model, z_video, generator, steps=None) -> torch.Tensor:
        t = torch.zeros(z_video.shape[0], device=z_video.device)
        return z_video + self.velocity_field(model, lambda z: z)(z_video, t)
