"""Every weight file rvosflow reads or writes, in one place: Lightning checkpoints of a run, the
public FlowRVS release's ``mevis_ckpt.pth`` / ``decoder.pth``, and tuned decoders.

    python -m rvosflow.checkpoints export CKPT --out DIR [--decoder DIR_OR_PTH]   # a run -> the release's layout

**Loading** (:func:`load`) is ``torch.load(weights_only=True)`` from either container torch writes
(zip, or the legacy pickle the release writes): plain data, plus exactly the classes a file needs
(the release's ``args`` Namespace); a file carrying anything else is refused, never run.

**A run's checkpoint** (Lightning) holds the DiT under ``transformer.*`` (:func:`dit_state`), the
tag ``dit_convention: wan`` (the DiT emits Wan's sign; an untagged checkpoint predates that and is
converted exactly by negating ``proj_out``, :func:`convert_old_sign`), the EMA as diffusers'
``EMAModel.state_dict()`` under ``ema`` (older ones: a second state dict under
``ema_transformer.*``), and its resolved run config under ``hyper_parameters.run_config``
(:func:`stored_config`; keys an older config lacked read as :data:`LEGACY_VALUES` say).

**The release's files** (github.com/xmz111/FlowRVS, commit f133982; ``shared/fixtures/flowrvs-release``
is the specification): ``mevis_ckpt.pth`` = ``{model, ema_model, optimizer, lr_scheduler, epoch,
args}``, ``model`` a bf16 state dict in diffusers' ``WanTransformer3DModel`` names (``2 x z_dim``
input channels with DVI, ``[z_t, z_video]``), ``ema_model`` an ``EMAModel.state_dict()`` whose
``shadow_params`` list follows the release fork's parameter order (:func:`release_param_order`);
its inference copies the EMA over ``model``. ``decoder.pth`` = ``{'model': <vae.-prefixed
AutoencoderKLWan state>}`` with a 1-channel ``decoder.conv_out``.
"""

from __future__ import annotations

import argparse
import logging
import pickle
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from rvosflow import atomic
from rvosflow.errors import ArgumentParser, CheckpointError, cli
from rvosflow.models.dit import negate_output

log = logging.getLogger(__name__)

CONVENTION_KEY, DIT_CONVENTION = "dit_convention", "wan"
EMA_KEY = "ema"                       # diffusers EMAModel.state_dict(), shadows in diffusers' order
EMA_PREFIX = "ema_transformer."       # the EMA of checkpoints written before (a second state dict)
DIT_PREFIX = "transformer."
DECODER_PREFIX = "vae."
RELEASE_CLASSES = (argparse.Namespace,)  # ``args`` in mevis_ckpt.pth: the one class allowed besides plain data
# diffusers' EMAModel defaults, as the release constructs it (main.py: EMAModel(..., decay=0.9999)).
EMA_STATE_DEFAULTS = {"min_decay": 0.0, "update_after_step": 0, "use_ema_warmup": False, "inv_gamma": 1.0,
                      "power": 2 / 3}
# A checkpoint whose stored config predates a key was made with the behaviour these values name
# (what rvosflow did before the release's conventions became settings), or under an older key.
LEGACY_VALUES = {"bbs.sampler": "bernoulli", "text.clean": "whitespace", "text.lowercase": "always",
                 "model.mask_rule": "antialias", "window_frames": 81, "data.size_multiple": None}
LEGACY_KEYS = {"text.max_length": "model.text_max_length"}
# The first bytes of what torch.save writes: a zip archive, or (legacy) a pickle stream, protocol 2 and up.
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_MAGIC = tuple(bytes([0x80, n]) for n in range(2, 6))


# ----------------------------------------------------------------------------- loading

def last_checkpoint(run_dir) -> Path:
    """A run's checkpoint, ``<run dir>/checkpoints/last.ckpt``: what training writes (trainer.Checkpoints),
    a stopped run resumes from, and the run's MLflow logged model holds."""
    return Path(run_dir) / "checkpoints" / "last.ckpt"


def load(path, key: str, what: str = "a Lightning checkpoint", allowed: tuple = ()) -> dict:
    """``torch.load`` of plain data (see the module doc); ``allowed`` names the extra classes the file
    may hold. Any problem is a CheckpointError naming ``key`` and the file; ``what`` says what it should be."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{key}: expected a checkpoint file, found nothing at {path}")
    if path.is_dir():
        raise CheckpointError(f"{key}: {path}: expected a checkpoint file, found a folder")
    with open(path, "rb") as fh:
        head = fh.read(4)
    if not (head.startswith(_ZIP_MAGIC) or head.startswith(_PICKLE_MAGIC)):  # a text file is neither
        raise CheckpointError(f"{key}: {path}: expected {what} (a torch.save file), "
                              f"found another kind of file ({path.stat().st_size} bytes)")
    try:
        with torch.serialization.safe_globals(list(allowed)):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{key}: {path}: expected a plain-data checkpoint, found code or a class it may not hold "
                              f"(torch.load weights_only: {str(e).splitlines()[0][:200]})") from e
    except Exception as e:  # noqa: BLE001  (a truncated archive: torch's errors name no file)
        raise CheckpointError(f"{key}: {path}: expected {what}, found an unreadable file "
                              f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{key}: {path}: expected {what} (a dict), found {type(obj).__name__}")
    return obj


def stored_config(path, key: str) -> dict:
    """The resolved run config a run's checkpoint carries (``hyper_parameters.run_config``)."""
    stored = (load(path, key).get("hyper_parameters") or {}).get("run_config") or {}
    if not stored:
        raise CheckpointError(f"{key}: {path}: expected hyper_parameters.run_config, found none")
    return stored


def stored_value(stored: dict, key: str) -> tuple[bool, object]:
    """``(found, value)`` of a dotted ``key`` of a stored config, read as an older config wrote it
    where it did (:data:`LEGACY_KEYS`), or as the behaviour it was made with (:data:`LEGACY_VALUES`)."""
    for name in (key, LEGACY_KEYS.get(key)):
        node, found = stored, name is not None
        for part in (name or "").split("."):
            if not isinstance(node, dict) or part not in node:
                found = False
                break
            node = node[part]
        if found:
            return True, node
    if key in LEGACY_VALUES:
        return True, LEGACY_VALUES[key]
    return False, None


def dit_state(ckpt: dict, prefix: str = DIT_PREFIX) -> dict[str, torch.Tensor]:
    """The DiT's state dict out of a Lightning checkpoint's (``transformer.*`` keys, prefix removed)."""
    return {k[len(prefix):]: v for k, v in (ckpt.get("state_dict") or {}).items() if k.startswith(prefix)}


# ----------------------------------------------------------------------------- Wan's sign, the EMA

def convert_old_sign(ckpt: dict, velocity_sign: bool, key: str, resuming: bool) -> None:
    """An untagged Lightning checkpoint (written before the DiT switched to Wan's sign) converted in
    place: for a paradigm whose DiT emits a velocity under the release's time mapping
    (``velocity_sign``), ``proj_out`` is negated, which negates every output exactly. Resuming
    training from one is refused (its optimizer moments are in the old sign)."""
    tag = ckpt.get(CONVENTION_KEY)
    if tag == DIT_CONVENTION:
        return
    if tag is not None:
        raise CheckpointError(f"{key}: expected a DiT in the {DIT_CONVENTION!r} convention, found {tag!r}")
    if resuming:
        raise CheckpointError(f"{key}: an untagged checkpoint (written before the DiT switched to Wan's sign) "
                              "cannot resume training (its optimizer moments are in the old sign); start from it "
                              "with init_from=<path> instead")
    state = ckpt.get("state_dict", {})
    if velocity_sign:
        for prefix in (DIT_PREFIX, EMA_PREFIX):
            if f"{prefix}proj_out.weight" in state:
                state = negate_output(state, prefix)
        ckpt["state_dict"] = state
    log.warning("%s: checkpoint without a %r tag: written before the DiT switched to Wan's sign; %s",
                key, CONVENTION_KEY, "its output layer (proj_out) was negated to convert it exactly" if velocity_sign
                else "nothing to convert (this paradigm's DiT output has no velocity sign)")


def ema_shadows(ckpt: dict, names: list[str]) -> list[torch.Tensor] | None:
    """The EMA of a Lightning checkpoint as a shadow list in ``names``' order (the DiT's parameters),
    from either format; None when it has none. Removes the older format's keys from its state dict."""
    state = ckpt.get("state_dict", {})
    old = {k[len(EMA_PREFIX):]: state.pop(k) for k in [k for k in state if k.startswith(EMA_PREFIX)]}
    if ckpt.get(EMA_KEY):
        shadows = list(ckpt[EMA_KEY]["shadow_params"])
        if len(shadows) != len(names):
            raise CheckpointError(f"ckpt_path: its EMA holds {len(shadows)} tensors, this DiT has {len(names)} parameters")
        return shadows
    return [old[n].float() for n in names] if old else None


# ----------------------------------------------------------------------------- the release's layout

def release_param_order(names: list[str]) -> list[str]:
    """The release fork's ``parameters()`` order, given diffusers' ``WanTransformer3DModel`` names in
    diffusers' order: inside each attention the fork registers ``norm_q`` and ``norm_k`` before
    ``to_q``; everything else is in the same order (13 + 27 x blocks + 2 entries; 825 at 1.3B)."""
    def scope(name: str) -> str | None:  # "blocks.0.attn1." for an attention's parameters
        parts = name.split(".")
        return ".".join(parts[:3]) + "." if len(parts) > 3 and parts[2].startswith("attn") else None

    def is_norm(name: str, s: str) -> bool:
        return name[len(s):].startswith(("norm_q.", "norm_k."))

    out: list[str] = []
    for name in names:
        s = scope(name)
        if s is not None and is_norm(name, s):
            continue  # placed with its attention's first entry below
        if s is not None and not any(n.startswith(s) for n in out):
            out += [n for n in names if n.startswith(s) and is_norm(n, s)]
        out.append(name)
    return out


def release_ema_to_state(ema: dict, target: torch.nn.Module, path) -> dict[str, torch.Tensor]:
    """An ``EMAModel.state_dict()`` in the release's order as a state dict of ``target`` (a diffusers
    ``WanTransformer3DModel``); a count or shape that does not fit is an error naming the file,
    never a silent mismatch (mapping in diffusers' order puts 80 tensors on the wrong names)."""
    shadows = ema.get("shadow_params")
    if not isinstance(shadows, (list, tuple)) or not all(isinstance(t, torch.Tensor) for t in shadows):
        raise CheckpointError(f"model.dit_ckpt: {path}: expected ema_model['shadow_params'] as a list of tensors "
                              f"(diffusers EMAModel.state_dict()), found {type(shadows).__name__}")
    params = dict(target.named_parameters())
    order = release_param_order(list(params))
    if len(shadows) != len(order):
        raise CheckpointError(f"model.dit_ckpt: {path}: expected {len(order)} EMA shadow tensors for this DiT "
                              f"(the release's parameter order), found {len(shadows)}")
    for name, tensor in zip(order, shadows):
        if tuple(tensor.shape) != tuple(params[name].shape):
            raise CheckpointError(f"model.dit_ckpt: {path}: EMA shadow for {name} has shape {list(tensor.shape)}, "
                                  f"this DiT's is {list(params[name].shape)}")
    return dict(zip(order, shadows))


def _strip(state: dict, prefix: str) -> dict:
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}


def read_release_dit(path, weights: str, target: torch.nn.Module, check=None) -> dict[str, torch.Tensor]:
    """The DiT weights ``weights`` of a ``mevis_ckpt.pth`` as a state dict of ``target``: ``model``,
    or ``ema`` = ``model`` with the EMA copied over it (the release's inference). ``check(model)``
    runs before the EMA is mapped onto this DiT's shapes (the DVI check, which names the setting). An
    ``ema_model`` that is a named state dict (rvosflow's exports before the release's code was
    public) is taken as it is. An EMA that cannot be mapped is an error, not a fallback to
    ``model``: its score would silently be another model's (min IoU 0.855 on the fixture)."""
    obj = load(path, "model.dit_ckpt", "a release-layout file", RELEASE_CLASSES)
    if not isinstance(obj.get("model"), dict):
        found = ", ".join(sorted(k for k in obj if isinstance(k, str))[:6]) or "nothing"
        raise CheckpointError(f"model.dit_ckpt: {path}: expected a 'model' state dict, found keys {found}")
    state = _strip(obj["model"], "module.")  # a DDP-wrapped save
    if "patch_embedding.weight" not in state or "proj_out.weight" not in state:
        raise CheckpointError(f"model.dit_ckpt: {path}['model']: expected WanTransformer3DModel keys "
                              "(patch_embedding.weight, proj_out.weight, ...), found none")
    if check is not None:
        check(state)
    if weights == "model":
        return state
    ema = obj.get("ema_model")
    if not isinstance(ema, dict):
        raise CheckpointError(f"model.dit_ckpt: {path}: expected an 'ema_model' (set model.dit_weights=model "
                              "to use the trained weights), found none")
    if "shadow_params" in ema:
        return {**state, **release_ema_to_state(ema, target, path)}
    return {**state, **_strip(ema, "module.")}


def dit_input_channels(state: dict[str, torch.Tensor]) -> int:
    """Input channels of the patch embedding (``[dim, in_channels, pt, ph, pw]``)."""
    return int(state["patch_embedding.weight"].shape[1])


def check_dit_channels(state: dict, latent_channels: int, expected: int, dvi: bool, path) -> None:
    """DVI is read off the patch embedding: ``2 x z_dim`` channels with it, ``z_dim`` without (the
    release's ``args.use_dvi`` is an untyped string, so the file's shape is what holds)."""
    found = dit_input_channels(state)
    if found == expected:
        return
    theirs = {latent_channels: "DVI off", 2 * latent_channels: "DVI on"}.get(found, "neither DVI setting")
    raise CheckpointError(f"model.dit_ckpt: {path} has a patch embedding of {found} input channels ({theirs}); "
                          f"this run (dvi.enabled={str(dvi).lower()}) expects {expected}")


def read_tuned_decoder(path, key: str = "model.vae_decoder_path") -> dict[str, torch.Tensor]:
    """A tuned VAE's state dict: a ``python -m rvosflow.decoder`` folder (diffusers layout) or a
    ``decoder.pth`` (``vae.`` prefix and ``model`` nesting removed)."""
    path = Path(path)
    if path.is_dir():
        weights = path / "diffusion_pytorch_model.safetensors"
        if not weights.is_file():
            raise CheckpointError(f"{key}: expected {weights} (python -m rvosflow.decoder --out {path}), found none")
        return load_file(str(weights))
    obj = load(path, key, "a release-layout file", RELEASE_CLASSES)
    if "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    state = _strip(_strip(obj, "module."), DECODER_PREFIX)
    if "decoder.conv_out.weight" not in state:
        raise CheckpointError(f"{key}: {path}: expected AutoencoderKLWan keys (decoder.conv_out.weight, ...), found none")
    return state


def release_ema_state(shadows: dict[str, torch.Tensor], names: list[str], decay: float, optimization_step: int) -> dict:
    """An ``EMAModel.state_dict()`` the release's ``EMAModel.load_state_dict`` takes: ``shadows``
    (by diffusers name) as a float32 list in the release's parameter order."""
    return {"decay": float(decay), **EMA_STATE_DEFAULTS, "optimization_step": int(optimization_step),
            "shadow_params": [shadows[n].detach().cpu().float().clone() for n in release_param_order(names)]}


def write_release_dit(path, model: dict, ema: dict | None, use_dvi: bool, epoch: int = 0) -> Path:
    """``mevis_ckpt.pth`` as the release's ``main.py`` writes it (legacy container, atomically):
    ``model`` (tensors cloned, so no storage is shared), ``ema_model`` (a :func:`release_ema_state`)
    when given, ``epoch`` and ``args`` (``use_dvi`` as the string the release's argparse stores)."""
    out = {"model": {k: v.detach().cpu().clone() for k, v in model.items()}, "epoch": int(epoch),
           "args": argparse.Namespace(use_dvi=str(bool(use_dvi)), source="rvosflow.checkpoints export")}
    if ema is not None:
        out["ema_model"] = ema
    atomic.torch_save(out, path, legacy=True)
    return Path(path)


def write_release_decoder(path, state: dict[str, torch.Tensor]) -> Path:
    """``decoder.pth`` as the release stores it: ``{'model': <vae.-prefixed AutoencoderKLWan state>}``."""
    atomic.torch_save({"model": {f"{DECODER_PREFIX}{k}": v.detach().cpu().clone() for k, v in state.items()}},
                      path, legacy=True)
    return Path(path)


def export(ckpt_path, out_dir, decoder: str | None = None, overwrite: bool = False) -> dict[str, Path]:
    """A run's Lightning checkpoint -> ``<out_dir>/mevis_ckpt.pth`` (``model``, and ``ema_model`` when
    the run kept an EMA) and, given a tuned decoder, ``<out_dir>/decoder.pth``, both as the release
    writes them: its own loader reads them back with the EMA applied, and so do ``model.dit_ckpt`` /
    ``model.vae_ckpt``. An existing export is never replaced unless ``overwrite``."""
    ckpt = load(ckpt_path, "ckpt")
    if ckpt.get(CONVENTION_KEY) != DIT_CONVENTION:
        raise CheckpointError(f"ckpt: {ckpt_path} predates the DiT's switch to Wan's sign (no {CONVENTION_KEY!r} tag); "
                              "validate it once with mode=validate (it is converted on load) or retrain it")
    model = dit_state(ckpt)
    if not model:
        raise CheckpointError(f"ckpt: {ckpt_path}: expected transformer.* weights, found none")
    out_dir = Path(out_dir)
    files = {"dit": out_dir / "mevis_ckpt.pth", **({"decoder": out_dir / "decoder.pth"} if decoder else {})}
    existing = [p for p in files.values() if p.exists()]
    if existing and not overwrite:
        raise CheckpointError(f"--out: {existing[0]} exists: expected a new export folder (pass --overwrite to replace it)")
    names = list(model)  # diffusers' parameter order: the DiT's state dict has no buffers
    shadows = ema_shadows(ckpt, names)
    ema = None
    if shadows is not None:
        state = ckpt.get(EMA_KEY) or {}
        ema = release_ema_state(dict(zip(names, shadows)), names, state.get("decay", 0.9999),
                                state.get("optimization_step", 0))
    use_dvi = bool(((ckpt.get("hyper_parameters") or {}).get("run_config") or {}).get("dvi", {}).get("enabled", False))
    write_release_dit(files["dit"], model, ema, use_dvi, epoch=int(ckpt.get("epoch", 0)))
    if decoder:
        write_release_decoder(files["decoder"], read_tuned_decoder(decoder, "--decoder"))
    log.info("exported %s (model%s)%s", files["dit"], " + ema_model" if ema else "",
             f" and {files['decoder']}" if decoder else "")
    return files


# ----------------------------------------------------------------------------- weights into a run's DiT

def init_dit_from(module, path) -> None:
    """``init_from``: the DiT weights of a run's checkpoint before fit (e.g. the RefCOCO stage before
    Ref-YTVOS fine-tuning); optimizer state and step are not taken, every weight must fit."""
    ckpt = load(path, "init_from")  # plain data only: code is refused, never run
    convert_old_sign(ckpt, module.paradigm_velocity_sign, "init_from", resuming=False)
    state = dit_state(ckpt)
    if not state:
        raise CheckpointError(f"init_from: {path}: expected transformer.* weights, found none")
    try:
        module.transformer.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"init_from: {path}: expected weights that fit this DiT (same paradigm/DVI/model), "
                              f"found a mismatch ({str(e).splitlines()[0]})") from e
    module.reset_ema()  # the EMA starts from the same weights
    log.info("DiT initialised from %s (%d tensors)", path, len(state))


def load_release_dit(module, cfg) -> None:
    """``model.dit_ckpt``: a release ``mevis_ckpt.pth``'s DiT (``model.dit_weights``: its EMA over
    ``model``, as the release infers, or ``model``) into the run's DiT, and its EMA. DVI is read off
    the patch embedding; a file that disagrees with the config is an error naming both."""
    path = cfg.model.dit_ckpt
    latent_channels = int(module.frozen.vae.config.z_dim)
    expected = module.paradigm.input_channels(latent_channels)
    state = read_release_dit(path, cfg.model.dit_weights, module.transformer, check=lambda model: check_dit_channels(
        model, latent_channels, expected, bool(cfg.dvi.enabled), path))
    try:
        module.transformer.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise CheckpointError(f"model.dit_ckpt: {path} does not fit model={cfg.model.name}: {first}") from None
    module.reset_ema()
    log.info("DiT weights from %s [%s] (%d tensors)", path, cfg.model.dit_weights, len(state))


# ----------------------------------------------------------------------------- the command

def main(argv: list[str] | None = None) -> int:
    """The CLI; bad input is one line, exit 2 (:func:`rvosflow.errors.cli`)."""
    return cli(_main, argv)


def _main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m rvosflow.checkpoints", description="A run's checkpoint in the FlowRVS release's layout.")
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
