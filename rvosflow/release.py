"""The public FlowRVS release's weight files, read and written in their published layouts.

* ``mevis_ckpt.pth``: ``{"model": <DiT state dict>, "ema_model": <DiT state dict>}`` in diffusers'
  ``WanTransformer3DModel`` keys; the patch embedding takes ``2 x z_dim`` input channels with DVI
  (32 at the real size), ordered ``[z_t, z_video]``. The DiT emits Wan's sign (noise - data), the
  convention rvosflow's DiT uses too (DESIGN §3), so nothing is converted.
* ``decoder.pth``: the decoder tuner's state dict, i.e. an ``AutoencoderKLWan`` state dict whose
  keys carry a ``vae.`` prefix (possibly under ``model``), with a 1-channel ``decoder.conv_out``.

Both are read with ``torch.load(weights_only=True)``: plain tensors only, a file carrying code is
refused. ``python -m rvosflow.release export`` writes a run's checkpoint in the same layout.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from rvosflow.config import ConfigError, load_checkpoint

log = logging.getLogger(__name__)

DIT_WEIGHTS = ("ema", "model")  # model.dit_weights: which state dict of mevis_ckpt.pth
_DIT_KEY = {"ema": "ema_model", "model": "model"}
DECODER_PREFIX = "vae."


class ReleaseError(ConfigError):
    """A release-layout file that is missing, not plain data, or not in the published layout."""


def _load(path, key: str) -> dict:
    """A release file as plain data (``config.load_checkpoint``: code refused, every problem named)."""
    try:
        return load_checkpoint(path, key, what="a release-layout file")
    except ConfigError as e:
        raise ReleaseError(str(e)) from e


def _strip(state: dict, prefix: str) -> dict:
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}


def read_dit(path, weights: str = "ema") -> dict[str, torch.Tensor]:
    """The DiT state dict ``weights`` (``ema`` -> ``ema_model``, ``model``) of a ``mevis_ckpt.pth``."""
    if weights not in DIT_WEIGHTS:
        raise ReleaseError(f"model.dit_weights: unknown value {weights!r}; allowed: {', '.join(DIT_WEIGHTS)}")
    obj = _load(path, "model.dit_ckpt")
    key = _DIT_KEY[weights]
    if key not in obj:
        found = ", ".join(sorted(k for k in obj if isinstance(k, str))[:6]) or "nothing"
        hint = " (set model.dit_weights=model)" if key == "ema_model" and "model" in obj else ""
        raise ReleaseError(f"model.dit_ckpt: {path}: expected a {key!r} state dict{hint}, found keys {found}")
    state = _strip(obj[key], "module.")  # a DDP-wrapped save
    if "patch_embedding.weight" not in state or "proj_out.weight" not in state:
        raise ReleaseError(f"model.dit_ckpt: {path}[{key!r}]: expected WanTransformer3DModel keys "
                           "(patch_embedding.weight, proj_out.weight, ...), found none")
    return state


def dit_input_channels(state: dict[str, torch.Tensor]) -> int:
    """Input channels of the patch embedding (``[dim, in_channels, pt, ph, pw]``)."""
    return int(state["patch_embedding.weight"].shape[1])


def check_dit_channels(state: dict, latent_channels: int, expected: int, dvi: bool, path) -> None:
    """DVI is read off the patch embedding: ``2 x z_dim`` channels with it, ``z_dim`` without. A file
    that disagrees with the run config is an error naming both."""
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


def write(path, model: dict, ema_model: dict | None = None) -> Path:
    """``mevis_ckpt.pth`` in the release layout (tensors only, cloned so no storage is shared)."""
    out = {"model": {k: v.detach().cpu().clone() for k, v in model.items()}}
    if ema_model is not None:
        out["ema_model"] = {k: v.detach().cpu().clone() for k, v in ema_model.items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(out, path)
    return path


def write_decoder(path, vae) -> Path:
    """``decoder.pth`` in the release layout: the whole tuned VAE's state dict with a ``vae.`` prefix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({f"{DECODER_PREFIX}{k}": v.detach().cpu().clone() for k, v in vae.state_dict().items()}, path)
    return path


def export(ckpt_path, out_dir, decoder: str | None = None) -> dict[str, Path]:
    """A run's Lightning checkpoint -> ``<out_dir>/mevis_ckpt.pth`` (``model``, and ``ema_model``
    when the run kept an EMA) and, given a tuned decoder (a ``python -m rvosflow.decoder`` folder or a
    ``decoder.pth``), ``<out_dir>/decoder.pth``. Loadable back with ``model.dit_ckpt``/``model.vae_ckpt``."""
    from rvosflow.module import CONVENTION_KEY, DIT_CONVENTION, EMA_PREFIX

    ckpt = _load(ckpt_path, "ckpt")
    if ckpt.get(CONVENTION_KEY) != DIT_CONVENTION:
        raise ReleaseError(f"ckpt: {ckpt_path} predates the DiT's switch to Wan's sign (no {CONVENTION_KEY!r} tag); "
                           "validate it once with mode=validate (it is converted on load) or retrain it")
    state = ckpt.get("state_dict") or {}
    model = {k[len("transformer."):]: v for k, v in state.items() if k.startswith("transformer.")}
    ema = {k[len(EMA_PREFIX):]: v for k, v in state.items() if k.startswith(EMA_PREFIX)} or None
    if not model:
        raise ReleaseError(f"ckpt: {ckpt_path}: expected transformer.* weights, found none")
    out_dir = Path(out_dir)
    files = {"dit": write(out_dir / "mevis_ckpt.pth", model, ema)}
    if decoder:
        from rvosflow.decoder import load_tuned_state

        files["decoder"] = out_dir / "decoder.pth"
        state = load_tuned_state(decoder, "decoder")
        files["decoder"].parent.mkdir(parents=True, exist_ok=True)
        torch.save({f"{DECODER_PREFIX}{k}": v for k, v in state.items()}, files["decoder"])
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
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name, path in export(args.ckpt, args.out, args.decoder).items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
