"""(a) Noise to mask: a flow from Gaussian noise to the mask latent, with the video latent
concatenated on channels as a condition (the generative formulation)."""

from __future__ import annotations

import torch

from rvosflow.flow import euler_integrate, interpolate
from rvosflow.paradigms.base import Paradigm, TrainingPair, register, with_video


@register
class Noise2Mask(Paradigm):
    name = "noise2mask"
    accepts = frozenset({"solver"})
    multistep = True

    def input_channels(self, latent_channels: int) -> int:
        return 2 * latent_channels  # [x_t, video condition]

    def training_pair(self, z_video, z_mask, generator) -> TrainingPair:
        batch = z_video.shape[0]
        noise = torch.randn(z_mask.shape, generator=generator, device=z_mask.device)
        t = torch.rand(batch, generator=generator, device=z_mask.device)
        return TrainingPair(
            model_input=with_video(interpolate(noise, z_mask, t), z_video, True),
            timestep=self.wan_timestep(t),
            target=self.dit_target(z_mask - noise),  # Wan's sign: noise - z_mask
        )

    def predict(self, model, z_video, generator, steps=None) -> torch.Tensor:
        noise = torch.randn(z_video.shape, generator=generator, device=z_video.device)
        velocity = self.velocity_field(model, lambda z: with_video(z, z_video, True))
        return euler_integrate(velocity, noise, self.inference_grid(steps))
