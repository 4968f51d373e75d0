"""FlowRVSModule: one ablation configuration as a LightningModule.

A thin layer: the paradigm object says what to feed the DiT and how to infer; encoding
conventions live in ``rvosflow.models.encoding``; J&F in ``rvosflow.metrics``. Only the DiT
trains. The frozen VAE and text encoder are kept out of the module's state dict (checkpoints
hold the DiT alone) and their outputs are cached per clip when ``cache_latents`` is on.
"""

from __future__ import annotations

from dataclasses import dataclass

import lightning as L
import torch
import torch.nn.functional as F

from rvosflow.data.transforms import pad_frames, resize_masks, padded_frame_count, windows
from rvosflow.metrics import JandF
from rvosflow.models import encoding
from rvosflow.models.dit import build_dit
from rvosflow.paradigms import Paradigm


@dataclass(frozen=True)
class OptimSettings:
    lr: float = 6e-5
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 5e-4


def start_point(vae, mean: torch.Tensor, std: torch.Tensor | None, augment: bool,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """The normalised video latent z0. SPA (``augment``) draws z0 ~ N(mean, std^2) from the VAE
    posterior instead of taking its mean, then normalises it like every latent (paper App. D.2)."""
    if augment:
        mean = mean + std * torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return encoding.normalize_latents(vae, mean)


class FrozenParts:
    """VAE, text encoder and tokenizer: used, never trained, not part of the checkpoint."""

    def __init__(self, vae, text_encoder, tokenizer):
        self.vae, self.text_encoder, self.tokenizer = vae, text_encoder, tokenizer
        for m in (vae, text_encoder):
            m.requires_grad_(False).eval()

    def to(self, device) -> None:
        self.vae.to(device)
        self.text_encoder.to(device)


class FlowRVSModule(L.LightningModule):
    def __init__(
        self,
        bundle,
        paradigm: Paradigm,
        weight_init: bool = True,
        optim: OptimSettings = OptimSettings(),
        text_max_length: int = 64,
        normalize_mask_latent: bool = False,
        window_frames: int = 81,
        cache_latents: bool = True,
        num_overlays: int = 4,
        seed: int = 0,
        run_config: dict | None = None,
    ):
        super().__init__()
        # The resolved run config is stored with checkpoints so they can be rebuilt.
        self.save_hyperparameters({"run_config": run_config or {}})
        self.paradigm = paradigm
        self.frozen = FrozenParts(bundle.vae, bundle.text_encoder, bundle.tokenizer)
        latent_channels = bundle.vae.config.z_dim
        self.transformer = build_dit(
            bundle.transformer, paradigm.input_channels(latent_channels), weight_init, seed
        )
        self.optim = optim
        self.text_max_length = text_max_length
        self.normalize_mask_latent = normalize_mask_latent
        self.window_frames = padded_frame_count(window_frames, self.temporal_factor)
        self.cache_latents = cache_latents
        self.num_overlays = num_overlays
        self.seed = seed
        self.val_metric = JandF()
        self._cache: dict = {}
        self.overlays: list[dict] = []  # filled during validation, read by the logging callback

    # ----------------------------------------------------------------- frozen encoders
    @property
    def temporal_factor(self) -> int:
        return encoding.temporal_factor(self.frozen.vae)

    def _cached(self, key, compute):
        if not self.cache_latents:
            return compute()
        if key not in self._cache:
            self._cache[key] = tuple(x.detach().cpu() for x in compute())
        return tuple(x.to(self.device) for x in self._cache[key])

    @torch.no_grad()
    def text_embeddings(self, captions: list[str]) -> torch.Tensor:
        rows = [
            self._cached(("text", c), lambda c=c: (encoding.encode_text(
                self.frozen.text_encoder, self.frozen.tokenizer, [c], self.text_max_length),))[0]
            for c in captions
        ]
        return torch.cat(rows).to(self.dtype)

    @torch.no_grad()
    def video_posterior(self, frames: torch.Tensor, key) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw-space posterior (mean, std) of a clip, frames uint8 [T, H, W, 3]."""
        return self._cached(("video", key), lambda: encoding.vae_posterior(
            self.frozen.vae, encoding.frames_to_pixels(frames[None].to(self.device))))

    @torch.no_grad()
    def mask_latent(self, mask: torch.Tensor, key) -> torch.Tensor:
        return self._cached(("mask", key), lambda: (encoding.encode_mask(
            self.frozen.vae, encoding.mask_to_pixels(mask[None].to(self.device)),
            normalize=self.normalize_mask_latent),))[0]

    def start_latent(self, mean: torch.Tensor, std: torch.Tensor | None, augment: bool) -> torch.Tensor:
        return start_point(self.frozen.vae, mean, std, augment)

    def dit(self, text: torch.Tensor):
        def model(x: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
            return self.transformer(
                hidden_states=x.to(self.dtype), timestep=timestep, encoder_hidden_states=text,
                return_dict=False,
            )[0]

        return model

    # ----------------------------------------------------------------- training
    def on_fit_start(self) -> None:
        self.frozen.to(self.device)

    def on_validation_start(self) -> None:
        self.frozen.to(self.device)
        self.overlays = []

    on_predict_start = on_validation_start

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        z_video, z_mask = [], []
        for i, video_id in enumerate(batch["video_id"]):
            key = (video_id, tuple(batch["frame_indices"][i].tolist()))
            mean, std = self.video_posterior(batch["frames"][i], key)
            z_video.append(self.start_latent(mean, std, self.paradigm.settings.spa))
            z_mask.append(self.mask_latent(batch["mask"][i], key + (batch["exp_id"][i],)))
        z_video, z_mask = torch.cat(z_video), torch.cat(z_mask)
        pair = self.paradigm.training_pair(z_video, z_mask, generator=None)
        pred = self.dit(self.text_embeddings(batch["caption"]))(pair.model_input, pair.timestep)
        loss = F.mse_loss(pred.float(), pair.target.float())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite training loss {loss.item()} at step {self.global_step}")
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["video_id"]))
        return loss

    def configure_optimizers(self):
        o = self.optim
        return torch.optim.AdamW(
            [p for p in self.transformer.parameters() if p.requires_grad],
            lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay,
        )

    # ----------------------------------------------------------------- inference
    @torch.no_grad()
    def predict_masks(self, sample: dict) -> torch.Tensor:
        """bool [T, H, W] at the sample's original resolution for one whole video."""
        frames = sample["frames"]
        text = self.text_embeddings([sample["caption"]])
        model = self.dit(text)
        generator = torch.Generator(device=self.device).manual_seed(self.seed)
        probs = []
        for start, stop in windows(len(frames), self.window_frames):
            clip = frames[start:stop]
            n = padded_frame_count(len(clip), self.temporal_factor)
            mean, _ = self.video_posterior(pad_frames(clip, n), (sample["video_id"], "window", start, stop))
            z_mask = self.paradigm.predict(model, self.start_latent(mean, None, False), generator)
            soft = encoding.mask_probs(self.frozen.vae, z_mask.float(), normalized=self.normalize_mask_latent)
            probs.append(soft[0, : stop - start])
        return resize_masks(torch.cat(probs).float().cpu(), sample["orig_size"])

    def validation_step(self, sample: dict, batch_idx: int) -> None:
        pred = self.predict_masks(sample)
        if sample["target"] is None:
            raise ValueError(f"validation split has no masks (video {sample['video_id']})")
        self.val_metric.update(pred, sample["target"])
        if len(self.overlays) < self.num_overlays:
            self.overlays.append({**{k: sample[k] for k in ("video_id", "exp_id", "caption", "target")},
                                  "frames": sample["frames"], "pred": pred})

    def on_validation_epoch_end(self) -> None:
        scores = self.val_metric.compute()
        for name in ("J", "F", "JF"):
            self.log(f"val/{name}", scores[name].float(), sync_dist=False)
        self.val_metric.reset()

    def predict_step(self, sample: dict, batch_idx: int) -> dict:
        return {k: sample[k] for k in ("video_id", "exp_id", "frame_names")} | {"pred": self.predict_masks(sample)}
