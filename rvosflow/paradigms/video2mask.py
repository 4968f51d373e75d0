"""(d–i) FlowRVS: a multistep flow from the video latent to the mask latent."""

from __future__ import annotations

import torch

from rvosflow.flow import euler_integrate, inference_times, interpolate, sample_bbs_times
from rvosflow.paradigms.base import Paradigm, TrainingPair, register, with_video


@register
class Video2Mask(Paradigm):
    name = "video2mask"
    accepts = frozenset({"bbs", "spa", "dvi"})
    multistep = True

    def sample_times(self, batch: int, generator, device) -> torch.Tensor:
        return sample_bbs_times(batch, self.settings.bbs_p, generator, device)

    def training_pair(self, z_video, z_mask, generator) -> TrainingPair:
        t = self.sample_times(z_video.shape[0], generator, z_video.device)
        z_t = interpolate(z_video, z_mask, t)
        return TrainingPair(
            model_input=with_video(z_t, z_video, self.settings.dvi),
            timestep=self.wan_timestep(t),
            target=z_mask - z_video,
        )

    def predict(self, model, z_video, generator) -> torch.Tensor:
        def velocity(z, t):
            return model(with_video(z, z_video, self.settings.dvi), self.wan_timestep(t))

        times = inference_times(self.settings.steps, self.settings.shift, self.settings.sigma_min)
        return euler_integrate(velocity, z_video, times)
