"""The release's text / pixel / latent conventions, in one place (docs/design.md §3).

Every tensor layout follows diffusers' Wan classes: pixels and latents are ``[B, C, T, H, W]``.

* Captions (``text.*``): cleaned as the release's ``prompt_clean`` (whitespace runs collapsed and
  the ends stripped, HTML entities unescaped, every ``"`` and ``\\`` deleted), lower-cased for
  training only (the release's MeViS dataset does it; its inference does not), tokenised to a
  fixed length (256 in the current release, 64 in the first), UMT5 embeddings past the true length
  zeroed (as ``WanPipeline`` and the release do).
* Video frames: uint8 -> [-1, 1]. Masks: {0, 1} -> 3 replicated channels -> [-1, 1].
* Latents: the VAE posterior mean. The video latent is normalised with the VAE config's
  ``latents_mean`` / ``latents_std`` (``(z - mean) / std``); the release leaves the mask latent
  raw (REM normalises both), hence ``encode_mask(normalize=False)`` by default.
* Masks (``model.mask_rule``): the decoder's output as a *mask field* whose positive part is the
  mask -- a tuned decoder's 1-channel logits (``rvosflow.decoder``), or the mean of a frozen
  decoder's 3 channels in [-1, 1] -- brought to the frame size and thresholded. ``release``: the
  field clamped to [-1, 1] (diffusers' ``decode`` does it), resized bilinearly without antialias
  (``align_corners=False``), then ``> 0`` (= sigmoid > 0.5, = (x + 1) / 2 > 0.5). ``antialias``:
  the field as a probability (sigmoid of the unclamped logits, or (x + 1) / 2), an area-weighted
  (antialiased) resize, then ``> 0.5``.
* Shapes: ``1 + 4k`` frames (the causal VAE silently drops the rest); H, W multiples of
  ``spatial_multiple(vae, transformer)`` = VAE spatial factor x DiT patch size (16 for Wan2.1).
"""

from __future__ import annotations

import html
import re
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

_WS = re.compile(r"\s+")
_QUOTES = re.compile(r'["\\]+')
TEXT_CLEANINGS = ("release", "whitespace")
LOWERCASE = ("train", "always", "never")


# ----------------------------------------------------------------------------- text
def normalize_caption(text: str) -> str:
    """Lower-case and collapse runs of whitespace to one space (stripped at both ends)."""
    return _WS.sub(" ", str(text)).strip().lower()


def prompt_clean(text: str) -> str:
    """The release's ``models/text.py`` ``prompt_clean``, in its order: whitespace runs become one
    space and the ends are stripped; ``html.unescape``; every ``"`` and ``\\`` is deleted (so a
    ``\\`` between spaces leaves two spaces, and ``&quot;`` disappears)."""
    return _QUOTES.sub("", html.unescape(_WS.sub(" ", str(text)).strip()))


def clean_caption(text: str, training: bool, clean: str = "release", lowercase: str = "train") -> str:
    """The caption the text encoder sees (``text.clean``, ``text.lowercase``). The release lower-cases
    and collapses whitespace in its training dataset, then applies ``prompt_clean`` to every caption,
    training or not; ``lowercase=train`` is that. (The tiny bundle's tokenizer lower-cases by itself;
    the real UMT5 tokenizer does not.)"""
    if clean not in TEXT_CLEANINGS:
        raise ValueError(f"text.clean: expected one of {', '.join(TEXT_CLEANINGS)}, got {clean!r}")
    if lowercase not in LOWERCASE:
        raise ValueError(f"text.lowercase: expected one of {', '.join(LOWERCASE)}, got {lowercase!r}")
    text = str(text)
    if lowercase == "always" or (lowercase == "train" and training):
        text = _WS.sub(" ", text).strip().lower()
    return prompt_clean(text) if clean == "release" else _WS.sub(" ", text).strip()


def tokenize(tokenizer, captions: str | Sequence[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Captions (already cleaned: :func:`clean_caption`) -> ``(input_ids, attention_mask)``, both
    ``[B, max_length]`` (padded to ``max_length``, truncated)."""
    if isinstance(captions, str):
        captions = [captions]
    enc = tokenizer(list(captions), padding="max_length", max_length=max_length,
                    truncation=True, add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
    return enc.input_ids, enc.attention_mask


def encode_text(text_encoder, tokenizer, captions: str | Sequence[str], max_length: int = 256,
                grad: bool = False) -> torch.Tensor:
    """UMT5 embeddings ``[B, max_length, D]`` of cleaned captions, every position past the true length 0.

    Runs under ``torch.no_grad()`` (the text encoder is frozen in every experiment) unless
    ``grad=True`` (only the T2V pretraining of the tiny bundle trains it).
    """
    ids, mask = tokenize(tokenizer, captions, max_length)
    dev = next(text_encoder.parameters()).device
    ids, mask = ids.to(dev), mask.to(dev)
    with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
        hidden = text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        return hidden * mask.unsqueeze(-1).to(hidden.dtype)


# ----------------------------------------------------------------------------- pixels
def _as_tensor(x) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else torch.as_tensor(x)


def frames_to_pixels(frames, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 frames ``[B, T, H, W, 3]`` (or one clip ``[T, H, W, 3]``) -> ``[B, 3, T, H, W]`` in [-1, 1]."""
    x = _as_tensor(frames)
    if x.ndim == 4:
        x = x.unsqueeze(0)
    if x.ndim != 5 or x.shape[-1] != 3:
        raise ValueError(f"frames must be [B,T,H,W,3] or [T,H,W,3], got {tuple(x.shape)}")
    return (x.to(dtype) / 127.5 - 1.0).permute(0, 4, 1, 2, 3).contiguous()


def pixels_to_frames(pixels: torch.Tensor) -> torch.Tensor:
    """``[B, 3, T, H, W]`` in [-1, 1] -> uint8 ``[B, T, H, W, 3]`` (clamped, rounded)."""
    x = ((pixels.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 4, 1).contiguous()


def mask_to_pixels(masks, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Binary masks ``[B, T, H, W]`` (or one clip ``[T, H, W]``; bool or 0/1) -> ``[B, 3, T, H, W]`` in {-1, 1}."""
    m = _as_tensor(masks)
    if m.ndim == 3:
        m = m.unsqueeze(0)
    if m.ndim != 4:
        raise ValueError(f"masks must be [B,T,H,W] or [T,H,W], got {tuple(m.shape)}")
    m = (m > 0.5) if m.dtype != torch.bool else m
    return (m.to(dtype) * 2.0 - 1.0).unsqueeze(1).expand(-1, 3, -1, -1, -1).contiguous()


# ----------------------------------------------------------------------------- shapes
def spatial_multiple(vae, transformer=None) -> int:
    """H and W must be multiples of this: VAE spatial factor x DiT spatial patch (16 for Wan2.1)."""
    f = int(vae.config.scale_factor_spatial or 8)
    return f * (int(transformer.config.patch_size[1]) if transformer is not None else 1)


def temporal_factor(vae) -> int:
    """Frames per latent frame after the first (4 for Wan2.1): ``T_lat = 1 + (T - 1) // factor``."""
    return int(vae.config.scale_factor_temporal or 4)


def valid_num_frames(t: int, factor: int = 4) -> int:
    """The largest ``1 + factor*k <= t`` (what the causal VAE actually encodes)."""
    if t < 1:
        raise ValueError("need at least one frame")
    return 1 + factor * ((t - 1) // factor)


def latent_shape(vae, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
    """``(C, T_lat, H_lat, W_lat)`` of the latent of a ``num_frames x height x width`` clip."""
    s, f = int(vae.config.scale_factor_spatial or 8), temporal_factor(vae)
    return int(vae.config.z_dim), 1 + (num_frames - 1) // f, height // s, width // s


# ----------------------------------------------------------------------------- latents
def _stats(vae, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    c = z.shape[1]
    mean = torch.tensor(vae.config.latents_mean, dtype=z.dtype, device=z.device).view(1, c, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std, dtype=z.dtype, device=z.device).view(1, c, 1, 1, 1)
    return mean, std


def normalize_latents(vae, z: torch.Tensor) -> torch.Tensor:
    """Raw VAE latent -> normalised: ``(z - latents_mean) / latents_std`` per channel."""
    mean, std = _stats(vae, z)
    return (z - mean) / std


def denormalize_latents(vae, z: torch.Tensor) -> torch.Tensor:
    """Normalised latent -> raw VAE latent: ``z * latents_std + latents_mean``."""
    mean, std = _stats(vae, z)
    return z * std + mean


def _vae_dtype(vae) -> torch.dtype:
    return next(vae.parameters()).dtype


def vae_posterior(vae, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean, std)`` of the VAE posterior in the RAW latent space, each ``[B, z_dim, T_lat, H_lat, W_lat]``.

    Gradients flow if enabled by the caller (the encoder is frozen in experiments: wrap in no_grad).
    """
    dist = vae.encode(pixels.to(_vae_dtype(vae))).latent_dist
    return dist.mean, dist.std


def encode_video(vae, pixels: torch.Tensor) -> torch.Tensor:
    """Video pixels ``[B, 3, T, H, W]`` in [-1, 1] -> NORMALISED posterior mean."""
    mean, _ = vae_posterior(vae, pixels)
    return normalize_latents(vae, mean)


def encode_mask(vae, pixels: torch.Tensor, normalize: bool = False) -> torch.Tensor:
    """Mask pixels (``mask_to_pixels``) -> posterior mean; RAW by default as in the release.

    ``normalize=True`` applies the video statistics too (REM's convention).
    """
    mean, _ = vae_posterior(vae, pixels)
    return normalize_latents(vae, mean) if normalize else mean


def decode_video(vae, latents: torch.Tensor, normalized: bool = True) -> torch.Tensor:
    """Latents -> pixels ``[B, 3, T, H, W]`` in [-1, 1] (the VAE clamps). ``normalized``: the input's space."""
    z = denormalize_latents(vae, latents) if normalized else latents
    return vae.decode(z.to(_vae_dtype(vae))).sample


def is_logit_decoder(vae) -> bool:
    """True for a tuned mask decoder: its last conv gives 1 channel of logits (docs/design.md §3 "Decoder")."""
    return int(vae.decoder.conv_out.out_channels) == 1


def decode_raw(vae, z: torch.Tensor) -> torch.Tensor:
    """RAW latents -> the decoder's output ``[B, out_channels, T, H, W]`` *unclamped*.

    ``AutoencoderKLWan.decode`` clamps its output to [-1, 1], right for pixels but not for a logit
    head nor for training (the clamp has zero gradient outside [-1, 1]: a decoder that overshoots
    would never be corrected). This is the same frame-by-frame causal decode
    (``AutoencoderKLWan._decode`` without tiling or the clamp), differentiable; used by the tuned
    decoder's training and masks and by the tiny bundle's VAE pretraining.
    """
    z = z.to(_vae_dtype(vae))
    vae.clear_cache()
    try:
        x = vae.post_quant_conv(z)
        outs = []
        for i in range(x.shape[2]):
            vae._conv_idx = [0]
            outs.append(vae.decoder(x[:, :, i:i + 1], feat_cache=vae._feat_map, feat_idx=vae._conv_idx,
                                    first_chunk=(i == 0)))
        out = torch.cat(outs, dim=2)
        if vae.config.patch_size is not None:  # Wan2.2's patchified VAE
            out = unpatchify(out, patch_size=vae.config.patch_size)
        return out
    finally:
        vae.clear_cache()


MASK_RULES = ("release", "antialias")


def mask_field(vae, latents: torch.Tensor, normalized: bool = False) -> torch.Tensor:
    """The decoder's output ``[B, T, H, W]`` (float32) whose positive part is the mask: a tuned
    decoder's logits (unclamped), or the mean of a frozen decoder's 3 channels in [-1, 1] (its
    ``decode`` clamps). ``normalized`` says whether ``latents`` are in the normalised space
    (default False: the release's mask latents are raw)."""
    if is_logit_decoder(vae):
        z = denormalize_latents(vae, latents) if normalized else latents
        return decode_raw(vae, z).float()[:, 0]
    return decode_video(vae, latents, normalized=normalized).float().mean(dim=1)


def field_to_masks(field: torch.Tensor, size: tuple[int, int], rule: str = "release", logits: bool = True) -> torch.Tensor:
    """A :func:`mask_field` ``[T, h, w]`` -> bool masks ``[T, H, W]`` at ``size`` by ``rule``
    (``model.mask_rule``, see the module doc). ``logits``: the field is a tuned decoder's logits
    (else a frozen decoder's mean channel in [-1, 1])."""
    if rule not in MASK_RULES:
        raise ValueError(f"model.mask_rule: expected one of {', '.join(MASK_RULES)}, got {rule!r}")
    x = field.float()[:, None]
    if rule == "release":
        x = x.clamp(-1.0, 1.0)
        if tuple(x.shape[-2:]) != tuple(size):
            x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False, antialias=False)
        return x[:, 0] > 0
    p = torch.sigmoid(x) if logits else (x + 1.0) / 2.0
    if tuple(p.shape[-2:]) != tuple(size):
        p = F.interpolate(p, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
    return p[:, 0] > 0.5


def decode_mask(vae, latents: torch.Tensor, normalized: bool = False, rule: str = "release") -> torch.Tensor:
    """Masks ``[B, T, H, W]`` (bool) at the latents' decoded size, by ``rule``."""
    field = mask_field(vae, latents, normalized)
    return torch.stack([field_to_masks(f, tuple(f.shape[-2:]), rule, is_logit_decoder(vae)) for f in field])


def mask_probs(vae, latents: torch.Tensor, normalized: bool = False) -> torch.Tensor:
    """The soft mask ``[B, T, H, W]`` in [0, 1] (for pictures): the sigmoid of a tuned decoder's
    logits, else the frozen decoder's 3 channels mapped to [0, 1] and averaged."""
    field = mask_field(vae, latents, normalized)
    return torch.sigmoid(field) if is_logit_decoder(vae) else (field + 1.0) / 2.0
