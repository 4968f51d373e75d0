"""FlowRVSModule: one ablation configuration as a LightningModule.

A thin layer over the run's typed config (``rvosflow.schema.RunConfig``): the paradigm object
says what to feed the DiT and how to infer (BBS, SPA, DVI and the solver act there); the DiT is
built by ``models.dit`` (WI); encoding conventions live in ``models.encoding``; J&F in
``metrics``. Only the DiT trains. The frozen VAE and text encoder are kept out of the state dict
(checkpoints hold the DiT alone, and its EMA); VAE outputs are cached per clip, text embeddings
per caption in a ``TextCache`` that the run fills before training, so no text encoder is ever on
the device (a module given one encodes the captions it misses on the fly).
"""

from __future__ import annotations

import dataclasses
import logging
import math

import lightning as L
import torch
import torch.nn.functional as F
from diffusers.training_utils import EMAModel

from rvosflow import checkpoints
from rvosflow.caches import LatentCache, TextCache, latent_cache_dir
from rvosflow.data.transforms import (
    pad_frames,
    padded_frame_count,
    resize_masks,
    windows,
)
from rvosflow.metrics import JandF, by_kind
from rvosflow.metrics.functional import jandf_per_expression
from rvosflow.metrics.records import ExpressionRecord, expression_record, flat_scores
from rvosflow.models import encoding
from rvosflow.models.dit import build_dit
from rvosflow.models.loader import resolve_dtype
from rvosflow.paradigms import build_paradigm

log = logging.getLogger(__name__)


class FrozenParts:
    """VAE, text encoder and tokenizer: used, never trained, not part of the checkpoint. The text
    encoder and tokenizer are None when the text cache covers the run."""

    def __init__(self, vae, text_encoder=None, tokenizer=None):
        self.vae, self.text_encoder, self.tokenizer = vae, text_encoder, tokenizer
        for m in (vae, text_encoder):
            if m is not None:
                m.requires_grad_(False).eval()

    def to(self, device) -> None:
        self.vae.to(device)
        if self.text_encoder is not None:
            self.text_encoder.to(device)


class FlowRVSModule(L.LightningModule):
    def __init__(self, cfg, bundle, text_cache: TextCache | None = None):
        super().__init__()
        # The resolved run config is stored with checkpoints so they can be rebuilt (and checked,
        # config.apply_checkpoint). Not logged by Lightning: the run logs it once as flat MLflow params.
        self.save_hyperparameters({"run_config": dataclasses.asdict(cfg)}, logger=False)
        self.cfg = cfg
        self.paradigm = build_paradigm(cfg)
        self.frozen = FrozenParts(bundle.vae, bundle.text_encoder, bundle.tokenizer)
        self.transformer = build_dit(bundle.transformer, self.paradigm.input_channels(bundle.vae.config.z_dim),
                                     cfg.wi.enabled, cfg.seed)
        if cfg.model.gradient_checkpointing:  # each block's activations are recomputed in backward
            self.transformer.enable_gradient_checkpointing()
        # EMA of the DiT weights, as the release keeps it: diffusers' EMAModel (its warm-up decay
        # min(decay, (1 + k) / (10 + k)) at step k + 1) with float32 shadows, stepped after every
        # optimizer step; validation and prediction use it; checkpoints carry its state.
        self.ema = None
        self.reset_ema()
        self._inference_weights: dict | None = None  # the EMA as the DiT's dtypes, while inferring
        # What the DiT computes in (its weights' dtype, or FSDP's param_dtype): latents and text
        # embeddings enter it in this dtype, so its residual stream and saved activations are too.
        fsdp = cfg.trainer.get("strategy") == "fsdp"
        self.compute_dtype = resolve_dtype(cfg.fsdp.param_dtype if fsdp else cfg.model.dtype)
        self.text = text_cache if text_cache is not None else TextCache(None, cfg.text.max_length)
        # null = whole videos in one pass (the release); a number = windows of that many frames (memory)
        self.window_frames = cfg.window_frames and padded_frame_count(cfg.window_frames, self.temporal_factor)
        self.latents = LatentCache(latent_cache_dir(cfg), enabled=cfg.cache_latents)
        self.val_metric = JandF()
        # "val" during fit; the run sets "final" for the closing full-split score, so the in-training
        # curve and the reported number are two metrics, not one curve with a kink.
        self.metric_prefix = "val"
        self.overlays: list[dict] = []  # one expression per video, filled during validation, read by OverlayLogger
        self.scores_by_kind: dict[str, dict] = {}  # last validation's {kind: {J, F, JF (percent), n}}
        # The closing score's per-expression records (J, F, TC, the slices' facts), in (video, exp_id)
        # order, gathered from every rank: what pairs two runs (rvosflow.metrics.bootstrap).
        self.records: list[ExpressionRecord] = []

    # ----------------------------------------------------------------- frozen encoders
    @property
    def temporal_factor(self) -> int:
        return encoding.temporal_factor(self.frozen.vae)

    @property
    def paradigm_velocity_sign(self) -> bool:
        """Whether the DiT's output has a velocity sign (what an old-sign checkpoint needs converted)."""
        return self.paradigm.outputs_velocity and self.cfg.flow.start_at_noise_end

    def reset_ema(self) -> None:
        """A fresh EMA of the DiT's current weights (after loading weights into it); None without ``ema.enabled``."""
        if not self.cfg.ema.enabled:
            return
        self.ema = EMAModel(self.transformer.parameters(), decay=self.cfg.ema.decay)
        self.ema.to(dtype=torch.float32)  # the release: float32 shadows whatever the DiT's dtype

    def caption(self, text: str, training: bool) -> str:
        """What the text encoder sees of an expression (``text.clean``, ``text.lowercase``)."""
        return encoding.clean_caption(text, training, self.cfg.text.clean, self.cfg.text.lowercase)

    @torch.no_grad()
    def text_embeddings(self, texts: list[str], training: bool = False) -> torch.Tensor:
        captions = [self.caption(t, training) for t in texts]
        missing = self.text.missing(captions)
        if missing and self.frozen.text_encoder is not None:
            self.text.fill(missing, self.frozen.text_encoder, self.frozen.tokenizer)
        return self.text.embeddings(captions).to(self.device, self.compute_dtype)

    @torch.no_grad()
    def video_posteriors(self, clips: list[torch.Tensor], keys: list) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw-space posterior (mean, std) of equally shaped clips (uint8 [T, H, W, 3]), batched."""
        def compute(pos):
            pixels = encoding.frames_to_pixels(torch.stack([clips[i] for i in pos]).to(self.device))
            mean, std = encoding.vae_posterior(self.frozen.vae, pixels)
            return list(zip(mean, std))

        entries = self.latents.get_many([("video", *k) for k in keys], compute)
        return tuple(torch.stack([e[j] for e in entries]).to(self.device) for j in (0, 1))

    @torch.no_grad()
    def mask_latents(self, masks: list[torch.Tensor], keys: list) -> torch.Tensor:
        normalize = self.cfg.flow.normalize_mask_latent

        def compute(pos):
            pixels = encoding.mask_to_pixels(torch.stack([masks[i] for i in pos]).to(self.device))
            return [(x,) for x in encoding.encode_mask(self.frozen.vae, pixels, normalize=normalize)]

        entries = self.latents.get_many([("mask", normalize, *k) for k in keys], compute)
        return torch.stack([e[0] for e in entries]).to(self.device)

    def start_point(self, mean: torch.Tensor, std: torch.Tensor | None = None, noise: torch.Tensor | None = None):
        """z0 of a posterior (the paradigm decides: SPA in training when ``std`` is given)."""
        return self.paradigm.start_point(mean, std, lambda z: encoding.normalize_latents(self.frozen.vae, z), noise=noise)

    def dit(self, text: torch.Tensor, weights: dict | None = None):
        """``model(x, timestep)``: the DiT with its text condition bound, on its own weights or on
        ``weights`` (``{name: tensor}``, the EMA at inference) without touching its own."""
        def model(x: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
            kwargs = {"hidden_states": x.to(self.compute_dtype), "timestep": timestep, "encoder_hidden_states": text,
                      "return_dict": False}
            if weights is None:
                return self.transformer(**kwargs)[0]
            return torch.func.functional_call(self.transformer, weights, (), kwargs)[0]

        return model

    def inference_dit(self, text: torch.Tensor):
        """The DiT validation, prediction and the trajectory use: on the EMA weights with ``ema.enabled``."""
        return self.dit(text, self._inference_weights)

    # ----------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[checkpoints.CONVENTION_KEY] = checkpoints.DIT_CONVENTION
        if self.ema is not None:
            checkpoint[checkpoints.EMA_KEY] = self.ema.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Lightning calls this before loading the state dict: an old-sign checkpoint is converted;
        the EMA (ema.enabled) is read back, or, for a checkpoint saved without one, starts from its
        trained weights."""
        trainer = getattr(self, "_trainer", None)
        checkpoints.convert_old_sign(checkpoint, self.paradigm_velocity_sign, "ckpt_path",
                                     resuming=trainer is not None and trainer.state.fn == "fit")
        names = [n for n, _ in self.transformer.named_parameters()]
        shadows = checkpoints.ema_shadows(checkpoint, names)  # also drops an older EMA's keys from the state dict
        if self.ema is None:
            return  # ema.enabled=false: the trained weights are scored
        if checkpoint.get(checkpoints.EMA_KEY):
            self.ema.load_state_dict(checkpoint[checkpoints.EMA_KEY])
        elif shadows is not None:
            self.ema.shadow_params = shadows
        else:
            log.warning("checkpoint without EMA weights: the EMA starts from its trained DiT weights")
            state = checkpoints.dit_state(checkpoint)
            self.ema.shadow_params = [state[n].detach().float().clone() for n in names]

    # ----------------------------------------------------------------- training
    def on_fit_start(self) -> None:
        self.frozen.to(self.device)
        if self.ema is not None:
            self.ema.to(self.device)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        # cache keys are content hashes of the pixels (computed by the dataset), never names
        mean, std = self.video_posteriors(list(batch["frames"]), [(k,) for k in batch["frames_key"]])
        z_video = self.start_point(mean, std)
        z_mask = self.mask_latents(list(batch["mask"]), [(k,) for k in batch["mask_key"]])
        pair = self.paradigm.training_pair(z_video, z_mask, generator=None)
        pred = self.dit(self.text_embeddings(batch["caption"], training=True))(pair.model_input, pair.timestep)
        loss = F.mse_loss(pred.float(), pair.target.float())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite training loss {loss.item()} at step {self.global_step}")
        # the progress bar's; MLflow's train/loss is each logging interval's mean (trainer.TrainCurves)
        self.log("train/loss", loss, prog_bar=True, logger=False, batch_size=len(batch["video_id"]))
        return loss

    def optimizer_step(self, *args, **kwargs) -> None:
        """The optimizer's step, then the EMA's (once per optimizer step, also with gradient accumulation)."""
        super().optimizer_step(*args, **kwargs)
        if self.ema is not None:
            self.ema.step(self.transformer.parameters())

    def configure_optimizers(self):
        o = self.cfg.optim
        optimizer = torch.optim.AdamW([p for p in self.transformer.parameters() if p.requires_grad],
                                      lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
        if o.schedule == "constant":
            return optimizer
        if o.schedule == "multistep":  # the release's main.py: MultiStepLR stepped after every epoch
            steps = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(o.milestones), gamma=o.gamma)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": steps, "interval": "epoch"}}
        # cosine: lr * (1 + cos(pi * step / total)) / 2 over the run's optimizer steps
        total = max(1, int(self.trainer.estimated_stepping_batches))
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": cosine, "interval": "step"}}

    # ----------------------------------------------------------------- inference
    def on_validation_start(self) -> None:
        """The EMA as the DiT's own dtypes, for functional calls during inference: the trained weights
        stay untouched (a checkpoint saved meanwhile holds them), and nothing has to be restored."""
        self.frozen.to(self.device)
        self.overlays, self.records = [], []
        if self.ema is not None:
            self.ema.to(self.device)
            self._inference_weights = {n: s.to(p.dtype) for (n, p), s in
                                       zip(self.transformer.named_parameters(), self.ema.shadow_params)}

    def on_validation_end(self) -> None:
        self._inference_weights = None

    on_predict_start, on_predict_end = on_validation_start, on_validation_end

    @torch.no_grad()
    def predict_masks(self, samples: list[dict]) -> list[torch.Tensor]:
        """bool [T, H, W] at each sample's original resolution, for whole videos (or windows of
        ``window_frames``). Samples whose videos share a shape go through the DiT and the VAE together."""
        preds: list[torch.Tensor | None] = [None] * len(samples)
        groups: dict[tuple, list[int]] = {}
        for i, s in enumerate(samples):
            groups.setdefault(tuple(s["frames"].shape), []).append(i)
        for members in groups.values():
            for i, pred in zip(members, self._predict_same_shape([samples[i] for i in members])):
                preds[i] = pred
        return preds

    def _predict_same_shape(self, samples: list[dict]) -> list[torch.Tensor]:
        model = self.inference_dit(self.text_embeddings([s["caption"] for s in samples]))
        generator = torch.Generator(device=self.device).manual_seed(self.cfg.seed)
        num_frames = len(samples[0]["frames"])
        fields = []
        for start, stop in windows(num_frames, self.window_frames or num_frames):
            n = padded_frame_count(stop - start, self.temporal_factor)  # the last frame repeated, as the release
            clips = [pad_frames(s["frames"][start:stop], n) for s in samples]
            mean, _ = self.video_posteriors(clips, [(s["frames_key"], "window", start, stop, n) for s in samples])
            z_mask = self.paradigm.predict(model, self.start_point(mean), generator)
            field = encoding.mask_field(self.frozen.vae, z_mask.float(), normalized=self.cfg.flow.normalize_mask_latent)
            fields.append(field[:, : stop - start].cpu())
        fields = torch.cat(fields, dim=1)
        logits = encoding.is_logit_decoder(self.frozen.vae)
        return [encoding.field_to_masks(f, s["orig_size"], self.cfg.model.mask_rule, logits)
                for f, s in zip(fields, samples)]

    def validation_step(self, samples: list[dict], batch_idx: int) -> None:
        for sample, pred in zip(samples, self.predict_masks(samples)):
            if sample["target"] is None:
                raise ValueError(f"validation split has no masks (video {sample['video_id']})")
            self.val_metric.update(pred, sample["target"], kinds=[sample.get("kind", "")])
            if self.metric_prefix == "final":
                self.records.append(expression_record(pred, sample["target"], sample["video_id"], sample["exp_id"],
                                                      sample.get("kind", "")))
            if len(self.overlays) < self.cfg.num_overlays and sample["video_id"] not in {o["video_id"] for o in self.overlays}:
                j, f = jandf_per_expression(pred, sample["target"])
                keep = ("video_id", "exp_id", "caption", "target", "frames", "frames_key")
                self.overlays.append({**{k: sample[k] for k in keep}, "pred": pred, "JF": 50.0 * float(j + f)})

    def on_validation_epoch_end(self) -> None:
        scores = self.val_metric.compute()
        for name, value in scores.items():
            if not name.startswith("n/"):  # J, F, JF and JF/<kind> etc., in percent like the paper's tables
                # final/* reach MLflow through tracking.RunRecords, linked to the scored data set and the model
                self.log(f"{self.metric_prefix}/{name}", 100.0 * value.float(), logger=self.metric_prefix != "final")
        self.scores_by_kind = by_kind(scores)
        self.val_metric.reset()
        if self.metric_prefix == "final":
            self.records = gather_records(self.records)
            tc = flat_scores(self.records)  # every rank holds all records, so every rank logs the same
            for name in [k for k in tc if k.startswith("TC") and not math.isnan(tc[k])]:
                # REM's temporal consistency, lower is better; to MLflow through tracking.RunRecords like final/JF
                self.log(f"final/{name}", 100.0 * tc[name], logger=False)

    @torch.no_grad()
    def trajectory(self, sample: dict) -> dict | None:
        """The flow from start point to mask for one expression, as pictures: the states z_t that
        ``trajectory_steps`` Euler steps visit, decoded by the VAE (middle frame of the first
        window). None for the one-step paradigms, which have no path to show."""
        steps = self.cfg.trajectory_steps
        if steps < 1 or not self.paradigm.multistep:
            return None
        frames = sample["frames"][: self.window_frames or len(sample["frames"])]
        clip = pad_frames(frames, padded_frame_count(len(frames), self.temporal_factor))
        mean, _ = self.video_posteriors([clip], [(sample["frames_key"], "window", 0, len(frames), len(clip))])
        model = self.inference_dit(self.text_embeddings([sample["caption"]]))
        channels = mean.shape[1]
        states = []

        def recording(x, timestep):  # the DiT's input starts with z_t (then the video, with DVI)
            states.append(x[:, :channels].float())
            return model(x, timestep)

        generator = torch.Generator(device=self.device).manual_seed(self.cfg.seed)
        states.append(self.paradigm.predict(recording, self.start_point(mean), generator, steps=steps).float())
        times = self.paradigm.inference_grid(steps).tolist()
        middle = len(frames) // 2
        normalized = self.cfg.flow.normalize_mask_latent
        pictures = []
        for t, z in zip(times, states):
            # z_t mixes the normalised start latent with the (raw, as in the release) mask latent:
            # un-normalise by the same mix so both ends decode to what they are.
            raw = z if normalized else t * z + (1 - t) * encoding.denormalize_latents(self.frozen.vae, z)
            pixels = encoding.decode_video(self.frozen.vae, raw, normalized=normalized)
            pixels = pixels.expand(-1, 3, -1, -1, -1)  # a tuned decoder's 1 channel (clamped logits) as grey
            pictures.append(((pixels[0, :, middle].float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu())
        target = sample.get("target")
        return {"times": times, "pictures": pictures, "caption": sample["caption"], "video_id": sample["video_id"],
                "exp_id": sample["exp_id"], "frame": frames[middle].cpu(),
                "target": None if target is None else resize_masks(target[middle: middle + 1].float(), pictures[0].shape[:2])[0]}

    def predict_step(self, samples: list[dict], batch_idx: int) -> list[dict]:
        return [
            {k: s[k] for k in ("video_id", "exp_id", "frame_names")} | {"pred": pred}
            for s, pred in zip(samples, self.predict_masks(samples))
        ]


def gather_records(records: list[ExpressionRecord]) -> list[ExpressionRecord]:
    """Every rank's records, once each (a distributed sampler pads the split with repeats), by
    (video, exp_id)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        parts = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(parts, records)
        records = [r for part in parts for r in part]
    return sorted({r.key: r for r in reversed(records)}.values(), key=lambda r: r.key)
