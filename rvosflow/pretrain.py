"""Pretrain the tiny Wan bundle on the synthetic benchmark (CPU, minutes), so WI means what it means.

    python -m rvosflow.pretrain --data data/synthetic --out data/tiny-wan [--force] [--vae-steps N --t2v-steps N]

Reads the synthetic ``train`` split from disk through the real MeViS reader
(:class:`rvosflow.data.formats.mevis.MevisSource`) plus its ``captions.json`` and trains:

a. the VAE (``AutoencoderKLWan``) as an autoencoder of video clips (frames in [-1, 1]) and of
   binary masks (3 channels in {-1, 1}): L1 + MSE reconstruction + a small KL, on random spatial
   crops of whole clips (so every causal chunk position of a 17-frame clip is trained). Then the
   per-channel ``latents_mean`` / ``latents_std`` of the video posterior means on train are stored
   in the VAE config, as Wan does;
b. the UMT5 text encoder and the DiT jointly as a text-to-video flow-matching model with Wan's
   conventions: ``x_s = (1 - s) x0 + s noise`` with ``s`` the noise level, timestep ``1000 s``
   (1000 = noise end), rectified-flow target ``noise - x0``, ``s`` logit-normal (or uniform),
   conditioned on the scene caption.

Then it scores the VAE on ``valid_u`` (mask J&F of encode -> decode -> threshold, video PSNR),
samples one video from a caption by Euler integration with the scheduler (shift 3) and writes
``pretrain_report.json`` and ``t2v_sample.png`` into the bundle. Budgets are in steps, so a
bundle is reproducible from its settings on any machine. The bundle is written to a temporary
directory and swapped in only when complete; a complete ``--out`` is kept unless ``--force``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from rvosflow import atomic
from rvosflow.data.formats.mevis import MevisSource
from rvosflow.data.synthetic import vocabulary
from rvosflow.errors import DatasetFormatError, cli
from rvosflow.metrics.functional import jaccard_and_boundary_f
from rvosflow.models import encoding as E
from rvosflow.models.loader import WanBundle, check_bundle, is_complete_bundle, save_wan_bundle
from rvosflow.models.tiny import build_random_bundle, get_config

REPORT_NAME = "pretrain_report.json"
SAMPLE_NAME = "t2v_sample.png"


@dataclass
class PretrainConfig:
    """Every setting of the pretraining run (stored in the report)."""

    data: str = "data/synthetic"  # benchmark root; the MeViS splits are under <data>/mevis/
    out: str = "data/tiny-wan"
    arch: str = "tiny"  # tiny | test (rvosflow.models.tiny)
    seed: int = 0
    force: bool = False
    # VAE stage
    vae_steps: int = 700  # ~1.1 s per step on 2 cores: the whole pretraining fits `make tiny-wan`'s 20 minutes
    vae_batch: int = 2  # video clips per step
    vae_mask_batch: int = 8  # mask clips per step (mask reconstruction is what the ablations need)
    # Whole clips in time: the causal VAE encodes frame 0 alone, then chunks of 4 whose cache state
    # depends on the chunk's position; 9-frame training left the 4th and 5th chunks of 17-frame
    # clips at J ~0.6 against ~0.84 for the first ones (measured).
    vae_clip_frames: int = 17
    vae_crop: int | None = 32  # random square crops (None: full frames); ~4x cheaper than 64x64
    vae_lr: float = 3e-3
    vae_kl_weight: float = 1e-4  # on the per-element mean KL
    vae_mask_weight: float = 3.0
    vae_init_logvar: float | None = -6.0  # initial posterior log-variance (quant_conv bias); None: as built
    # T2V stage
    t2v_steps: int = 1200  # ~0.2 s per step of 8 clips at 320 tokens on 2 cores
    t2v_batch: int = 8
    t2v_lr: float = 5e-4
    t2v_weight_decay: float = 0.01
    t2v_t_sampling: str = "logit_normal"  # logit_normal | uniform (noise level s in (0, 1))
    max_text_length: int = 64
    log_every: int = 25
    # evaluation / sample
    eval_max_expressions: int | None = None  # valid_u expressions for the mask J&F (None: all)
    eval_max_videos: int | None = None  # valid_u videos for the PSNR (None: all)
    sample_steps: int = 30
    sample_captions: int = 2
    train_max_videos: int | None = None  # for tests
    progress: bool = True
    threads: int | None = None  # torch intra-op threads; None: auto (cores not already busy, >= 1)

    @property
    def mevis_root(self) -> Path:
        root = Path(self.data)
        return root / "mevis" if (root / "mevis").is_dir() else root


# ----------------------------------------------------------------------------- data
@dataclass
class Clip:
    video_id: str
    frames: np.ndarray  # uint8 [T, H, W, 3]
    caption: str
    masks: list[np.ndarray] = field(default_factory=list)  # bool [T, H, W] per expression


def load_split(split_dir: str | Path, max_videos: int | None = None, with_masks: bool = True) -> tuple[list[Clip], list]:
    """Read a MeViS-format split with the project's reader: clips (frames, caption, target masks) and expressions."""

    split_dir = Path(split_dir)
    src = MevisSource(split_dir)
    cap_file = split_dir / "captions.json"
    captions = json.loads(cap_file.read_text()) if cap_file.is_file() else {}
    by_video: dict[str, list] = {}
    for e in src.expressions:
        by_video.setdefault(e.video_id, []).append(e)
    vids = list(by_video)[: max_videos or None]
    clips, exprs = [], []
    for vid in vids:
        if vid not in captions:
            raise DatasetFormatError(f"{cap_file}: expected a caption for video {vid!r}, found none")
        c = Clip(vid, src.load_frames(vid), captions[vid])
        if with_masks and src.has_masks:
            for e in by_video[vid]:
                c.masks.append(src.load_target(e))
                exprs.append(e)
        clips.append(c)
    return clips, exprs


def collect_vocabulary(*clip_lists: list[Clip], exprs=()) -> list[str]:
    """Words of the synthetic language (``vocabulary()`` when available) plus every caption/expression seen."""
    words: list[str] = []
    try:

        words += list(vocabulary())
    except Exception:  # pragma: no cover - fall back to what is on disk
        pass
    for clips in clip_lists:
        words += [E.normalize_caption(c.caption) for c in clips]
    words += [E.normalize_caption(e.text) for e in exprs]
    return words


# ----------------------------------------------------------------------------- helpers
def _cosine(base: float, frac: float, floor: float = 0.05) -> float:
    return base * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * frac)))


def _subclip(arr: np.ndarray, n: int, rng: np.random.Generator, crop: int | None = None) -> np.ndarray:
    t, h, w = arr.shape[:3]
    n = min(n, E.valid_num_frames(t))
    s = int(rng.integers(0, t - n + 1))
    arr = arr[s: s + n]
    if crop and crop < h and crop < w:
        y, x = int(rng.integers(0, h - crop + 1)), int(rng.integers(0, w - crop + 1))
        if arr.dtype == bool and arr.any():  # masks: a crop that holds a random foreground pixel
            _, fy, fx = np.nonzero(arr)
            k = int(rng.integers(0, len(fy)))
            y = int(rng.integers(max(0, fy[k] - crop + 1), min(fy[k], h - crop) + 1))
            x = int(rng.integers(max(0, fx[k] - crop + 1), min(fx[k], w - crop) + 1))
        arr = arr[:, y: y + crop, x: x + crop]
    return arr


def _pbar(total, desc, enabled):
    return tqdm(total=total, desc=desc, disable=not enabled, dynamic_ncols=True, leave=True, file=sys.stderr)


# ----------------------------------------------------------------------------- stage a: VAE
def train_vae(vae, clips: list[Clip], cfg: PretrainConfig, rng: np.random.Generator) -> dict:
    """Autoencode video and mask sub-clips; returns a summary (steps, final losses, seconds)."""
    masks = [m for c in clips for m in c.masks]
    if cfg.vae_init_logvar is not None:  # start nearly deterministic: posterior std exp(-3) instead of ~1
        with torch.no_grad():
            z = vae.config.z_dim
            vae.quant_conv.bias[z:] = cfg.vae_init_logvar
    vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, betas=(0.9, 0.99), weight_decay=0.0)
    t0 = time.perf_counter()
    hist = []
    bar = _pbar(cfg.vae_steps, "VAE", cfg.progress)
    ema = None
    for step in range(1, cfg.vae_steps + 1):
        for g in opt.param_groups:
            g["lr"] = _cosine(cfg.vae_lr, (step - 1) / cfg.vae_steps)
        vid = [clips[i].frames for i in rng.integers(0, len(clips), cfg.vae_batch)]
        x_v = E.frames_to_pixels(np.stack([_subclip(v, cfg.vae_clip_frames, rng, cfg.vae_crop) for v in vid]))
        parts = [x_v]
        if masks:
            ms = [masks[i] for i in rng.integers(0, len(masks), cfg.vae_mask_batch)]
            parts.append(E.mask_to_pixels(np.stack([_subclip(m, cfg.vae_clip_frames, rng, cfg.vae_crop) for m in ms])))
        x = torch.cat(parts)
        if rng.random() < 0.5:  # horizontal flip: appearance only, no caption involved here
            x = x.flip(-1)
        dist = vae.encode(x).latent_dist
        rec = E.decode_raw(vae, dist.sample())
        err = (rec - x).abs() + (rec - x).pow(2)
        n_v = x_v.shape[0]
        loss_v = err[:n_v].mean()
        loss_m = err[n_v:].mean() if masks else torch.zeros(())
        kl = 0.5 * (dist.mean.pow(2) + dist.var - 1.0 - dist.logvar).mean()
        loss = loss_v + cfg.vae_mask_weight * loss_m + cfg.vae_kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        vals = (loss_v.item(), loss_m.item(), kl.item())
        ema = vals if ema is None else tuple(0.95 * a + 0.05 * b for a, b in zip(ema, vals))
        if step % cfg.log_every == 0:
            hist.append({"step": step, "video": ema[0], "mask": ema[1], "kl": ema[2]})
        bar.update(1)
        bar.set_postfix(video=f"{ema[0]:.3f}", mask=f"{ema[1]:.3f}", kl=f"{ema[2]:.2f}")
    bar.close()
    vae.eval()
    return {"steps": cfg.vae_steps, "seconds": round(time.perf_counter() - t0, 1),
            "final": dict(zip(("video", "mask", "kl"), ema or ())), "curve": hist}


@torch.no_grad()
def encode_clips(vae, clips: list[Clip], batch: int = 8, progress: bool = True, desc: str = "encode") -> torch.Tensor:
    """Raw posterior means of whole clips, ``[N, C, T_lat, H_lat, W_lat]``."""
    out = []
    for i in tqdm(range(0, len(clips), batch), desc=desc, disable=not progress, file=sys.stderr, dynamic_ncols=True):
        px = E.frames_to_pixels(np.stack([c.frames for c in clips[i: i + batch]]))
        out.append(E.vae_posterior(vae, px)[0])
    return torch.cat(out)


def set_latent_stats(vae, raw: torch.Tensor) -> dict:
    """Store per-channel mean/std of ``raw`` latents in the VAE config (``latents_mean``/``latents_std``)."""
    c = raw.shape[1]
    flat = raw.transpose(0, 1).reshape(c, -1).double()
    mean = flat.mean(1).float().tolist()
    std = flat.std(1).clamp_min(1e-4).float().tolist()
    vae.register_to_config(latents_mean=[round(v, 5) for v in mean], latents_std=[round(v, 5) for v in std])
    return {"latents_mean": vae.config.latents_mean, "latents_std": vae.config.latents_std}


@torch.no_grad()
def evaluate_vae(vae, clips: list[Clip], exprs: list, cfg: PretrainConfig) -> dict:
    """Mask J&F (encode -> decode -> threshold 0.5, DAVIS measures) and video PSNR on a split."""

    masks = [m for c in clips for m in c.masks][: cfg.eval_max_expressions or None]
    js, fs = [], []
    for i in tqdm(range(0, len(masks), 8), desc="eval masks", disable=not cfg.progress, file=sys.stderr,
                  dynamic_ncols=True):
        gt = np.stack(masks[i: i + 8])
        t = E.valid_num_frames(gt.shape[1])
        gt = gt[:, :t]
        pred = E.decode_mask(vae, E.encode_mask(vae, E.mask_to_pixels(gt), normalize=False), normalized=False)
        for p, g in zip(pred, gt):
            j, f = jaccard_and_boundary_f(p, torch.from_numpy(g))
            js.append(float(j.mean()))
            fs.append(float(f.mean()))
    vids = clips[: cfg.eval_max_videos or None]
    psnrs = []
    for i in tqdm(range(0, len(vids), 8), desc="eval video", disable=not cfg.progress, file=sys.stderr,
                  dynamic_ncols=True):
        fr = np.stack([c.frames for c in vids[i: i + 8]])
        fr = fr[:, : E.valid_num_frames(fr.shape[1])]
        px = E.frames_to_pixels(fr)
        rec = E.decode_video(vae, E.encode_video(vae, px), normalized=True)
        mse = ((rec.clamp(-1, 1) - px) / 2).pow(2).flatten(1).mean(1)
        psnrs += (10 * torch.log10(1.0 / mse.clamp_min(1e-10))).tolist()
    J = float(np.mean(js)) if js else float("nan")
    Fm = float(np.mean(fs)) if fs else float("nan")
    return {"mask_J": J, "mask_F": Fm, "mask_JF": (J + Fm) / 2, "expressions": len(js),
            "video_psnr_db": float(np.mean(psnrs)) if psnrs else float("nan"), "videos": len(psnrs)}


# ----------------------------------------------------------------------------- stage b: T2V
def sample_noise_level(n: int, how: str, gen: torch.Generator) -> torch.Tensor:
    """Noise level ``s`` in (0, 1) (Wan timestep = 1000 s): logit-normal(0, 1) or uniform."""
    if how == "logit_normal":
        return torch.sigmoid(torch.randn(n, generator=gen))
    if how == "uniform":
        return torch.rand(n, generator=gen).clamp(1e-3, 1 - 1e-3)
    raise ValueError(f"unknown t sampling {how!r}")


def train_t2v(bundle: WanBundle, latents: torch.Tensor, captions: list[str], cfg: PretrainConfig,
              gen: torch.Generator) -> dict:
    """Flow matching noise -> normalised video latent, conditioned on captions; text encoder trained jointly."""
    tr, te = bundle.transformer.train(), bundle.text_encoder.train()
    params = list(tr.parameters()) + list(te.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.t2v_lr, betas=(0.9, 0.999), weight_decay=cfg.t2v_weight_decay)
    t0 = time.perf_counter()
    curve, window = [], []
    bar = _pbar(cfg.t2v_steps, "T2V", cfg.progress)
    n = latents.shape[0]
    for step in range(1, cfg.t2v_steps + 1):
        for g in opt.param_groups:
            g["lr"] = _cosine(cfg.t2v_lr, (step - 1) / cfg.t2v_steps, floor=0.1)
        idx = torch.randint(0, n, (cfg.t2v_batch,), generator=gen)
        x0 = latents[idx]
        noise = torch.randn(x0.shape, generator=gen)
        s = sample_noise_level(len(idx), cfg.t2v_t_sampling, gen)
        sv = s.view(-1, 1, 1, 1, 1)
        xs = (1 - sv) * x0 + sv * noise
        emb = E.encode_text(te, bundle.tokenizer, [E.normalize_caption(captions[i]) for i in idx.tolist()], cfg.max_text_length,
                              grad=True)
        pred = tr(hidden_states=xs, timestep=s * 1000.0, encoder_hidden_states=emb).sample
        loss = F.mse_loss(pred, noise - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        window.append(loss.item())
        if step % cfg.log_every == 0:
            curve.append({"step": step, "loss": float(np.mean(window)), "seconds": round(time.perf_counter() - t0, 1)})
            window = []
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
    bar.close()
    if window:
        curve.append({"step": cfg.t2v_steps, "loss": float(np.mean(window)), "seconds": round(time.perf_counter() - t0, 1)})
    tr.eval()
    te.eval()
    seconds = time.perf_counter() - t0
    return {"steps": cfg.t2v_steps, "seconds": round(seconds, 1), "curve": curve,
            "sec_per_step": round(seconds / max(cfg.t2v_steps, 1), 4)}


@torch.no_grad()
def t2v_validation_loss(bundle: WanBundle, latents: torch.Tensor, captions: list[str], cfg: PretrainConfig,
                        seed: int = 1234, levels=(0.25, 0.5, 0.75)) -> dict:
    """Flow-matching loss at fixed noise levels on held-out latents (fixed noise), and with shuffled captions."""
    g = torch.Generator().manual_seed(seed)
    emb = E.encode_text(bundle.text_encoder, bundle.tokenizer, [E.normalize_caption(c) for c in captions], cfg.max_text_length)
    perm = torch.roll(torch.arange(len(captions)), 1)
    out = {}
    for s in levels:
        noise = torch.randn(latents.shape, generator=g)
        xs = (1 - s) * latents + s * noise
        t = torch.full((len(captions),), s * 1000.0)
        right = bundle.transformer(hidden_states=xs, timestep=t, encoder_hidden_states=emb).sample
        wrong = bundle.transformer(hidden_states=xs, timestep=t, encoder_hidden_states=emb[perm]).sample
        out[f"s={s}"] = {"matched_caption": F.mse_loss(right, noise - latents).item(),
                         "shuffled_caption": F.mse_loss(wrong, noise - latents).item()}
    return out


@torch.no_grad()
def generate(bundle: WanBundle, captions: list[str], latent_shape: tuple[int, ...], steps: int = 30,
             seed: int = 0, max_length: int = 64) -> torch.Tensor:
    """Text-to-video by Euler integration with the bundle's scheduler (shift 3); returns NORMALISED latents."""
    sched = bundle.scheduler
    sched.set_timesteps(steps)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((len(captions), *latent_shape), generator=g)
    emb = E.encode_text(bundle.text_encoder, bundle.tokenizer, [E.normalize_caption(c) for c in captions], max_length)
    for t in sched.timesteps:
        v = bundle.transformer(hidden_states=x, timestep=t.expand(len(captions)), encoder_hidden_states=emb).sample
        x = sched.step(v, t, x, return_dict=False)[0]
    return x


def save_strip(path: Path, rows: list[tuple[str, np.ndarray]], scale: int = 2) -> None:
    """PNG of labelled rows of frames (uint8 [T, H, W, 3] each)."""

    t, h, w, _ = rows[0][1].shape
    label_h = 12
    img = Image.new("RGB", (t * w * scale, len(rows) * (h * scale + label_h)), "white")
    draw = ImageDraw.Draw(img)
    for r, (label, frames) in enumerate(rows):
        y = r * (h * scale + label_h)
        draw.text((2, y), label[:160], fill=(0, 0, 0))
        for i, f in enumerate(frames):
            im = Image.fromarray(f).resize((w * scale, h * scale), Image.NEAREST)
            img.paste(im, (i * w * scale, y + label_h))
    img.save(path)


# ----------------------------------------------------------------------------- driver
def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def busy_cores(window: float = 0.5) -> float:
    """Cores busy right now, from two reads of ``/proc/stat`` ``window`` s apart.

    Not the load average: it lags by a minute, so right after another job had finished it still
    counted that job and the pretraining ran on 1 of 2 idle cores (seen). Falls back to it where
    there is no ``/proc/stat``.
    """
    def read() -> tuple[int, int]:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v), v[3] + (v[4] if len(v) > 4 else 0)  # total, idle + iowait

    n = os.cpu_count() or 1
    try:
        t0, i0 = read()
        time.sleep(window)
        t1, i1 = read()
        return n * (1.0 - (i1 - i0) / max(1, t1 - t0))
    except (OSError, ValueError, IndexError):
        try:
            return float(os.getloadavg()[0])
        except (AttributeError, OSError):
            return 0.0


def auto_threads() -> int:
    """CPU cores minus the cores busy now (at least 1).

    On a shared CPU, two processes each spinning 2 OpenMP threads on 2 cores run ~8x slower than
    with 1 thread each (measured), so the pretraining only takes the cores that are free.
    """
    n = os.cpu_count() or 1
    return max(1, min(n, n - int(round(busy_cores()))))


def pretrain(cfg: PretrainConfig) -> Path:
    """Run both stages and write the bundle to ``cfg.out``; returns the bundle path (cached unless force)."""
    out = Path(cfg.out)
    if not cfg.force and is_complete_bundle(out) and (out / REPORT_NAME).is_file():
        print(f"[pretrain] {out} already holds a complete bundle; use --force to retrain", file=sys.stderr)
        return out
    t_start = time.perf_counter()
    threads = cfg.threads or auto_threads()
    torch.set_num_threads(threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    arch = get_config(cfg.arch)

    root = cfg.mevis_root
    for split in ("train", "valid_u"):
        if not (root / split).is_dir():
            raise DatasetFormatError(f"{root / split}: expected a MeViS-layout split (run `make data`, or "
                                     f"python -m rvosflow.data.synthetic --out {cfg.data}), found nothing")
    t0 = time.perf_counter()
    train, train_exprs = load_split(root / "train", cfg.train_max_videos)
    valid, valid_exprs = load_split(root / "valid_u")
    t_load = time.perf_counter() - t0
    print(f"[pretrain] train: {len(train)} videos / {len(train_exprs)} masks; valid_u: {len(valid)} videos / "
          f"{len(valid_exprs)} masks ({t_load:.1f}s)", file=sys.stderr)
    vocab = collect_vocabulary(train, valid, exprs=train_exprs + valid_exprs)
    bundle = build_random_bundle(arch, vocab, seed=cfg.seed)
    T, H, W = train[0].frames.shape[:3]
    mult = E.spatial_multiple(bundle.vae, bundle.transformer)
    if H % mult or W % mult:
        raise DatasetFormatError(f"{root / 'train'}: expected clips whose H and W are multiples of {mult}, found {H}x{W}")

    # a. VAE
    vae_log = train_vae(bundle.vae, train, cfg, rng)
    t0 = time.perf_counter()
    train_raw = encode_clips(bundle.vae, train, progress=cfg.progress, desc="latents (train)")
    stats = set_latent_stats(bundle.vae, train_raw)
    train_lat = E.normalize_latents(bundle.vae, train_raw)
    t_lat = time.perf_counter() - t0
    t0 = time.perf_counter()
    vae_eval = evaluate_vae(bundle.vae, valid, valid_exprs, cfg)
    t_eval = time.perf_counter() - t0
    print(f"[pretrain] VAE on valid_u: mask J&F {vae_eval['mask_JF']:.4f} (J {vae_eval['mask_J']:.4f}, "
          f"F {vae_eval['mask_F']:.4f}), video PSNR {vae_eval['video_psnr_db']:.2f} dB", file=sys.stderr)

    # b. T2V
    t2v_log = train_t2v(bundle, train_lat, [c.caption for c in train], cfg, gen)
    n_val = min(len(valid), 16)
    val_lat = E.normalize_latents(bundle.vae, encode_clips(bundle.vae, valid[:n_val], progress=False))
    t2v_log["valid_u_loss"] = t2v_validation_loss(bundle, val_lat, [c.caption for c in valid[:n_val]], cfg)

    # sample + report, into a temp dir swapped in at the end
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        save_wan_bundle(bundle, tmp)
        t0 = time.perf_counter()
        picks = [train[int(i)] for i in np.linspace(0, len(train) - 1, cfg.sample_captions).round()]
        lat = generate(bundle, [c.caption for c in picks], tuple(train_lat.shape[1:]), cfg.sample_steps,
                       seed=cfg.seed, max_length=cfg.max_text_length)
        with torch.no_grad():
            gen_frames = E.pixels_to_frames(E.decode_video(bundle.vae, lat, normalized=True)).numpy()
        rows = []
        for c, g in zip(picks, gen_frames):
            rows.append((f"train video {c.video_id} (real): {c.caption}", c.frames[: g.shape[0]]))
            rows.append(("generated from the caption above", g))
        save_strip(tmp / SAMPLE_NAME, rows)
        t_sample = time.perf_counter() - t0
        sizes = {name: sum(p.numel() for p in m.parameters()) for name, m in bundle.modules().items()}
        report = {
            "config": asdict(cfg),
            "arch": arch,
            "data": {"root": str(root), "train_videos": len(train), "train_masks": len(train_exprs),
                     "valid_u_videos": len(valid), "valid_u_masks": len(valid_exprs), "clip": [T, H, W],
                     "latent": list(train_lat.shape[1:]), "vocab_size": len(bundle.tokenizer)},
            "parameters": sizes,
            "vae": {**vae_log, "valid_u": vae_eval, **stats},
            "t2v": t2v_log,
            "sample": {"captions": [c.caption for c in picks], "video_ids": [c.video_id for c in picks],
                       "steps": cfg.sample_steps, "shift": float(bundle.scheduler.config.shift), "file": SAMPLE_NAME},
            "seconds": {"load_data": round(t_load, 1), "vae_train": vae_log["seconds"], "latents": round(t_lat, 1),
                        "vae_eval": round(t_eval, 1), "t2v_train": t2v_log["seconds"], "sample": round(t_sample, 1)},
            "torch": torch.__version__,
            "threads": threads,
        }
        report["seconds"]["total"] = round(time.perf_counter() - t_start, 1)
        report["bundle_bytes"] = _dir_size(tmp)
        (tmp / REPORT_NAME).write_text(json.dumps(report, indent=1) + "\n")
        check_bundle(tmp)
        atomic.swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"[pretrain] wrote {out} ({report['bundle_bytes'] / 1e6:.1f} MB) in {report['seconds']['total']:.0f}s",
          file=sys.stderr)
    return out


def main(argv: list[str] | None = None) -> int:
    """The CLI; bad input is one line, exit 2 (:func:`rvosflow.errors.cli`)."""

    return cli(_main, argv)


def _main(argv: list[str] | None = None) -> int:
    d = PretrainConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=d.data, help="synthetic benchmark root (holds mevis/train, mevis/valid_u)")
    p.add_argument("--out", default=d.out, help="bundle directory to write")
    p.add_argument("--force", action="store_true", help="retrain even if --out holds a complete bundle")
    p.add_argument("--vae-steps", type=int, default=d.vae_steps, help="VAE training steps")
    p.add_argument("--t2v-steps", type=int, default=d.t2v_steps, help="text-to-video training steps")
    p.add_argument("--arch", default=d.arch, choices=["tiny", "test"])
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: free cores)")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    cfg = PretrainConfig(data=a.data, out=a.out, force=a.force, arch=a.arch, seed=a.seed, vae_steps=a.vae_steps,
                         t2v_steps=a.t2v_steps, progress=not a.no_progress, threads=a.threads)
    pretrain(cfg)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
