"""VAE decoder adaptation, as in the release and Table 3/4 (docs/design.md §3 "Decoder").

    python -m rvosflow.decoder --out outputs/decoder/tiny [overrides as run.py takes them]

replaces the VAE decoder's last conv (``conv_out``) by a 1-channel ``WanCausalConv3d`` logit head,
keeps the encoder frozen, trains the whole decoder on masks encoded with a *posterior sample*
(focal loss, alpha 0.25, gamma 2, plus dice; AdamW lr 8e-5, 1 epoch, batch 4: ``decoder.*``) and
saves the tuned VAE in the diffusers layout (``config.json`` with ``out_channels: 1`` and
``diffusion_pytorch_model.safetensors``). Any run, sweep or evaluation then picks a decoder with
``model.vae_decoder=frozen|tuned``: ``tuned`` reads ``model.vae_decoder_path`` (such a folder) or
``model.vae_ckpt`` (the release's ``decoder.pth``), and giving either selects ``tuned``.

Frozen decoder: the mean of the 3 decoded channels; tuned: the logits; either brought to the
frame size and thresholded by ``model.mask_rule`` (``encoding.field_to_masks``).

Only the decoder (``decoder.*``, ``post_quant_conv.*``) of a tuned file is used: the encoder stays
the bundle's, so the latent cache (keyed by the bundle's VAE files) is right for either decoder.

The head starts as the frozen decoder: its weights are ``HEAD_INIT_SCALE`` x the mean of the old
``conv_out``'s 3 output channels, so ``logit > 0`` where the frozen rule says mask (exactly so
wherever the decoder's 3 outputs stay inside the [-1, 1] that ``decode`` clamps them to).
``decoder.head_init=random`` gives a fresh conv; the release does not say which it used.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLWan

from rvosflow import atomic
from rvosflow.checkpoints import read_tuned_decoder
from rvosflow.config import compose, resolve
from rvosflow.data.setup import prepare_data
from rvosflow.data.transforms import pad_frames, padded_frame_count, resize_masks, windows
from rvosflow.errors import ArgumentParser, cli
from rvosflow.metrics import JandF, by_kind
from rvosflow.models import encoding
from rvosflow.models.loader import load_wan_bundle
from rvosflow.schema import HEAD_INITS, Decoder

log = logging.getLogger(__name__)

FROZEN, TUNED = "frozen", "tuned"
HEAD_INIT_SCALE = 4.0  # logit = 4 x the mean channel: +-1 (the frozen decoder's range) -> p 0.98 / 0.02
_DECODER_PARTS = ("decoder.", "post_quant_conv.")


# ----------------------------------------------------------------------------- losses
def focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Sigmoid focal loss (Lin et al.), mean over elements: ``-a_t (1 - p_t)^gamma log p_t``."""
    target = target.to(logits.dtype)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p = torch.sigmoid(logits)
    p_t = p * target + (1 - p) * (1 - target)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * target + (1 - alpha) * (1 - target)) * loss
    return loss.mean()


def dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """``1 - (2 |P G| + s) / (|P| + |G| + s)`` per sample on the sigmoid, averaged over the batch."""
    p = torch.sigmoid(logits).flatten(1)
    g = target.to(p.dtype).flatten(1)
    return (1 - (2 * (p * g).sum(1) + smooth) / (p.sum(1) + g.sum(1) + smooth)).mean()


# ----------------------------------------------------------------------------- the logit head
def with_logit_head(vae, init: str = "mean"):
    """A copy of ``vae`` whose decoder ends in a 1-channel ``WanCausalConv3d`` (kernel 3, padding 1).

    Built from the config with ``out_channels=1`` (so ``save_pretrained``/``from_pretrained``
    round-trip it); every other weight is copied. ``init="mean"`` makes it the frozen decoder's
    rule (see the module doc), ``"random"`` keeps the conv's default init.
    """
    if init not in HEAD_INITS:
        raise ValueError(f"head init: unknown value {init!r}; allowed: {', '.join(HEAD_INITS)}")
    if encoding.is_logit_decoder(vae):
        raise ValueError("the VAE's decoder already ends in a 1-channel logit head")
    dtype = next(vae.parameters()).dtype
    tuned = AutoencoderKLWan.from_config({**dict(vae.config), "out_channels": 1}).to(dtype)
    state = {k: v for k, v in vae.state_dict().items() if not k.startswith("decoder.conv_out.")}
    missing, unexpected = tuned.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith("decoder.conv_out.") for k in missing), (missing, unexpected)
    if init == "mean":
        old = vae.decoder.conv_out
        with torch.no_grad():
            tuned.decoder.conv_out.weight.copy_(HEAD_INIT_SCALE * old.weight.mean(0, keepdim=True))
            tuned.decoder.conv_out.bias.copy_(HEAD_INIT_SCALE * old.bias.mean(0, keepdim=True))
    return tuned.to(next(vae.parameters()).device).eval()


def tuned_vae(base_vae, state: dict[str, torch.Tensor], source: str = "the tuned decoder"):
    """``base_vae`` with the decoder (``decoder.*``, ``post_quant_conv.*``) of ``state`` and a logit head.

    The encoder stays ``base_vae``'s (the latents, and their cache, do not depend on the decoder);
    an encoder in ``state`` that differs from it is reported, not used."""
    if int(state["decoder.conv_out.weight"].shape[0]) != 1:
        raise ValueError(f"{source}: expected a 1-channel decoder.conv_out (a tuned mask decoder), "
                         f"found {int(state['decoder.conv_out.weight'].shape[0])} channels")
    vae = with_logit_head(base_vae, init="random")
    own = vae.state_dict()
    decoder = {k: v for k, v in state.items() if k.startswith(_DECODER_PARTS)}
    missing = sorted(k for k in own if k.startswith(_DECODER_PARTS) and k not in decoder)
    if missing:
        raise ValueError(f"{source}: expected every decoder weight of this VAE, missing {len(missing)} "
                         f"(e.g. {missing[0]})")
    wrong = [k for k, v in decoder.items() if k not in own or own[k].shape != v.shape]
    if wrong:
        raise ValueError(f"{source}: decoder weights do not fit this VAE (e.g. {wrong[0]})")
    vae.load_state_dict(decoder, strict=False)
    base = base_vae.state_dict()
    differs = [k for k, v in state.items() if not k.startswith(_DECODER_PARTS) and k in base
               and (base[k].shape != v.shape or not torch.equal(base[k].to(v.dtype), v))]
    if differs:
        log.warning("%s: its encoder differs from the bundle's in %d tensors; the bundle's is kept "
                    "(the DiT's latents come from it)", source, len(differs))
    return vae.eval()


def select_vae(model_cfg, vae):
    """The VAE of a run: the bundle's (``model.vae_decoder=frozen``) or with the tuned decoder of
    ``model.vae_decoder_path`` / ``model.vae_ckpt`` (``tuned``). ``config.resolve`` checked the keys."""
    if model_cfg.vae_decoder == FROZEN:
        return vae
    key = "model.vae_ckpt" if model_cfg.vae_ckpt else "model.vae_decoder_path"
    path = model_cfg.vae_ckpt or model_cfg.vae_decoder_path
    tuned = tuned_vae(vae, read_tuned_decoder(path, key), f"{key}={path}")
    log.info("VAE decoder: tuned (1-channel logit head) from %s", path)
    return tuned.to(next(vae.parameters()).device)


# ----------------------------------------------------------------------------- training
def mask_loss(logits: torch.Tensor, mask: torch.Tensor, s: Decoder) -> torch.Tensor:
    return focal_loss(logits, mask, s.focal_alpha, s.focal_gamma) + s.dice_weight * dice_loss(logits, mask)


def crop_masks(mask: torch.Tensor, crop: int | None, frames: int | None, generator: torch.Generator) -> torch.Tensor:
    """The first ``frames`` frames and one random ``crop x crop`` window of a batch ``[B, T, H, W]``."""
    if frames:
        mask = mask[:, :frames]
    if crop and (crop < mask.shape[-2] or crop < mask.shape[-1]):
        h, w = min(crop, mask.shape[-2]), min(crop, mask.shape[-1])
        y = int(torch.randint(0, mask.shape[-2] - h + 1, (1,), generator=generator))
        x = int(torch.randint(0, mask.shape[-1] - w + 1, (1,), generator=generator))
        mask = mask[..., y:y + h, x:x + w]
    return mask


def train_decoder(vae, loader, settings: Decoder = Decoder(), device="cpu",
                  generator: torch.Generator | None = None, log_every: int = 20) -> tuple[object, dict]:
    """Tune a logit-head copy of ``vae`` on the masks of ``loader`` (batches with ``mask``: bool
    ``[B, T, H, W]``, T = 1 + 4k). The encoder is frozen; each mask is encoded, a posterior sample
    drawn and decoded to logits. Returns the tuned VAE (eval mode) and a history."""
    tuned = with_logit_head(vae, settings.head_init).to(device)
    tuned.requires_grad_(False)
    tuned.decoder.requires_grad_(True)
    tuned.decoder.train()
    params = [p for p in tuned.decoder.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    history = {"loss": [], "steps": 0, "seconds": 0.0}
    start = time.perf_counter()
    crop_gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
    for epoch in range(settings.epochs):
        for batch in loader:
            mask = crop_masks(batch["mask"], settings.crop, settings.frames, crop_gen).to(device)
            with torch.no_grad():
                dist = tuned.encode(encoding.mask_to_pixels(mask).to(device)).latent_dist
                z = dist.mean + dist.std * torch.randn(dist.mean.shape, generator=generator, device=device)
            logits = encoding.decode_raw(tuned, z)[:, 0].float()
            loss = mask_loss(logits, mask.float(), settings)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            history["loss"].append(loss.item())
            history["steps"] += 1
            if log_every and history["steps"] % log_every == 0:
                log.info("decoder step %d  loss %.4f", history["steps"], history["loss"][-1])
            if settings.max_steps and history["steps"] >= settings.max_steps:
                break
        if settings.max_steps and history["steps"] >= settings.max_steps:
            break
    history["seconds"] = time.perf_counter() - start
    tuned.requires_grad_(False)
    return tuned.eval(), history


# ----------------------------------------------------------------------------- Recon
@torch.no_grad()
def reconstruction_scores(vaes: dict, source, size_fn, window_frames: int | None = None, device="cpu",
                          limit: int | None = None, batch_size: int = 8, rule: str = "release") -> dict[str, dict]:
    """Table 3's Recon for each named VAE of ``vaes`` (they share the encoder): J&F (percent) of the
    reconstruction of the ground-truth masks of ``source``. Each mask is resized to the model's size,
    encoded once (posterior mean), decoded by each VAE's decoder and brought back to the original size
    by the mask rule (``model.mask_rule``), and scored against the original. Equally shaped masks go
    through the VAE together."""
    names = list(vaes)
    encoder = vaes[names[0]]
    metrics = {n: JandF() for n in names}
    tf = encoding.temporal_factor(encoder)
    expressions = source.expressions[:limit] if limit else source.expressions
    targets = [torch.as_tensor(source.load_target(e)) for e in expressions]
    groups: dict[tuple, list[int]] = {}
    for i, t in enumerate(targets):
        groups.setdefault(tuple(t.shape), []).append(i)
    for shape, members in groups.items():
        for k in range(0, len(members), batch_size):
            idx = members[k:k + batch_size]
            small = torch.stack([resize_masks(targets[i], size_fn(*shape[1:3])) for i in idx])
            fields = {n: [] for n in names}
            for a, b in windows(small.shape[1], window_frames or small.shape[1]):
                clip = pad_frames(small[:, a:b], padded_frame_count(b - a, tf), dim=1)
                z = encoding.encode_mask(encoder, encoding.mask_to_pixels(clip).to(device))
                for n in names:
                    fields[n].append(encoding.mask_field(vaes[n], z)[:, : b - a].cpu())
            for n in names:
                logits = encoding.is_logit_decoder(vaes[n])
                for j, i in enumerate(idx):
                    pred = encoding.field_to_masks(torch.cat([f[j] for f in fields[n]]), tuple(shape[1:3]), rule, logits)
                    metrics[n].update(pred, targets[i], kinds=[getattr(expressions[i], "kind", "")])
    out = {}
    for n in names:
        scores = metrics[n].compute()
        out[n] = {"J": 100 * float(scores["J"]), "F": 100 * float(scores["F"]), "JF": 100 * float(scores["JF"]),
                  "n": len(expressions), "per_kind": by_kind(scores)}
    return out


# ----------------------------------------------------------------------------- the command
def tune(cfg, out_dir, score: bool = True, recon_limit: int | None = None) -> dict:
    """Tune the decoder of the run config ``cfg``'s bundle (``decoder.*``) on ``data.train_split``,
    save it to ``out_dir`` and (``score``) measure Recon of both decoders on ``data.val_split``."""
    L.seed_everything(cfg.seed, workers=True)
    s = cfg.decoder
    device = "cuda" if torch.cuda.is_available() and cfg.trainer.get("accelerator") in ("auto", "gpu", "cuda") else "cpu"
    bundle = load_wan_bundle(cfg.model.path, components=("transformer", "vae"), device=device)
    base = bundle.vae  # the bundle's own decoder, whatever model.vae_decoder says
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, batch_size=s.batch_size))
    dm = prepare_data(cfg)
    generator = torch.Generator(device=device).manual_seed(int(cfg.seed))
    tuned, history = train_decoder(base, dm.train_dataloader(), s, device, generator)
    out_dir = Path(out_dir)
    tuned.save_pretrained(str(out_dir), safe_serialization=True)
    report = {"out": str(out_dir), "settings": dataclasses.asdict(s), "train_split": dm.train_split, "steps": history["steps"],
              "seconds": round(history["seconds"], 1), "loss_first": history["loss"][:1],
              "loss_last20": sum(history["loss"][-20:]) / max(1, len(history["loss"][-20:]))}
    if score:
        t0 = time.perf_counter()
        recon = reconstruction_scores({FROZEN: base, TUNED: tuned}, dm.eval_source(dm.val_split), dm.size_fn,
                                      cfg.window_frames, device, limit=recon_limit, rule=cfg.model.mask_rule)
        report.update({f"recon_{name}": r for name, r in recon.items()}, recon_seconds=round(time.perf_counter() - t0, 1))
    atomic.write_text(out_dir / "decoder_report.json", json.dumps(report, indent=2))
    return report


def _main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m rvosflow.decoder", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for the tuned VAE (diffusers layout)")
    parser.add_argument("--no-score", action="store_true", help="skip Recon of both decoders on data.val_split")
    parser.add_argument("overrides", nargs="*", help="config overrides as run.py takes them (data=..., decoder.lr=...)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    report = tune(resolve(compose(args.overrides)), args.out, score=not args.no_score)
    line = f"decoder tuned: {report['steps']} steps in {report['seconds']:.0f} s -> {report['out']}"
    if "recon_frozen" in report:
        line += f"; Recon J&F frozen {report['recon_frozen']['JF']:.1f}, tuned {report['recon_tuned']['JF']:.1f}"
    print(line)
    return 0


def main(argv: list[str] | None = None) -> int:
    """The CLI; bad input is one line, exit 2 (:func:`rvosflow.errors.cli`)."""
    return cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
