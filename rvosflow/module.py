"""FlowRVSModule: one ablation configuration as a LightningModule.

A thin layer: the paradigm object says what to feed the DiT and how to infer; encoding
conventions live in ``rvosflow.models.encoding``; J&F in ``rvosflow.metrics``. Only the DiT
trains. The frozen VAE and text encoder are kept out of the module's state dict (checkpoints
hold the DiT alone); VAE outputs are cached per clip when ``cache_latents`` is on, text embeddings
per caption in a ``TextCache``. ``rvosflow.train.run`` fills that cache before training and builds
the module without a text encoder, so none is ever on the device; a module given one encodes the
captions it misses on the fly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import lightning as L
import torch
import torch.nn.functional as F

from rvosflow.data.transforms import pad_frames, resize_masks, padded_frame_count, windows
from rvosflow.latents import LatentCache
from rvosflow.metrics import JandF, by_kind
from rvosflow.metrics.functional import jandf_per_expression
from rvosflow.models import encoding
from rvosflow.models.dit import build_dit, negate_output
from rvosflow.paradigms import Paradigm
from rvosflow.text_cache import TextCache

log = logging.getLogger(__name__)

LR_SCHEDULES = ("constant", "cosine", "multistep")

# Checkpoints record the sign convention of their DiT's output (DESIGN §3). "wan": the DiT emits
# Wan's dz/dsigma (noise - data; z_video - z_mask for video2mask), as the release and WI priors do.
# A checkpoint without the tag was written before the switch, when velocity paradigms trained the
# DiT on the paper's +v: it is converted exactly on load (models.dit.negate_output).
CONVENTION_KEY = "dit_convention"
DIT_CONVENTION = "wan"
# With ema.enabled every checkpoint holds the EMA (diffusers' ``EMAModel.state_dict()``, shadows in
# diffusers' parameter order) under this key. Checkpoints written before that held the EMA as a
# second state dict under EMA_PREFIX, read back by ``ema_shadows_by_name``.
EMA_KEY = "ema"
EMA_PREFIX = "ema_transformer."


def ema_shadows_by_name(ema_state: dict, names: list[str]) -> dict[str, torch.Tensor]:
    """A checkpoint's ``EMAModel.state_dict()`` as ``{diffusers name: shadow}`` (its list follows
    the DiT's ``parameters()`` order, which ``names`` gives)."""
    shadows = ema_state["shadow_params"]
    if len(shadows) != len(names):
        raise ValueError(f"EMA state: expected {len(names)} shadow tensors, found {len(shadows)}")
    return dict(zip(names, shadows))


def convert_old_convention(state: dict, paradigm: Paradigm, prefixes=("transformer.",)) -> tuple[dict, bool]:
    """``state`` of an untagged (pre-"wan") checkpoint in Wan's sign; True when it was negated.

    Only a velocity paradigm under the release's time mapping changes sign (with
    ``flow.start_at_noise_end=false`` dz/dsigma = +v, and onestep_mask's output is a latent)."""
    if not paradigm.outputs_velocity or not paradigm.settings.start_at_noise_end:
        return state, False
    for prefix in prefixes:
        if f"{prefix}proj_out.weight" in state:
            state = negate_output(state, prefix)
    return state, True


@dataclass(frozen=True)
class OptimSettings:
    lr: float = 6e-5
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 5e-4
    schedule: str = "constant"  # the paper's Table 4: no schedule, no warm-up; cosine decays to 0
    milestones: tuple[int, ...] = (30,)  # multistep (the release's MultiStepLR): epochs where lr *= gamma
    gamma: float = 0.9


def start_point(vae, mean: torch.Tensor, std: torch.Tensor | None, augment: bool,
                generator: torch.Generator | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
    """The normalised video latent z0. SPA (``augment``) draws z0 ~ N(mean, std^2) from the VAE
    posterior instead of taking its mean (``mean + std * noise``, noise drawn unless given), then
    normalises it like every latent (paper App. D.2; the release's ``latent_dist.sample()``)."""
    if augment:
        if noise is None:
            noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        mean = mean + std * noise
    return encoding.normalize_latents(vae, mean)


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
    def __init__(
        self,
        bundle,
        paradigm: Paradigm,
        weight_init: bool = True,
        optim: OptimSettings = OptimSettings(),
        text_max_length: int = 256,
        text_clean: str = "release",
        text_lowercase: str = "train",
        mask_rule: str = "release",
        gradient_checkpointing: bool = False,
        compute_dtype: torch.dtype | None = None,
        text_cache: TextCache | None = None,
        normalize_mask_latent: bool = False,
        window_frames: int | None = None,
        cache_latents: bool = True,
        latent_cache_dir: str | None = None,
        num_overlays: int = 4,
        trajectory_steps: int = 5,
        seed: int = 0,
        run_config: dict | None = None,
        ema_decay: float | None = None,
    ):
        super().__init__()
        # The resolved run config is stored with checkpoints so they can be rebuilt. Not logged by
        # Lightning (logger=False): train.run logs it once as flat MLflow params.
        self.save_hyperparameters({"run_config": run_config or {}}, logger=False)
        self.paradigm = paradigm
        self.frozen = FrozenParts(bundle.vae, bundle.text_encoder, bundle.tokenizer)
        latent_channels = bundle.vae.config.z_dim
        self.transformer = build_dit(
            bundle.transformer, paradigm.input_channels(latent_channels), weight_init, seed
        )
        if gradient_checkpointing:  # each block's activations are recomputed in backward
            self.transformer.enable_gradient_checkpointing()
        # EMA of the DiT weights, as the release keeps it: diffusers' EMAModel (its warm-up decay
        # min(decay, (1 + k) / (10 + k)) at step k + 1) with float32 shadows, stepped after every
        # optimizer step; validation and prediction use it; checkpoints carry its state.
        self.ema_decay = ema_decay
        self.ema = None
        self.reset_ema()
        self._inference_weights: dict | None = None  # the EMA as the DiT's dtypes, while inferring
        self.optim = optim
        self.text_max_length = text_max_length
        self.text_clean, self.text_lowercase, self.mask_rule = text_clean, text_lowercase, mask_rule
        # What the DiT computes in (its weights' dtype, or FSDP's param_dtype): latents and text
        # embeddings enter it in this dtype, so its residual stream and saved activations are too.
        self.compute_dtype = compute_dtype or self.transformer.patch_embedding.weight.dtype
        self.text = text_cache if text_cache is not None else TextCache(None, text_max_length)
        self.normalize_mask_latent = normalize_mask_latent
        # null = whole videos in one pass (the release); a number = windows of that many frames (memory)
        self.window_frames = None if window_frames is None else padded_frame_count(window_frames, self.temporal_factor)
        self.latents = LatentCache(latent_cache_dir, enabled=cache_latents)
        self.num_overlays = num_overlays
        self.trajectory_steps = trajectory_steps
        self.seed = seed
        self.val_metric = JandF()
        # "val" during fit; train.run sets "final" for the closing full-split score, so the
        # in-training curve and the reported number are two metrics, not one curve with a kink.
        self.metric_prefix = "val"
        self.overlays: list[dict] = []  # one expression per video, filled during validation, read by OverlayLogger
        self.scores_by_kind: dict[str, dict] = {}  # last validation's {kind: {J, F, JF (percent), n}}

    # ----------------------------------------------------------------- frozen encoders
    @property
    def temporal_factor(self) -> int:
        return encoding.temporal_factor(self.frozen.vae)

    def reset_ema(self) -> None:
        """A fresh EMA of the DiT's current weights (after loading weights into it); None without ``ema.enabled``."""
        if self.ema_decay is None:
            return
        from diffusers.training_utils import EMAModel

        self.ema = EMAModel(self.transformer.parameters(), decay=self.ema_decay)
        self.ema.to(dtype=torch.float32)  # the release: float32 shadows whatever the DiT's dtype

    def caption(self, text: str, training: bool) -> str:
        """What the text encoder sees of an expression (``text.clean``, ``text.lowercase``)."""
        return encoding.clean_caption(text, training, self.text_clean, self.text_lowercase)

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
        def compute(pos):
            pixels = encoding.mask_to_pixels(torch.stack([masks[i] for i in pos]).to(self.device))
            z = encoding.encode_mask(self.frozen.vae, pixels, normalize=self.normalize_mask_latent)
            return [(x,) for x in z]

        entries = self.latents.get_many([("mask", self.normalize_mask_latent, *k) for k in keys], compute)
        return torch.stack([e[0] for e in entries]).to(self.device)

    def start_latent(self, mean: torch.Tensor, std: torch.Tensor | None, augment: bool,
                     noise: torch.Tensor | None = None) -> torch.Tensor:
        return start_point(self.frozen.vae, mean, std, augment, noise=noise)

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

    def _start_inference(self) -> None:
        """The EMA as the DiT's own dtypes, for functional calls during inference: the trained weights
        stay untouched (a checkpoint saved meanwhile holds them), and nothing has to be restored."""
        self.frozen.to(self.device)
        self.overlays = []
        if self.ema is not None:
            self.ema.to(self.device)
            self._inference_weights = {n: s.to(p.dtype) for (n, p), s in
                                       zip(self.transformer.named_parameters(), self.ema.shadow_params)}

    def _end_inference(self) -> None:
        self._inference_weights = None

    # ----------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[CONVENTION_KEY] = DIT_CONVENTION
        if self.ema is not None:
            checkpoint[EMA_KEY] = self.ema.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Lightning calls this before loading the state dict: an old-sign checkpoint is converted;
        the EMA (ema.enabled) is read back -- from an older checkpoint's second state dict too --
        or, for a checkpoint saved without one, starts from its trained weights."""
        self.convert_convention(checkpoint)
        state = checkpoint["state_dict"]
        old = {k[len(EMA_PREFIX):]: state.pop(k) for k in [k for k in state if k.startswith(EMA_PREFIX)]}
        if self.ema is None:
            return  # ema.enabled=false: the trained weights are scored
        names = [n for n, _ in self.transformer.named_parameters()]
        if checkpoint.get(EMA_KEY):
            self.ema.load_state_dict(checkpoint[EMA_KEY])
        elif old:
            self.ema.shadow_params = [old[n].float() for n in names]
        else:
            log.warning("checkpoint without EMA weights: the EMA starts from its trained DiT weights")
            self.ema.shadow_params = [state["transformer." + n].detach().float().clone() for n in names]

    def convert_convention(self, checkpoint: dict, key: str = "ckpt_path") -> None:
        """An untagged (old-sign) Lightning checkpoint's DiT converted in place to Wan's sign, for
        ``ckpt_path`` (validate, predict; resuming is refused) and ``init_from`` alike."""
        tag = checkpoint.get(CONVENTION_KEY)
        if tag == DIT_CONVENTION:
            return
        if tag is not None:
            raise ValueError(f"{key}: expected a DiT in the {DIT_CONVENTION!r} convention, found {tag!r}")
        trainer = getattr(self, "_trainer", None)
        if trainer is not None and trainer.state.fn == "fit":
            raise ValueError(f"{key}: an untagged checkpoint (written before the DiT switched to Wan's sign) "
                             "cannot resume training (its optimizer moments are in the old sign); start from it "
                             "with init_from=<path> instead")
        checkpoint["state_dict"], negated = convert_old_convention(
            checkpoint.get("state_dict", {}), self.paradigm, ("transformer.", EMA_PREFIX))
        log.warning("%s: checkpoint without a %r tag: written before the DiT switched to Wan's sign; %s",
                    key, CONVENTION_KEY, "its output layer (proj_out) was negated to convert it exactly" if negated
                    else f"nothing to convert for {self.paradigm.name} (its DiT output has no velocity sign here)")

    # ----------------------------------------------------------------- training
    def on_fit_start(self) -> None:
        self.frozen.to(self.device)
        if self.ema is not None:
            self.ema.to(self.device)

    def on_validation_start(self) -> None:
        self._start_inference()

    def on_validation_end(self) -> None:
        self._end_inference()

    on_predict_start, on_predict_end = on_validation_start, on_validation_end

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        # cache keys are content hashes of the pixels (computed by the dataset), never names
        mean, std = self.video_posteriors(list(batch["frames"]), [(k,) for k in batch["frames_key"]])
        z_video = self.start_latent(mean, std, self.paradigm.settings.spa)
        z_mask = self.mask_latents(list(batch["mask"]), [(k,) for k in batch["mask_key"]])
        pair = self.paradigm.training_pair(z_video, z_mask, generator=None)
        pred = self.dit(self.text_embeddings(batch["caption"], training=True))(pair.model_input, pair.timestep)
        loss = F.mse_loss(pred.float(), pair.target.float())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite training loss {loss.item()} at step {self.global_step}")
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["video_id"]))
        return loss

    def optimizer_step(self, *args, **kwargs) -> None:
        """The optimizer's step, then the EMA's (once per optimizer step, also with gradient accumulation)."""
        super().optimizer_step(*args, **kwargs)
        if self.ema is not None:
            self.ema.step(self.transformer.parameters())

    def configure_optimizers(self):
        o = self.optim
        optimizer = torch.optim.AdamW(
            [p for p in self.transformer.parameters() if p.requires_grad],
            lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay,
        )
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
    @torch.no_grad()
    def predict_masks(self, samples: list[dict]) -> list[torch.Tensor]:
        """bool [T, H, W] at each sample's original resolution, for whole videos.

        Samples whose videos share a shape go through the DiT and the VAE decoder together.
        """
        preds: list[torch.Tensor | None] = [None] * len(samples)
        groups: dict[tuple, list[int]] = {}
        for i, s in enumerate(samples):
            groups.setdefault(tuple(s["frames"].shape), []).append(i)
        for members in groups.values():
            for i, pred in zip(members, self._predict_same_shape([samples[i] for i in members])):
                preds[i] = pred
        return preds

    def _predict_same_shape(self, samples: list[dict]) -> list[torch.Tensor]:
        text = self.text_embeddings([s["caption"] for s in samples])
        model = self.inference_dit(text)
        generator = torch.Generator(device=self.device).manual_seed(self.seed)
        num_frames = len(samples[0]["frames"])
        fields = []
        for start, stop in windows(num_frames, self.window_frames or num_frames):
            n = padded_frame_count(stop - start, self.temporal_factor)  # the last frame repeated, as the release
            clips = [pad_frames(s["frames"][start:stop], n) for s in samples]
            mean, _ = self.video_posteriors(clips, [(s["frames_key"], "window", start, stop, n) for s in samples])
            z_mask = self.paradigm.predict(model, self.start_latent(mean, None, False), generator)
            field = encoding.mask_field(self.frozen.vae, z_mask.float(), normalized=self.normalize_mask_latent)
            fields.append(field[:, : stop - start].cpu())
        fields = torch.cat(fields, dim=1)
        logits = encoding.is_logit_decoder(self.frozen.vae)
        return [encoding.field_to_masks(f, s["orig_size"], self.mask_rule, logits) for f, s in zip(fields, samples)]

    def validation_step(self, samples: list[dict], batch_idx: int) -> None:
        for sample, pred in zip(samples, self.predict_masks(samples)):
            if sample["target"] is None:
                raise ValueError(f"validation split has no masks (video {sample['video_id']})")
            self.val_metric.update(pred, sample["target"], kinds=[sample.get("kind", "")])
            if len(self.overlays) < self.num_overlays and sample["video_id"] not in {o["video_id"] for o in self.overlays}:
                j, f = jandf_per_expression(pred, sample["target"])
                keep = ("video_id", "exp_id", "caption", "target", "frames", "frames_key")
                self.overlays.append({**{k: sample[k] for k in keep}, "pred": pred, "JF": 50.0 * float(j + f)})

    def on_validation_epoch_end(self) -> None:
        scores = self.val_metric.compute()
        for name, value in scores.items():
            if not name.startswith("n/"):  # J, F, JF and JF/<kind> etc., in percent like the paper's tables
                self.log(f"{self.metric_prefix}/{name}", 100.0 * value.float())
        self.scores_by_kind = by_kind(scores)
        self.val_metric.reset()

    @torch.no_grad()
    def trajectory(self, sample: dict) -> dict | None:
        """The flow from start point to mask for one expression, as pictures: the states z_t that
        ``trajectory_steps`` Euler steps visit, decoded by the VAE (middle frame of the first
        window). None for the one-step paradigms, which have no path to show."""
        if self.trajectory_steps < 1 or not self.paradigm.multistep:
            return None
        from dataclasses import replace

        from rvosflow.paradigms import build_paradigm

        settings = replace(self.paradigm.settings, steps=self.trajectory_steps)
        paradigm = build_paradigm(self.paradigm.name, settings)
        frames = sample["frames"][: self.window_frames or len(sample["frames"])]
        clip = pad_frames(frames, padded_frame_count(len(frames), self.temporal_factor))
        mean, _ = self.video_posteriors([clip], [(sample["frames_key"], "window", 0, len(frames), len(clip))])
        model = self.inference_dit(self.text_embeddings([sample["caption"]]))
        channels = mean.shape[1]
        states = []

        def recording(x, timestep):  # the DiT's input starts with z_t (then the video, with DVI)
            states.append(x[:, :channels].float())
            return model(x, timestep)

        generator = torch.Generator(device=self.device).manual_seed(self.seed)
        states.append(paradigm.predict(recording, self.start_latent(mean, None, False), generator).float())
        times = paradigm.inference_grid().tolist()
        middle = len(frames) // 2
        pictures = []
        for t, z in zip(times, states):
            # z_t mixes the normalised start latent with the (raw, as in the release) mask latent:
            # un-normalise by the same mix so both ends decode to what they are.
            raw = z if self.normalize_mask_latent else t * z + (1 - t) * encoding.denormalize_latents(self.frozen.vae, z)
            pixels = encoding.decode_video(self.frozen.vae, raw, normalized=self.normalize_mask_latent)
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
