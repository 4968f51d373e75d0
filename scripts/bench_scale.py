"""Memory and speed of Wan2.1-T2V-1.3B at the release's sizes, built from its published config at
random init (nothing is downloaded), widened for DVI (32 input channels).

    python scripts/bench_scale.py                   # CUDA, real sizes: 17x480x832 training, 81x480x832 inference
    python scripts/bench_scale.py --size cpu        # reduced sizes, any machine, seconds (what the test runs)
    python scripts/bench_scale.py --size real --device cpu --meta --skip-training --skip-inference
                                                    # estimate: memory of the real sizes counted on the
                                                    # meta device (no memory, no GPU, seconds)

Training (batch 1, bf16 weights in ``--dtype``, AdamW, with and without diffusers' gradient
checkpointing): peak memory (CUDA), step time, tokens/s, and the bytes autograd saves for
backward in the DiT (``saved_tensors_hooks``; parameters excluded). Inference: one whole video
through ``FlowRVSModule.predict_masks`` -- the run's own path: VAE encode, DiT (one Euler step,
DVI), VAE decode, in windows of ``--window-frames`` -- under ``torch.inference_mode``, text
embeddings from the cache (no text encoder): peak memory including the VAE. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.multiprocessing.reductions import StorageWeakRef
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rvosflow.caches import content_key  # noqa: E402
from rvosflow.models.scale import WAN21_T2V_1_3B, dit_param_count, dit_tokens, dit_train_flops  # noqa: E402

# Reduced sizes for CPU: the same classes and structure (8x VAE, 4x frames, 2x2 patches), narrow and short.
CPU_DIT = {**WAN21_T2V_1_3B, "num_attention_heads": 2, "attention_head_dim": 32, "ffn_dim": 256, "num_layers": 2,
           "text_dim": 64, "freq_dim": 32}
CPU_VAE = {"base_dim": 8, "z_dim": 16, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 1,
           "temperal_downsample": [False, True, True]}
SIZES = {
    # name: DiT config, VAE kwargs (None = Wan2.1's, the class defaults), train clip, inference video, text length
    "real": (WAN21_T2V_1_3B, None, (17, 480, 832), (81, 480, 832), 64),
    "cpu": (CPU_DIT, CPU_VAE, (17, 64, 64), (33, 64, 64), 16),
}
LATENT = 16  # Wan2.1 VAE latent channels; DVI doubles the DiT's input


def build_dit(config: dict, dtype: torch.dtype, device, dvi: bool = True, seed: int = 0):
    """``WanTransformer3DModel`` at random init, widened to 2 x 16 input channels (``dvi``), in
    ``dtype`` except diffusers' fp32-kept modules."""
    from diffusers import WanTransformer3DModel

    from rvosflow.models.dit import widen_patch_embedding
    from rvosflow.models.loader import cast_keeping_fp32

    torch.manual_seed(seed)
    with torch.device(device):
        model = WanTransformer3DModel(**config)
    if dvi:
        widen_patch_embedding(model, 2 * LATENT)
    return cast_keeping_fp32(model, dtype)


def build_vae(vae_kwargs: dict | None, device):
    from diffusers import AutoencoderKLWan

    with torch.device(device):
        return AutoencoderKLWan(**(vae_kwargs or {})).eval().requires_grad_(False)


def saved_bytes(model, inputs: dict) -> int:
    """Bytes of the distinct tensors autograd saves for backward during one forward of ``model``
    (what stays in memory until backward), parameters excluded. Inside checkpointed blocks nothing
    is saved (they are recomputed); each keeps only its input, which this does not count."""
    params = {p.untyped_storage()._cdata for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        s = t.untyped_storage()
        if s._cdata not in params:
            seen[s._cdata] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(**inputs, return_dict=False)[0]
    del out
    return sum(seen.values())


def dit_inputs(config: dict, frames: int, height: int, width: int, text_len: int, dtype, device, batch: int = 1) -> dict:
    t, h, w = 1 + (frames - 1) // 4, height // 8, width // 8
    g = torch.Generator(device="cpu").manual_seed(0)
    return {
        "hidden_states": torch.randn(batch, 2 * LATENT, t, h, w, generator=g).to(device, dtype),
        "timestep": torch.full((batch,), 1000.0, device=device),
        "encoder_hidden_states": torch.randn(batch, text_len, config["text_dim"], generator=g).to(device, dtype),
    }


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gb(device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 1e9 if torch.device(device).type == "cuda" else None


def bench_training(config: dict, clip: tuple, text_len: int, dtype, device, checkpointing: bool, steps: int) -> dict:
    """Peak memory (CUDA), seconds per step (mean over ``steps`` after one warm-up) and tokens/s of
    AdamW steps on one clip, plus the bytes autograd saves in one forward."""
    model = build_dit(config, dtype, device).train()
    if checkpointing:
        model.enable_gradient_checkpointing()
    inputs = dit_inputs(config, *clip, text_len, dtype, device)
    saved = saved_bytes(model, inputs)
    opt = torch.optim.AdamW(model.parameters(), lr=6e-5, betas=(0.9, 0.999), weight_decay=5e-4)
    target = torch.randn_like(inputs["hidden_states"][:, :LATENT], dtype=torch.float32)
    _reset_peak(device)
    times = []
    for i in range(steps + 1):
        _sync(device)
        start = time.perf_counter()
        out = model(**inputs, return_dict=False)[0]
        F.mse_loss(out.float(), target).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync(device)
        if i:  # the first step allocates the optimizer state and warms the kernels up
            times.append(time.perf_counter() - start)
    tokens = dit_tokens(config, *clip)
    step = sum(times) / len(times)
    result = {"checkpointing": checkpointing, "tokens": tokens, "saved_activation_gb": saved / 1e9,
              "peak_gb": _peak_gb(device), "step_s": step, "tokens_per_s": tokens / step,
              "tflop_per_step": dit_train_flops(config, tokens, text_len, checkpointing) / 1e12}
    del model, opt, inputs
    return result


def inference_setup(config: dict, vae_kwargs, video: tuple, text_len: int, dtype, device, window_frames: int):
    """A ``FlowRVSModule`` (video2mask, DVI, one Euler step, no latent cache, text from the cache, no
    text encoder) on ``device`` and one whole-video sample."""
    from rvosflow import schema
    from rvosflow.models.loader import WanBundle
    from rvosflow.module import FlowRVSModule
    from rvosflow.caches import TextCache

    frames, height, width = video
    caption = "the smaller monkey jumping"
    text = TextCache(None, text_len)
    text.put(caption, torch.randn(text_len, config["text_dim"]).to(dtype), text_len)
    dit = build_dit(config, dtype, "cpu", dvi=False)  # the module widens its copy (DVI), as in a run
    bundle = WanBundle(transformer=dit, vae=build_vae(vae_kwargs, "cpu"))
    cfg = schema.build({"paradigm": {"name": "video2mask"}, "data": {"format": "mevis", "root": "unused"},
                        "model": {"name": "bench", "path": "unused", "dtype": str(dtype).removeprefix("torch.")},
                        "text": {"max_length": text_len}, "window_frames": window_frames, "cache_latents": False,
                        "solver": {"steps": 1}, "dvi": {"enabled": True}})
    module = FlowRVSModule(cfg, bundle, text_cache=text)
    bundle.transformer = None  # the module holds its own (WI) copy
    module.eval().to(device)
    module.frozen.to(device)
    g = torch.Generator().manual_seed(0)
    video = torch.randint(0, 256, (frames, height, width, 3), dtype=torch.uint8, generator=g)
    sample = {"frames": video, "frames_key": content_key(video),  # the latent-cache key, as the datasets give it
              "caption": caption, "video_id": "bench", "orig_size": (height, width)}
    return module, sample


def bench_inference(config: dict, vae_kwargs, video: tuple, text_len: int, dtype, device, window_frames: int) -> dict:
    """One whole video through ``FlowRVSModule.predict_masks`` under ``torch.inference_mode``: peak
    memory (CUDA) and seconds."""
    module, sample = inference_setup(config, vae_kwargs, video, text_len, dtype, device, window_frames)
    _reset_peak(device)
    _sync(device)
    start = time.perf_counter()
    with torch.inference_mode():
        pred = module.predict_masks([sample])[0]
    _sync(device)
    seconds = time.perf_counter() - start
    assert pred.shape == tuple(video)
    result = {"frames": video[0], "window_frames": module.window_frames, "peak_gb": _peak_gb(device), "seconds": seconds,
              "vae_params": sum(p.numel() for p in module.frozen.vae.parameters())}
    del module
    return result


class LiveBytes(TorchDispatchMode):
    """Peak bytes of the tensor storages alive at once among those created inside the context, at op
    boundaries: a device-independent stand-in for ``torch.cuda.max_memory_allocated`` that also works
    on the meta device (no allocator rounding, fragmentation or kernel workspaces)."""

    def __init__(self, *existing: torch.nn.Module):
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current = self.peak = 0
        for module in existing:  # weights are counted apart: views of them (weight.t() ...) are not new memory
            for t in [*module.parameters(), *module.buffers()]:
                self.live[t.untyped_storage()._cdata] = (StorageWeakRef(t.untyped_storage()), 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                if storage._cdata not in self.live:
                    self.live[storage._cdata] = (StorageWeakRef(storage), storage.nbytes())
                    self.current += storage.nbytes()
        self.peak = max(self.peak, self.current)
        for key in [k for k, (ref, _) in self.live.items() if ref.expired()]:
            self.current -= self.live.pop(key)[1]
        return out


class FlashAttentionOnMeta(TorchFunctionMode):
    """On the meta device ``scaled_dot_product_attention`` dispatches to its math fallback, which
    materialises the N x N attention matrix (26 GB for an 81-frame 480p video); a GPU runs the flash
    kernel, which keeps O(N) (output + log-sum-exp for backward). This routes unmasked attention on
    meta tensors to the flash op, whose meta kernel gives the shapes the GPU would allocate."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale")
            a = {**dict(zip(names, args)), **kwargs}
            if a["query"].device.type == "meta" and a.get("attn_mask") is None:
                return torch.ops.aten._scaled_dot_product_flash_attention(
                    a["query"], a["key"], a["value"], a.get("dropout_p", 0.0), a.get("is_causal", False),
                    scale=a.get("scale"))[0]
        return func(*args, **kwargs)


def meta_estimate(config: dict, vae_kwargs, clip: tuple, video: tuple, text_len: int, dtype, window_frames) -> dict:
    """The real sizes on the meta device (shapes and dtypes only: no memory, no GPU). Training: the
    bytes autograd saves and the peak of live tensors in forward + backward, on top of the weights,
    to which AdamW adds two moments of each parameter's dtype. Inference: the peak of live tensors
    of ``predict_masks`` (VAE encode, DiT, VAE decode) on top of the DiT and VAE weights."""
    out: dict = {"training": [], "inference": []}
    for checkpointing in (True, False):
        model = build_dit(config, dtype, "meta").train()
        if checkpointing:
            model.enable_gradient_checkpointing()
        inputs = dit_inputs(config, *clip, text_len, dtype, "meta")
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        with FlashAttentionOnMeta():
            saved = saved_bytes(model, inputs)
        with FlashAttentionOnMeta(), LiveBytes(model) as live:
            F.mse_loss(model(**inputs, return_dict=False)[0].float(), inputs["hidden_states"][:, :LATENT].float()).backward()
        out["training"].append({"checkpointing": checkpointing, "weights_gb": weights / 1e9, "adamw_state_gb": 2 * weights / 1e9,
                                "saved_activation_gb": saved / 1e9, "forward_backward_peak_gb": live.peak / 1e9,
                                "total_gb": (3 * weights + live.peak) / 1e9})
    from rvosflow.data.transforms import padded_frame_count, windows
    from rvosflow.models import encoding

    dit, vae = build_dit(config, dtype, "meta").eval(), build_vae(vae_kwargs, "meta")
    weights = sum(p.numel() * p.element_size() for m in (dit, vae) for p in m.parameters())
    text = torch.zeros(1, text_len, config["text_dim"], dtype=dtype, device="meta")
    frames, height, width = video
    for w in window_frames:  # FlowRVSModule._predict_same_shape, one Euler step, on meta tensors
        w = padded_frame_count(w, 4)
        with torch.inference_mode(), FlashAttentionOnMeta(), LiveBytes(dit, vae) as live:
            for start, stop in windows(frames, w):
                pixels = torch.zeros(1, 3, padded_frame_count(stop - start, 4), height, width, device="meta")
                z0 = encoding.normalize_latents(vae, encoding.vae_posterior(vae, pixels)[0])
                del pixels
                v = dit(hidden_states=torch.cat([z0, z0], 1).to(dtype), timestep=torch.zeros(1, device="meta"),
                        encoder_hidden_states=text, return_dict=False)[0]
                probs = encoding.mask_probs(vae, (z0 - v).float())
                del z0, v, probs
        out["inference"].append({"window_frames": w, "weights_gb": weights / 1e9, "peak_gb": live.peak / 1e9,
                                 "total_gb": (weights + live.peak) / 1e9})
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="real")
    parser.add_argument("--device", default=None, help="default: cuda for --size real, else cpu")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps (after one warm-up)")
    parser.add_argument("--window-frames", type=int, nargs="+", default=[81, 41, 21], help="inference windows to measure")
    parser.add_argument("--meta", action="store_true",
                        help="also estimate memory at --size on the meta device (no memory or GPU needed)")
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--skip-inference", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)

    from rvosflow.models.loader import resolve_dtype

    config, vae_kwargs, clip, video, text_len = SIZES[args.size]
    dtype = resolve_dtype(args.dtype)
    device = args.device or ("cuda" if args.size == "real" else "cpu")
    report = {"size": args.size, "device": device, "dtype": args.dtype, "train_clip": clip, "inference_video": video,
              "dit_params": dit_param_count(config, 2 * LATENT), "dit_tokens_train": dit_tokens(config, *clip),
              "dit_tokens_inference": dit_tokens(config, *video)}
    if torch.device(device).type == "cuda":
        report["gpu"] = torch.cuda.get_device_name(device)
    if args.meta:
        report["meta_estimate"] = meta_estimate(config, vae_kwargs, clip, video, text_len, dtype, args.window_frames)
    if not args.skip_training:
        report["training"] = [bench_training(config, clip, text_len, dtype, device, c, args.steps) for c in (True, False)]
    if not args.skip_inference:
        report["inference"] = [bench_inference(config, vae_kwargs, video, text_len, dtype, device, w)
                               for w in args.window_frames]
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return report


if __name__ == "__main__":
    main()
