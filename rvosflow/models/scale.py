"""The real model's published configs and what follows from them, without downloading anything.

``WAN21_T2V_1_3B`` is ``transformer/config.json`` of Wan-AI/Wan2.1-T2V-1.3B-Diffusers (the DiT),
``UMT5_XXL`` the ``text_encoder/config.json`` of the same repository (google/umt5-xxl's encoder);
the VAE is ``AutoencoderKLWan()``'s defaults, which are Wan2.1's. The parameter counts here are
computed from the configs alone (tests check them against builds of the diffusers/transformers
classes, on the meta device at full size), and ``dit_tokens`` gives the sequence length a clip
becomes. ``scripts/bench_scale.py`` measures memory and speed with them.
"""

from __future__ import annotations

import math

WAN21_T2V_1_3B: dict = {
    "patch_size": [1, 2, 2],
    "num_attention_heads": 12,
    "attention_head_dim": 128,
    "in_channels": 16,
    "out_channels": 16,
    "text_dim": 4096,
    "freq_dim": 256,
    "ffn_dim": 8960,
    "num_layers": 30,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "image_dim": None,
    "added_kv_proj_dim": None,
    "rope_max_seq_len": 1024,
}

UMT5_XXL: dict = {  # transformers.UMT5Config of the encoder
    "vocab_size": 256384,
    "d_model": 4096,
    "d_kv": 64,
    "d_ff": 10240,
    "num_layers": 24,
    "num_heads": 64,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "feed_forward_proj": "gated-gelu",
    "tie_word_embeddings": False,
}

# Reduced sizes for CPU tests: the same classes and structure (8x VAE, 4x frames, 2x2 patches), narrow and short.
REDUCED_DIT: dict = {**WAN21_T2V_1_3B, "num_attention_heads": 2, "attention_head_dim": 32, "ffn_dim": 256,
                     "num_layers": 2, "text_dim": 64, "freq_dim": 32}
REDUCED_VAE: dict = {"base_dim": 8, "z_dim": 16, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 1,
                     "temperal_downsample": [False, True, True]}

VAE_SPATIAL, VAE_TEMPORAL = 8, 4  # Wan2.1 VAE: 8x8 pixels and 4 frames (after the first) per latent


def dit_param_count(config: dict, in_channels: int | None = None) -> int:
    """Parameters of ``WanTransformer3DModel(**config)`` (text-to-video: no image embedder), with the
    patch embedding taking ``in_channels`` (DVI: 2 x 16) instead of ``config["in_channels"]``."""
    d = config["num_attention_heads"] * config["attention_head_dim"]
    f, p = config["ffn_dim"], math.prod(config["patch_size"])
    c_in = in_channels or config["in_channels"]
    linear = lambda i, o: i * o + o  # noqa: E731 (weight + bias)
    patch = c_in * p * d + d
    time = linear(config["freq_dim"], d) + linear(d, d) + linear(d, 6 * d)  # time_embedder + time_proj
    text = linear(config["text_dim"], d) + linear(d, d)
    attention = 4 * linear(d, d) + 2 * d  # q, k, v, out + RMS norms of q and k (across heads)
    block = (2 * attention + (2 * d if config["cross_attn_norm"] else 0)  # self, cross, norm2 (affine)
             + linear(d, f) + linear(f, d) + 6 * d)  # feed-forward + scale_shift_table
    head = linear(d, config["out_channels"] * p) + 2 * d  # proj_out + scale_shift_table
    return patch + time + text + config["num_layers"] * block + head


def umt5_encoder_param_count(config: dict) -> int:
    """Parameters of ``UMT5EncoderModel(UMT5Config(**config))``: embedding, and per layer
    self-attention (+ its own relative position bias), gated-GELU feed-forward and two RMS norms."""
    d, inner, ff = config["d_model"], config["num_heads"] * config["d_kv"], config["d_ff"]
    layer = (4 * d * inner + config["relative_attention_num_buckets"] * config["num_heads"]
             + 3 * d * ff + 2 * d)
    return config["vocab_size"] * d + config["num_layers"] * layer + d


def dit_tokens(config: dict, frames: int, height: int, width: int) -> int:
    """DiT sequence length of a ``frames x height x width`` clip (8x VAE, 4x frames, then patches)."""
    pt, ph, pw = config["patch_size"]
    t = 1 + (frames - 1) // VAE_TEMPORAL
    return (t // pt) * (height // VAE_SPATIAL // ph) * (width // VAE_SPATIAL // pw)


def dit_train_flops(config: dict, tokens: int, text_tokens: int, checkpointing: bool) -> float:
    """FLOPs of one training step (forward + backward, 2 FLOP per multiply-add, backward = 2x forward)
    at batch 1; checkpointing adds one more forward of the blocks."""
    d, f, n = config["num_attention_heads"] * config["attention_head_dim"], config["ffn_dim"], config["num_layers"]
    per_token = 2 * (4 * d * d + 2 * d * d + 2 * d * f)  # self q,k,v,o; cross q,o; feed-forward
    per_block = tokens * per_token + 2 * text_tokens * 2 * d * d  # + cross k,v over the text
    per_block += 2 * 2 * tokens * tokens * d + 2 * 2 * tokens * text_tokens * d  # QK^T and AV, self + cross
    forward = n * per_block
    return forward * (3 + (1 if checkpointing else 0))
