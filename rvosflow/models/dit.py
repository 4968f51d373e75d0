"""The trainable DiT of an ablation run: weight init (WI) and direct video injection (DVI)."""

from __future__ import annotations

import copy

import torch
from diffusers import WanTransformer3DModel
from torch import nn


def widen_patch_embedding(transformer: WanTransformer3DModel, in_channels: int) -> None:
    """Widen the patch embedding from C to ``in_channels`` input channels in place.

    The new channels get zero weights and the bias is kept, so at initialisation the model's
    output is exactly what it was on the original C channels (DVI, docs/design.md §2). The config is
    updated so ``save_pretrained``/``from_pretrained`` round-trip the widened model.
    """
    old: nn.Conv3d = transformer.patch_embedding
    if old.in_channels == in_channels:
        return
    if in_channels < old.in_channels:
        raise ValueError(f"cannot narrow the patch embedding from {old.in_channels} to {in_channels}")
    new = nn.Conv3d(
        in_channels, old.out_channels, kernel_size=old.kernel_size, stride=old.stride,
        padding=old.padding, bias=old.bias is not None,
    ).to(device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, : old.in_channels].copy_(old.weight)
        if old.bias is not None:
            new.bias.copy_(old.bias)
    transformer.patch_embedding = new
    transformer.register_to_config(in_channels=in_channels)


def negate_output(state: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """A copy of a DiT state dict whose model emits exactly the negative of the original's output.

    The DiT's output is ``proj_out(...)`` (a linear layer) followed by an unpatchify (a
    rearrangement), so negating ``proj_out``'s weight and bias negates every output exactly; this
    converts a checkpoint trained on the paper's ``+v`` into Wan's ``noise - data`` sign.
    """
    keys = [f"{prefix}proj_out.weight", f"{prefix}proj_out.bias"]
    missing = [k for k in keys if k not in state]
    if missing:
        raise KeyError(f"not a WanTransformer3DModel state dict: no {', '.join(missing)}")
    return {k: (-v if k in keys else v) for k, v in state.items()}


def build_dit(
    pretrained: WanTransformer3DModel, in_channels: int, weight_init: bool, seed: int
) -> WanTransformer3DModel:
    """A trainable copy of the bundle's DiT (WI on) or the same architecture at random init
    (WI off, seeded), widened to ``in_channels``."""
    if weight_init:
        model = copy.deepcopy(pretrained)
    else:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = WanTransformer3DModel.from_config(pretrained.config)
        model = model.to(dtype=pretrained.dtype)
    widen_patch_embedding(model, in_channels)
    model.requires_grad_(True)
    return model.train()  # the bundle is loaded in eval mode
