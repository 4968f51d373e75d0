"""The public FlowRVS release's weight files, read and written as its own code writes them.

Facts from the release's ``main.py`` / ``inference_mevis.py`` (github.com/xmz111/FlowRVS, commit
``f133982``; ``../shared/fixtures/flowrvs-release/README.md`` is the specification, made by running
that code):

* ``mevis_ckpt.pth`` is ``torch.save(..., _use_new_zipfile_serialization=False)`` -- a legacy
  (non-zip) pickle -- of ``{model, ema_model, optimizer, lr_scheduler, epoch, args}``.
  ``model`` is the DiT's state dict in diffusers' ``WanTransformer3DModel`` names (bf16; a patch
  embedding of ``2 x z_dim`` input channels with DVI, ordered ``[z_t, z_video]``). ``ema_model`` is
  ``diffusers.training_utils.EMAModel.state_dict()``: decay, optimization_step, ... and
  ``shadow_params``, a *list* of float32 tensors in the ``parameters()`` order of the release's own
  DiT class, a fork of diffusers' that registers ``norm_q``/``norm_k`` before ``to_q`` inside each
  attention (:func:`release_param_order`). ``args`` is an ``argparse.Namespace``. The release's
  inference loads ``model`` non-strictly, then copies the EMA weights over it.
* ``decoder.pth`` is ``{'model': state_dict}`` of the release's ``MaskVAEFinetuner``: every key an
  ``AutoencoderKLWan`` key with a ``vae.`` prefix, a 1-channel ``decoder.conv_out``.

Both are read with ``torch.load(weights_only=True)`` (``config.load_checkpoint``): plain data, plus
exactly the one class these files need (``argparse.Namespace``); a file carrying code is refused,
never run. The DiT emits Wan's sign (noise - data), rvosflow's convention too (DESIGN §3), so no
weight is converted. ``python -m rvosflow.release export`` writes a run's checkpoint the same way.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from rvosflow.config import ConfigError, load_checkpoint

log = logging.getLogger(__name__)

DIT_WEIGHTS = ("ema", "model")  # model.dit_weights: the EMA (what the release's inference uses) or the trained weights
DECODER_PREFIX = "vae."
RELEASE_CLASSES = (argparse.Namespace,)  # ``args`` in mevis_ckpt.pth: the one class allowed besides plain data
# diffusers' EMAModel defaults, as the release constructs it (main.py: EMAModel(..., decay=0.9999)).
EMA_STATE_DEFAULTS = {"min_decay": 0.0, "update_after_step": 0, "use_ema_warmup": False, "inv_gamma": 1.0,
                      "power": 2 / 3}


class ReleaseError(ConfigError):
    """A release-layout file that is missing, not plain data, or not in the published layout."""


def _load(path, key: str) -> dict:
    """A release file as plain data (``config.load_checkpoint``: code refused, every problem named)."""
    try:
        return load_checkpoint(path, key, what="a release-layout file", allowed=RELEASE_CLASSES)
    except ConfigError as e:
        raise ReleaseError(str(e)) from e


def _strip(state: dict, prefix: str) -> dict:
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}


def release_param_order(names: list[str]) -> list[str]:
    """The release fork's ``parameters()`` order, given diffusers' ``WanTransformer3DModel`` names in
    diffusers' order: inside each attention the fork registers ``norm_q`` and ``norm_k`` before
    ``to_q``; everything else is in the same order (13 + 27 x blocks + 2 entries; 825 at 1.3B)."""
    def scope(name: str) -> str | None:  # "blocks.0.attn1." for an attention's parameters
        parts = name.split(".")
        return ".".join(parts[:3]) + "." if len(parts) > 3 and parts[2].startswith("attn") else None

    out: list[str] = []
    for name in names:
        s = scope(name)
        if s is not None and name[len(s):].startswith(("norm_q.", "norm_k.")):
            continue  # placed with its attention's first entry below
        if s is not None and not any(n.startswith(s) for n in out):
            out += [n for n in names if n.startswith(s) and n[len(s):].startswith(("norm_q.", "norm_k."))]
        out.append(name)
    return out


def ema_to_state(ema_state: dict, target: torch.nn.Module, path) -> dict[str, torch.Tensor]:
    """The weights of an ``EMAModel.state_dict()`` (release order) as a state dict of ``target``
    (a diffusers ``WanTransformer3DModel``); a count or shape that does not fit is an error naming
    the file, never a silent mismatch (mapping in diffusers' order would put 80 tensors on the wrong
    names at the tiny size)."""
    shadows = ema_state.get("shadow_params")
    if not isinstance(shadows, (list, tuple)) or not all(isinstance(t, torch.Tensor) for t in shadows):
        raise ReleaseError(f"model.dit_ckpt: {path}: expected ema_model['shadow_params'] as a list of tensors "
                           f"(diffusers EMAModel.state_dict()), found {type(shadows).__name__}")
    params = dict(target.named_parameters())
    order = release_param_order(list(params))
    if len(shadows) != len(order):
        raise ReleaseError(f"model.dit_ckpt: {path}: expected {len(order)} EMA shadow tensors for this DiT "
                           f"(the release's parameter order), found {len(shadows)}")
    for name, tensor in zip(order, shadows):
        if tuple(tensor.shape) != tuple(params[name].shape):
            raise ReleaseError(f"model.dit_ckpt: {path}: EMA shadow for {name} has shape {list(tensor.shape)}, "
                               f"this DiT's is {list(params[name].shape)}")
    return dict(zip(order, shadows))


def read_dit(path, weights: str, target: torch.nn.Module, check=None) -> dict[str, torch.Tensor]:
    """The DiT weights ``weights`` of a ``mevis_ckpt.pth`` as a state dict of ``target``: ``model``,
    or ``ema`` = ``model`` with the EMA weights copied over it (the release's inference). An
    ``ema_model`` that is a named state dict (rvosflow's exports before the release's code was
    public) is taken as it is. A file whose EMA cannot be mapped is an error, not a fallback to
    ``model``: its score would silently be another model's (min IoU 0.855 on the fixture).
    ``check(model_state)`` runs before the EMA is mapped (the DVI check, which names the setting)."""
    if weights not in DIT_WEIGHTS:
        raise ReleaseError(f"model.dit_weights: expected one of {', '.join(DIT_WEIGHTS)}, got {weights!r}")
    obj = _load(path, "model.dit_ckpt")
    if not isinstance(obj.get("model"), dict):
        found = ", ".join(sorted(k for k in obj if isinstance(k, str))[:6]) or "nothing"
        raise ReleaseError(f"model.dit_ckpt: {path}: expected a 'model' state dict, found keys {found}")
    state = _strip(obj["model"], "module.")  # a DDP-wrapped save
    if "patch_embedding.weight" not in state or "proj_out.weight" not in state:
        raise ReleaseError(f"model.dit_ckpt: {path}['model']: expected WanTransformer3DModel keys "
                           "(patch_embedding.weight, proj_out.weight, ...), found none")
    if check is not None:  # e.g. check_dit_channels, before the EMA is mapped onto this DiT's shapes
        check(state)
    if weights == "model":
        return state
    ema = obj.get("ema_model")
    if not isinstance(ema, dict):
        raise ReleaseError(f"model.dit_ckpt: {path}: expected an 'ema_model' (set model.dit_weights=model "
                           "to use the trained weights), found none")
    if "shadow_params" in ema:
        return {**state, **ema_to_state(ema, target, path)}
    return {**state, **_strip(ema, "module.")}


def dit_input_channels(state: dict[str, torch.Tensor]) -> int:
    """Input channels of the patch embedding (``[dim, in_channels, pt, ph, pw]``)."""
    return int(state["patch_embedding.weight"].shape[1])


def check_dit_channels(state: dict, latent_channels: int, expected: int, dvi: bool, path) -> None:
    """DVI is read off the patch embedding: ``2 x z_dim`` channels with it, ``z_dim`` without (the
    release's ``args.use_dvi`` is an untyped string, so the file's shape is what holds). A file that
    disagrees with the run config is an error naming both."""
    found = dit_input_channels(state)
    if found == expected:
        return
    theirs = {latent_channels: "DVI off", 2 * latent_channels: "DVI on"}.get(found, "neither DVI setting")
    raise ReleaseError(f"model.dit_ckpt: {path} has a patch embedding of {found} input channels ({theirs}); "
                       f"this run (dvi.enabled={str(dvi).lower()}) expects {expected}")


def read_decoder(path) -> dict[str, torch.Tensor]:
    """The ``AutoencoderKLWan`` state dict of a ``decoder.pth`` (``vae.`` prefix and ``model`` nesting removed)."""
    obj = _load(path, "model.vae_ckpt")
    if "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    state = _strip(_strip(obj, "module."), DECODER_PREFIX)
    if "decoder.conv_out.weight" not in state:
        raise ReleaseError(f"model.vae_ckpt: {path}: expected AutoencoderKLWan keys "
                           "(decoder.conv_out.weight, ...), found none")
    return state


def ema_state(shadows: dict[str, torch.Tensor], names: list[str], decay: float, optimization_step: int) -> dict:
    """An ``EMAModel.state_dict()`` the release's ``EMAModel.load_state_dict`` takes: ``shadows``
    (by diffusers name) as a float32 list in the release's parameter order."""
    order = release_param_order(names)
    return {"decay": float(decay), **EMA_STATE_DEFAULTS, "optimization_step": int(optimization_step),
            "shadow_params": [shadows[n].detach().cpu().float().clone() for n in order]}


def _save_legacy(obj, path: Path) -> Path:
    """``torch.save`` in the legacy (non-zip) format the release writes, atomically."""
    from rvosflow.latents import save_atomically

    save_atomically(obj, path, legacy=True)
    return path


def write(path, model: dict, ema: dict | None, use_dvi: bool, epoch: int = 0) -> Path:
    """``mevis_ckpt.pth`` as the release's ``main.py`` writes it: ``model`` (tensors cloned, so no
    storage is shared), ``ema_model`` (an :func:`ema_state` dict) when given, ``epoch`` and ``args``
    (a Namespace with ``use_dvi`` as the string the release's argparse stores)."""
    out = {"model": {k: v.detach().cpu().clone() for k, v in model.items()}, "epoch": int(epoch),
           "args": argparse.Namespace(use_dvi=str(bool(use_dvi)), source="rvosflow.release export")}
    if ema is not None:
        out["ema_model"] = ema
    return _save_legacy(out, Path(path))


def write_decoder(path, state: dict[str, torch.Tensor]) -> Path:
    """``decoder.pth`` as the release stores it: ``{'model': <vae.-prefixed AutoencoderKLWan state>}``."""
    return _save_legacy({"model": {f"{DECODER_PREFIX}{k}": v.detach().cpu().clone() for k, v in state.items()}},
                        Path(path))


def export(ckpt_path, out_dir, decoder: str | None = None, overwrite: bool = False) -> dict[str, Path]:
    """A run's Lightning checkpoint -> ``<out_dir>/mevis_ckpt.pth`` (``model``, and ``ema_model`` when
    the run kept an EMA) and, given a tuned decoder (a ``python -m rvosflow.decoder`` folder or a
    ``decoder.pth``), ``<out_dir>/decoder.pth``, both as the release writes them: the release's own
    loader reads them back with the EMA applied, and so do ``model.dit_ckpt`` / ``model.vae_ckpt``.
    An existing export is never replaced unless ``overwrite``."""
    from rvosflow.module import CONVENTION_KEY, DIT_CONVENTION, EMA_KEY, ema_shadows_by_name

    ckpt = _load(ckpt_path, "ckpt")
    if ckpt.get(CONVENTION_KEY) != DIT_CONVENTION:
        raise ReleaseError(f"ckpt: {ckpt_path} predates the DiT's switch to Wan's sign (no {CONVENTION_KEY!r} tag); "
                           "validate it once with mode=validate (it is converted on load) or retrain it")
    state = ckpt.get("state_dict") or {}
    model = {k[len("transformer."):]: v for k, v in state.items() if k.startswith("transformer.")}
    if not model:
        raise ReleaseError(f"ckpt: {ckpt_path}: expected transformer.* weights, found none")
    out_dir = Path(out_dir)
    files = {"dit": out_dir / "mevis_ckpt.pth", **({"decoder": out_dir / "decoder.pth"} if decoder else {})}
    existing = [p for p in files.values() if p.exists()]
    if existing and not overwrite:
        raise ReleaseError(f"--out: {existing[0]} exists: expected a new export folder (pass --overwrite to replace it)")
    ema = None
    if ckpt.get(EMA_KEY):
        names = list(model)  # diffusers' parameter order: the DiT's state dict has no buffers
        ema = ema_state(ema_shadows_by_name(ckpt[EMA_KEY], names), names, ckpt[EMA_KEY]["decay"],
                        ckpt[EMA_KEY]["optimization_step"])
    run_config = (ckpt.get("hyper_parameters") or {}).get("run_config") or {}
    use_dvi = bool((run_config.get("dvi") or {}).get("enabled", False))
    write(files["dit"], model, ema, use_dvi, epoch=int(ckpt.get("epoch", 0)))
    if decoder:
        from rvosflow.decoder import load_tuned_state

        write_decoder(files["decoder"], load_tuned_state(decoder, "--decoder"))
    log.info("exported %s (model%s)%s", files["dit"], " + ema_model" if ema else "",
             f" and {files['decoder']}" if decoder else "")
    return files


def main(argv: list[str] | None = None) -> int:
    """The CLI; bad input is one line, exit 2 (:func:`rvosflow.errors.cli`)."""
    from rvosflow.errors import cli

    return cli(_main, argv)


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rvosflow.release", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("export", help="a run's checkpoint -> mevis_ckpt.pth (+ decoder.pth) in the release layout")
    ex.add_argument("ckpt", help="a run's Lightning checkpoint (outputs/<date>/<time>/checkpoints/last.ckpt)")
    ex.add_argument("--out", required=True, help="folder for mevis_ckpt.pth and decoder.pth")
    ex.add_argument("--decoder", default=None, help="a tuned decoder: python -m rvosflow.decoder's folder or a decoder.pth")
    ex.add_argument("--overwrite", action="store_true", help="replace an existing export in --out")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name, path in export(args.ckpt, args.out, args.decoder, args.overwrite).items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
