"""Memory and speed of Wan2.1-T2V-1.3B at the release's sizes, built from its published config at
random init (nothing is downloaded), widened for DVI (32 input channels).

    python scripts/bench_scale.py                   # CUDA, real sizes: 17x480x832 training, 81x480x832 inference
    python scripts/bench_scale.py --size cpu        # reduced sizes, any machine, seconds (what the test runs)
    python scripts/bench_scale.py --size real --device cpu --per-token --meta --skip-training --skip-inference
                                                    # make bench-per-token: CPU-measured memory per token of
                                                    # real-width blocks, extrapolated; and the meta count

Training (batch 1, bf16 weights in ``--dtype``, AdamW, with and without diffusers' gradient
checkpointing): peak memory (CUDA), step time, tokens/s, and the bytes autograd saves for
backward in the DiT (``saved_tensors_hooks``; parameters excluded). Inference: one whole video
through ``FlowRVSModule.predict_masks`` -- the run's own path: VAE encode, DiT (one Euler step,
DVI), VAE decode, in windows of ``--window-frames`` -- under ``torch.inference_mode``, text
embeddings from the cache (no text encoder): peak memory including the VAE.

``--per-token`` measures on the CPU, at the real width (dim 1536, 12 heads, ffn 8960) and depth 1
and 2, from 390 to 7,800 tokens: the bytes autograd saves, the bytes a forward leaves for backward
and the peak of live activations in forward + backward, with and without checkpointing, and the
inference peak. Per block (depth 2 - depth 1) and outside the blocks, each is fitted as
a + b N + c N^2 and extrapolated to the 30-block model at 7,800 and 32,760 tokens ("CPU-measured,
extrapolated"), beside the README's hand counts. Attention: the CPU runs PyTorch's flash kernel
for CPU (it keeps O(N): output and log-sum-exp), as a GPU's flash kernel does; the math kernel,
which keeps the N x N weights, is counted too (up to 3,120 tokens) so that its N^2 term is fitted
apart. ``--meta`` counts the full model on the meta device with the flash op's shapes (training
and whole-video inference with the VAE). Every count is of tensors (no allocator, no workspaces).
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rvosflow.caches import content_key  # noqa: E402
from rvosflow.models.scale import (  # noqa: E402
    REDUCED_DIT, REDUCED_VAE, WAN21_T2V_1_3B, dit_param_count, dit_tokens, dit_train_flops,
)

CPU_DIT, CPU_VAE = REDUCED_DIT, REDUCED_VAE  # reduced sizes for CPU (--size cpu)
SIZES = {
    # name: DiT config, VAE kwargs (None = Wan2.1's, the class defaults), train clip, inference video, text length
    "real": (WAN21_T2V_1_3B, None, (17, 480, 832), (81, 480, 832), 256),  # text: the preset's text.max_length
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


@contextlib.contextmanager
def counting_saved(model):
    """Inside: the distinct tensors autograd saves for backward, as ``{storage: bytes}`` (yielded),
    parameters excluded. Under non-reentrant gradient checkpointing (diffusers') a checkpointed
    block saves its inputs for the recomputation and nothing else."""
    params = {p.untyped_storage()._cdata for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        s = t.untyped_storage()
        if s._cdata not in params:
            seen[s._cdata] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield seen


def saved_bytes(model, inputs: dict) -> int:
    """Bytes of the distinct tensors autograd saves for backward during one forward of ``model``
    (what stays in memory until backward), parameters excluded (``counting_saved``)."""
    with counting_saved(model) as seen:
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
    on the meta device (no allocator rounding, fragmentation or kernel workspaces).

    With ``grads_of``, a parameter's gradient leaves the count (into ``grad_bytes``) once autograd
    stores it in ``.grad``: ``peak`` is then the activations' alone, the gradients being a figure
    of their own (the weights' size)."""

    def __init__(self, *existing: torch.nn.Module, grads_of: torch.nn.Module | None = None):
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current = self.peak = self.grad_bytes = 0
        self.attention_ops: set[str] = set()
        for module in existing:  # weights are counted apart: views of them (weight.t() ...) are not new memory
            for t in [*module.parameters(), *module.buffers()]:
                self.live[t.untyped_storage()._cdata] = (StorageWeakRef(t.untyped_storage()), 0)
        self.hooks = [p.register_post_accumulate_grad_hook(self._grad_stored)
                      for p in (grads_of.parameters() if grads_of is not None else []) if p.requires_grad]

    def _grad_stored(self, param: torch.Tensor) -> None:
        storage = param.grad.untyped_storage()
        ref, nbytes = self.live.get(storage._cdata, (StorageWeakRef(storage), 0))
        self.live[storage._cdata] = (ref, 0)  # stays known (a view of it is no new memory), counted apart
        self.current -= nbytes
        self.grad_bytes += nbytes

    def alive(self) -> int:
        """Bytes of the storages created inside the context that are alive now."""
        return sum(n for ref, n in self.live.values() if not ref.expired())

    def __exit__(self, *exc):
        for hook in self.hooks:
            hook.remove()
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if "attention" in func.__name__:
            self.attention_ops.add(func.__name__)
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


@contextlib.contextmanager
def flash_attention_on_meta():
    """On the meta device ``scaled_dot_product_attention`` dispatches to its math fallback, which
    materialises the N x N attention matrix (26 GB for an 81-frame 480p video); a GPU runs the flash
    kernel, which keeps O(N) (output + log-sum-exp for backward). Inside this context unmasked
    attention on meta tensors goes to the flash op, whose meta kernel gives the shapes a GPU allocates.

    It swaps the function itself (diffusers looks it up at every call) rather than using a
    ``TorchFunctionMode``: a mode is switched off while it handles a call, so a ``backward()``
    made under it runs -- and gradient checkpointing recomputes each block -- without it, and the
    recomputation took the math path and saved other tensors than the forward did (the
    ``CheckpointError`` of the earlier version)."""
    original = F.scaled_dot_product_attention

    def attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kwargs):
        if query.device.type == "meta" and attn_mask is None and not kwargs.get("enable_gqa"):
            return torch.ops.aten._scaled_dot_product_flash_attention(
                query, key, value, dropout_p, is_causal, scale=scale)[0]
        return original(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                        scale=scale, **kwargs)

    F.scaled_dot_product_attention = attention
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


def meta_estimate(config: dict, vae_kwargs, clip: tuple, video: tuple, text_len: int, dtype, window_frames) -> dict:
    """The real sizes on the meta device (shapes and dtypes only: no memory, no GPU), attention as
    the flash kernel keeps it. Training: the bytes autograd saves and the peak of live activations
    in forward + backward (gradients apart), on top of the weights, their gradients and AdamW's two
    moments, each the weights' size and dtype. Inference: the peak of live tensors of
    ``predict_masks`` (VAE encode, DiT, VAE decode) on top of the DiT and VAE weights."""
    out: dict = {"training": [], "inference": []}
    for checkpointing in (True, False):
        model = build_dit(config, dtype, "meta").train()
        if checkpointing:
            model.enable_gradient_checkpointing()
        inputs = dit_inputs(config, *clip, text_len, dtype, "meta")
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        with flash_attention_on_meta():
            saved = saved_bytes(model, inputs)
        with flash_attention_on_meta(), LiveBytes(model, grads_of=model) as live:
            F.mse_loss(model(**inputs, return_dict=False)[0].float(), inputs["hidden_states"][:, :LATENT].float()).backward()
        assert live.grad_bytes == weights, (live.grad_bytes, weights)  # every gradient seen, in its weight's dtype
        out["training"].append({"checkpointing": checkpointing, "weights_gb": weights / 1e9, "gradients_gb": weights / 1e9,
                                "adamw_state_gb": 2 * weights / 1e9, "saved_activation_gb": saved / 1e9,
                                "activation_peak_gb": live.peak / 1e9, "total_gb": (4 * weights + live.peak) / 1e9})
    from rvosflow.data.transforms import padded_frame_count, windows
    from rvosflow.models import encoding

    dit, vae = build_dit(config, dtype, "meta").eval(), build_vae(vae_kwargs, "meta")
    weights = sum(p.numel() * p.element_size() for m in (dit, vae) for p in m.parameters())
    text = torch.zeros(1, text_len, config["text_dim"], dtype=dtype, device="meta")
    frames, height, width = video
    for w in window_frames:  # FlowRVSModule._predict_same_shape, one Euler step, on meta tensors
        w = padded_frame_count(w, 4)
        with torch.inference_mode(), flash_attention_on_meta(), LiveBytes(dit, vae) as live:
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


# ----------------------------------------------------------------------------- memory per token, measured on CPU
# Clips of the per-token fit. real: 390 to 7,800 tokens (a quarter and a half of a 480x832 frame, then
# 1, 2 and 5 latent frames of it; 5 = the 17x480x832 training clip). cpu: the reduced model's.
PER_TOKEN_CLIPS = {"real": [(1, 240, 416), (1, 480, 416), (1, 480, 832), (5, 480, 832), (17, 480, 832)],
                   "cpu": [(1, 64, 64), (5, 64, 64), (9, 64, 64), (17, 64, 64), (17, 96, 96), (17, 128, 128)]}
MATH_MAX_TOKENS = 3120  # the math kernel keeps N x N weights per head: 48 bytes/token^2, 2.9 GB per block at 7,800
DEPTHS = (1, 2)  # per block = depth 2 - depth 1; outside the blocks = depth 1 - per block
# The README's hand-counted figures for the real model (the estimate this measurement checks), GB.
HAND_COUNTED_GB = {"train_activations_per_block_7800": 1.0, "train_checkpointed_block_inputs_7800": 0.7,
                   "train_total_no_checkpointing_7800": 41.0, "train_total_checkpointing_7800": 15.0,
                   "inference_dit_block_32760": 2.0, "inference_total_32760": 10.0}


def memory_counts(model, inputs: dict, backward: bool = True) -> dict:
    """One training forward (and backward) of ``model`` on ``inputs``, counted from the tensors:
    ``saved``: what autograd saves for backward (``counting_saved``); ``retained``: what the forward
    created that is still alive when it returns, its output excluded (what waits for backward);
    ``peak`` (with ``backward``): the most bytes alive at once in forward + backward, parameter
    gradients excluded (they are the weights' size, counted apart). Plus the attention kernels that ran."""
    with LiveBytes(model, grads_of=model) as live:
        with counting_saved(model) as saved:
            out = model(**inputs, return_dict=False)[0]
        retained = live.alive() - out.untyped_storage().nbytes()
        if backward:
            out.float().square().mean().backward()
        del out
    model.zero_grad(set_to_none=True)
    counts = {"saved": sum(saved.values()), "retained": retained, "kernels": sorted(live.attention_ops)}
    return {**counts, "peak": live.peak} if backward else counts


def inference_peak(model, inputs: dict) -> dict:
    """The most bytes alive at once in one forward under ``torch.inference_mode`` (nothing is saved)."""
    with torch.inference_mode(), LiveBytes(model) as live:
        model(**inputs, return_dict=False)
    return {"peak": live.peak, "kernels": sorted(live.attention_ops)}


def fit(tokens, values) -> dict:
    """``values ~ a + b N + c N^2`` by least squares over ``tokens`` N: intercept a (bytes), b (bytes
    per token), c (bytes per token^2: attention weights, when a kernel keeps them), and the largest
    residual relative to the value."""
    import numpy as np

    n = np.asarray(tokens, dtype=np.float64)
    y = np.asarray(values, dtype=np.float64)
    scale = n.max()  # columns of similar size for the solver
    design = np.stack([np.ones_like(n), n / scale, (n / scale) ** 2], axis=1)
    coef = np.linalg.lstsq(design, y, rcond=None)[0]
    residual = np.abs(design @ coef - y) / np.maximum(np.abs(y), 1.0)
    return {"intercept_bytes": float(coef[0]), "bytes_per_token": float(coef[1] / scale),
            "bytes_per_token2": float(coef[2] / scale**2), "max_rel_residual": float(residual.max())}


def fitted(f: dict, tokens: int) -> float:
    return f["intercept_bytes"] + f["bytes_per_token"] * tokens + f["bytes_per_token2"] * tokens**2


def measure_per_token(config: dict, clips: list, text_len: int, dtype) -> list[dict]:
    """Rows of ``memory_counts`` (training with and without checkpointing, CPU's own attention kernel;
    the math kernel forward-only up to ``MATH_MAX_TOKENS``) and ``inference_peak`` for the DiT at
    ``config``'s width and depth 1 and 2, at each clip's token count."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    rows = []
    for depth in DEPTHS:
        model = build_dit({**config, "num_layers": depth}, dtype, "cpu")
        for clip in clips:
            inputs = dit_inputs(config, *clip, text_len, dtype, "cpu")
            base = {"depth": depth, "tokens": dit_tokens(config, *clip), "clip": clip}
            model.train()
            for checkpointing in (False, True):
                (model.enable_gradient_checkpointing if checkpointing else model.disable_gradient_checkpointing)()
                rows.append({**base, "mode": "train", "kernel": "default", "checkpointing": checkpointing,
                             **memory_counts(model, inputs)})
            model.disable_gradient_checkpointing()
            if base["tokens"] <= MATH_MAX_TOKENS:
                with sdpa_kernel(SDPBackend.MATH):
                    rows.append({**base, "mode": "train", "kernel": "math", "checkpointing": False,
                                 **memory_counts(model, inputs, backward=False)})
            model.eval()
            rows.append({**base, "mode": "inference", "kernel": "default", "checkpointing": False,
                         **inference_peak(model, inputs)})
            print(f"per-token: depth {depth}, {base['tokens']} tokens", file=sys.stderr, flush=True)
        del model
    return rows


def per_token_fits(rows: list[dict], num_layers: int) -> dict:
    """Per block (depth 2 - depth 1) and outside the blocks (depth 1 - per block), each count fitted
    in the token count; then the ``num_layers``-block model at 7,800 and 32,760 tokens."""
    fits: dict = {}
    groups = {(r["mode"], r["kernel"], r["checkpointing"]) for r in rows}
    for mode, kernel, checkpointing in sorted(groups):
        mine = [r for r in rows if (r["mode"], r["kernel"], r["checkpointing"]) == (mode, kernel, checkpointing)]
        name = f"{mode}/{kernel}/{'checkpointing' if checkpointing else 'no_checkpointing'}"
        fits[name] = {}
        for metric in ("saved", "retained", "peak"):
            by = {(r["depth"], r["tokens"]): r[metric] for r in mine if metric in r}
            tokens = sorted({n for d, n in by if d == 1 and (2, n) in by})
            if len(tokens) < 3:
                continue
            block = [by[2, n] - by[1, n] for n in tokens]
            outside = [by[1, n] - b for n, b in zip(tokens, block)]
            fits[name][metric] = {"per_block": fit(tokens, block), "outside_blocks": fit(tokens, outside),
                                  "tokens": tokens, "kernels": sorted({k for r in mine for k in r["kernels"]})}
    extrapolated = {}
    for name, metrics in fits.items():
        for metric, f in metrics.items():
            for tokens in (7800, 32760):
                if name.startswith("inference"):  # nothing is kept from block to block: the peak is one block's
                    value = fitted(f["outside_blocks"], tokens) + fitted(f["per_block"], tokens)
                else:
                    value = fitted(f["outside_blocks"], tokens) + num_layers * fitted(f["per_block"], tokens)
                extrapolated[f"{name}/{metric}@{tokens}"] = value / 1e9
    return {"fits": fits, "extrapolated_gb": extrapolated}


def machine() -> dict:
    """What the figures were measured on."""
    import platform

    import psutil

    info = Path("/proc/cpuinfo")
    names = [ln.split(":", 1)[1].strip() for ln in info.read_text().splitlines() if ln.startswith("model name")] \
        if info.exists() else []
    return {"cpu": names[0] if names else platform.processor(), "cores": os.cpu_count(),
            "ram_gb": round(psutil.virtual_memory().total / 1e9, 1), "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d"), "load_average": os.getloadavg()}  # a shared machine's times depend on it


def comparison(config: dict, report: dict) -> list[dict]:
    """The README's hand-counted estimates beside the CPU-measured, extrapolated figures (and the
    meta-device count when ``--meta`` ran): activations, and totals with weights, gradients and AdamW."""
    x = report["per_token"]["extrapolated_gb"]
    fits = report["per_token"]["fits"]
    model = build_dit(config, torch.bfloat16, "meta")
    weights = sum(p.numel() * p.element_size() for p in model.parameters()) / 1e9
    state = 4 * weights  # weights, gradients, AdamW's 2 moments: each the weights' size
    ema = sum(p.numel() for p in model.parameters()) * 4 / 1e9  # diffusers' EMAModel: float32 shadows
    per_block = lambda name, tokens: fitted(fits[name]["retained"]["per_block"], tokens) / 1e9  # noqa: E731
    meta = {t["checkpointing"]: t for t in report.get("meta_estimate", {}).get("training", [])}
    meta_inf = next((i for i in report.get("meta_estimate", {}).get("inference", []) if i["window_frames"] == 81), None)
    n = config["num_layers"]
    rows = [
        ("training activations per block, 7,800 tokens, no checkpointing (kept for backward)",
         HAND_COUNTED_GB["train_activations_per_block_7800"], per_block("train/default/no_checkpointing", 7800), None),
        (f"training, {n} checkpointed blocks' kept inputs, 7,800 tokens",
         HAND_COUNTED_GB["train_checkpointed_block_inputs_7800"], n * per_block("train/default/checkpointing", 7800), None),
        ("training activation peak, 7,800 tokens, no checkpointing", None,
         x["train/default/no_checkpointing/peak@7800"], meta.get(False, {}).get("activation_peak_gb")),
        ("training activation peak, 7,800 tokens, checkpointing", None,
         x["train/default/checkpointing/peak@7800"], meta.get(True, {}).get("activation_peak_gb")),
        ("training total (bf16 weights + grads + AdamW + activation peak), no checkpointing",
         HAND_COUNTED_GB["train_total_no_checkpointing_7800"], state + x["train/default/no_checkpointing/peak@7800"],
         meta.get(False, {}).get("total_gb")),
        ("training total (bf16 weights + grads + AdamW + activation peak), checkpointing",
         HAND_COUNTED_GB["train_total_checkpointing_7800"], state + x["train/default/checkpointing/peak@7800"],
         meta.get(True, {}).get("total_gb")),
        ("training total with the EMA on the device (float32 shadows, as the module keeps it), checkpointing", None,
         state + ema + x["train/default/checkpointing/peak@7800"], None),
        ("training activation peak, whole video (32,760 tokens), checkpointing", None,
         x["train/default/checkpointing/peak@32760"], None),
        ("inference DiT activation peak, 32,760 tokens", HAND_COUNTED_GB["inference_dit_block_32760"],
         x["inference/default/no_checkpointing/peak@32760"], None),
        ("inference total, 81x480x832 (DiT + VAE weights + VAE/DiT peak)", HAND_COUNTED_GB["inference_total_32760"],
         None, meta_inf and meta_inf["total_gb"]),
    ]
    return [{"figure": f, "hand_counted_estimate": h, "cpu_measured_extrapolated": c and round(c, 2),
             "meta_counted": m and round(m, 2)} for f, h, c, m in rows]



def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="real")
    parser.add_argument("--device", default=None, help="default: cuda for --size real, else cpu")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps (after one warm-up)")
    parser.add_argument("--window-frames", type=int, nargs="+", default=[81, 41, 21], help="inference windows to measure")
    parser.add_argument("--meta", action="store_true",
                        help="also estimate memory at --size on the meta device (no memory or GPU needed)")
    parser.add_argument("--per-token", action="store_true",
                        help="measure memory per token on CPU (depth 1 and 2 at --size's width) and extrapolate")
    parser.add_argument("--text-len", type=int, default=None, help="text tokens (default: --size's)")
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--skip-inference", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)

    from rvosflow.models.loader import resolve_dtype

    config, vae_kwargs, clip, video, text_len = SIZES[args.size]
    text_len = args.text_len or text_len
    dtype = resolve_dtype(args.dtype)
    device = args.device or ("cuda" if args.size == "real" else "cpu")
    report = {"size": args.size, "device": device, "dtype": args.dtype, "train_clip": clip, "inference_video": video,
              "dit_params": dit_param_count(config, 2 * LATENT), "dit_tokens_train": dit_tokens(config, *clip),
              "dit_tokens_inference": dit_tokens(config, *video), "text_len": text_len}
    if torch.device(device).type == "cuda":
        report["gpu"] = torch.cuda.get_device_name(device)
    if args.meta:
        report["meta_estimate"] = meta_estimate(config, vae_kwargs, clip, video, text_len, dtype, args.window_frames)
    if args.per_token:
        rows = measure_per_token(config, PER_TOKEN_CLIPS[args.size], text_len, dtype)
        report["per_token"] = {"label": "CPU-measured, extrapolated", "machine": machine(), "depths": DEPTHS, "rows": rows,
                               **per_token_fits(rows, config["num_layers"])}
        if args.size == "real":  # the README's hand counts are the real model's
            report["comparison_gb"] = comparison(config, report)
    if not args.skip_training:
        report["training"] = [bench_training(config, clip, text_len, dtype, device, c, args.steps) for c in (True, False)]
    if not args.skip_inference:
        report["inference"] = [bench_inference(config, vae_kwargs, video, text_len, dtype, device, w)
                               for w in args.window_frames]
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return report


if __name__ == "__main__":
    main()
