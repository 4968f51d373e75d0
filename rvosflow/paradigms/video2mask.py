"""(d–i) FlowRVS: a multistep flow from the video latent to the mask latent."""

from __future__ import annotations

import torch

from rvosflow.flow import euler_integrate, interpolate, sample_bbs_times
from rvosflow.paradigms.base import Paradigm, TrainingPair, register, with_video


@register
class Video2Mask(Paradigm):
    name = "video2mask"
    accepts = frozenset({"bbs", "spa", "dvi", "solver"})
    multistep = True

    def sample_times(self, batch: int, generator, device) -> torch.Tensor:
        return sample_bbs_times(batch, self.cfg.bbs.p, generator, device, self.cfg.bbs.sampler)

    def training_pair(self, z_video, z_mask, generator) -> TrainingPair:
        return self.pair_at(z_video, z_mask, self.sample_times(z_video.shape[0], generator, z_video.device))

    def pair_at(self, z_video, z_mask, t: torch.Tensor) -> TrainingPair:
        """The training pair at paper times ``t`` [B]."""
        z_t = interpolate(z_video, z_mask, t)
        timestep = self.wan_timestep(t).float()
        if self.cfg.bbs.sampler == "release":  # the release's DiT gets the integer it drew
            timestep = torch.round(timestep)
        return TrainingPair(
            model_input=with_video(z_t, z_video, self.cfg.dvi.enabled),
            timestep=timestep,
            target=self.dit_target(z_mask - z_video),  # Wan's sign: z_video - z_mask
        )

    def predict(self, model, z_video, generator, steps=None) -> torch.Tensor:
        velocity = self.velocity_field(model, lambda z: with_video(z, z_video, self.cfg.dvi.enabled))
        return euler_integrate(velocity, z_video, self.inference_grid(steps))
