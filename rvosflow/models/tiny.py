"""Tiny Wan2.1-architecture configs and a builder for randomly initialised bundles.

``TINY`` is the embedded default that ``python -m rvosflow.pretrain`` trains on the
synthetic benchmark (17x64x64 clips -> 5x16x16 latents -> 5x8x8 = 320 DiT tokens).
``TEST`` is far smaller, for unit tests. Both use the real classes (``AutoencoderKLWan``,
``WanTransformer3DModel``, ``UMT5EncoderModel``), only with small sizes, so every code path is the
one that runs Wan2.1-T2V-1.3B.
"""

from __future__ import annotations

import copy
from typing import Iterable

import torch

from rvosflow.models.loader import DEFAULT_SHIFT, WanBundle

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"  # ids 0, 1, 2 (UMT5: pad 0, eos 1)

TINY: dict = {
    "name": "tiny",
    "vae": {
        # 8 rather than 16: 3x cheaper to train and to run (the frozen VAE dominates a CPU run's cost)
        # and still reconstructs the synthetic masks (pretrain_report.json)
        "base_dim": 8,
        "z_dim": 16,  # like Wan
        "dim_mult": [1, 2, 4],  # two downsampling stages -> 4x spatial
        "num_res_blocks": 1,
        "attn_scales": [],
        "temperal_downsample": [True, True],  # 4x temporal: 1 + 4k frames -> 1 + k latents
        "dropout": 0.0,
        "scale_factor_spatial": 4,
        "scale_factor_temporal": 4,
    },
    "transformer": {
        # 2x2 latent patches (5x8x8 = 320 tokens per clip): a token covers 8x8 pixels. With 4x4
        # patches (16x16 px, as in Wan2.1) a step is ~3x faster, but the coarse tokens cap mask
        # quality: colour-led grounding plateaued at J&F ~54 against ~63 with 2x2 (issue 11).
        "patch_size": [1, 2, 2],
        "num_attention_heads": 4,
        "attention_head_dim": 32,  # 4 x 32 = 128
        "in_channels": 16,
        "out_channels": 16,
        "freq_dim": 64,
        "ffn_dim": 256,
        "num_layers": 4,
        "cross_attn_norm": True,
        "qk_norm": "rms_norm_across_heads",
        "eps": 1e-6,
        "rope_max_seq_len": 1024,
    },
    "text_encoder": {  # UMT5Config
        "d_model": 64,
        "d_kv": 16,
        "d_ff": 128,
        "num_layers": 2,
        "num_heads": 4,
        "relative_attention_num_buckets": 16,
        "relative_attention_max_distance": 32,
        "feed_forward_proj": "gated-gelu",
        "dropout_rate": 0.0,
    },
    "max_text_length": 64,  # the first release's text length
}

TEST: dict = {
    "name": "test",
    "vae": {
        "base_dim": 8,
        "z_dim": 16,
        "dim_mult": [1, 2, 2],
        "num_res_blocks": 1,
        "attn_scales": [],
        "temperal_downsample": [True, True],
        "dropout": 0.0,
        "scale_factor_spatial": 4,
        "scale_factor_temporal": 4,
    },
    "transformer": {
        "patch_size": [1, 2, 2],
        "num_attention_heads": 2,
        "attention_head_dim": 12,
        "in_channels": 16,
        "out_channels": 16,
        "freq_dim": 16,
        "ffn_dim": 32,
        "num_layers": 1,
        "cross_attn_norm": True,
        "qk_norm": "rms_norm_across_heads",
        "eps": 1e-6,
        "rope_max_seq_len": 256,
    },
    "text_encoder": {
        "d_model": 16,
        "d_kv": 8,
        "d_ff": 32,
        "num_layers": 1,
        "num_heads": 2,
        "relative_attention_num_buckets": 8,
        "relative_attention_max_distance": 16,
        "feed_forward_proj": "gated-gelu",
        "dropout_rate": 0.0,
    },
    "max_text_length": 16,
}

CONFIGS = {"tiny": TINY, "test": TEST}


def get_config(config: str | dict) -> dict:
    """``"tiny"`` / ``"test"`` / a dict -> a deep copy of the config dict."""
    if isinstance(config, str):
        if config not in CONFIGS:
            raise ValueError(f"unknown tiny config {config!r}; known: {sorted(CONFIGS)}")
        config = CONFIGS[config]
    return copy.deepcopy(config)


def build_tokenizer(vocab: Iterable[str], model_max_length: int = 512):
    """A word-level tokenizer for the synthetic vocabulary, as ``PreTrainedTokenizerFast``.

    Ids: ``<pad>`` 0 and ``</s>`` 1 as in UMT5, ``<unk>`` 2, then the sorted lower-cased words.
    Text is lower-cased and split on whitespace and punctuation; ``</s>`` is appended like T5.
    Save with ``save_pretrained``; ``AutoTokenizer.from_pretrained`` loads it back.
    """
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    words: set[str] = set()
    pre = pre_tokenizers.Whitespace()
    for entry in vocab:
        for w, _ in pre.pre_tokenize_str(str(entry).lower()):
            words.add(w)
    words -= {PAD, EOS, UNK}
    table = {PAD: 0, EOS: 1, UNK: 2}
    for w in sorted(words):
        table[w] = len(table)
    tok = Tokenizer(WordLevel(table, unk_token=UNK))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre
    tok.post_processor = processors.TemplateProcessing(single=f"$A {EOS}", pair=f"$A {EOS} $B {EOS}",
                                                       special_tokens=[(EOS, 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=EOS, unk_token=UNK,
                                   model_max_length=model_max_length, padding_side="right")


def build_random_bundle(config: str | dict = "tiny", vocab: Iterable[str] = (), seed: int = 0) -> WanBundle:
    """A randomly initialised Wan bundle of the given size, with a tokenizer for ``vocab``.

    ``text_dim`` of the DiT is set to the text encoder's ``d_model``; the VAE starts with
    ``latents_mean`` 0 / ``latents_std`` 1 (pretraining measures and stores the real ones).
    """
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    cfg = get_config(config)
    tokenizer = build_tokenizer(vocab)
    g_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        z = cfg["vae"]["z_dim"]
        vae = AutoencoderKLWan(**cfg["vae"], latents_mean=[0.0] * z, latents_std=[1.0] * z)
        te_cfg = UMT5Config(vocab_size=len(tokenizer), pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
                            is_encoder_decoder=False, use_cache=False, **cfg["text_encoder"])
        text_encoder = UMT5EncoderModel(te_cfg)
        tcfg = dict(cfg["transformer"])
        tcfg["patch_size"] = tuple(tcfg["patch_size"])
        transformer = WanTransformer3DModel(text_dim=te_cfg.d_model, **tcfg)
    finally:
        torch.random.set_rng_state(g_state)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=DEFAULT_SHIFT)
    return WanBundle(transformer=transformer.eval(), vae=vae.eval(), text_encoder=text_encoder.eval(),
                     tokenizer=tokenizer, scheduler=scheduler,
                     extras={"config": cfg["name"], "max_text_length": cfg["max_text_length"]})
