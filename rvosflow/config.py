"""Run-config checks that fail before any work, naming the key and what is allowed.

Types, ranges and the set of keys are the schema's (:mod:`rvosflow.schema`, which also refuses
``+unknown=...``); this module keeps the rules that span keys: a toggle a paradigm cannot take,
``trainer.strategy=fsdp`` without its ``fsdp`` block, and what a checkpoint fixes.
"""

from __future__ import annotations

import copy

from omegaconf import DictConfig, OmegaConf

from rvosflow import schema
from rvosflow.paths import PROJECT_ROOT
from rvosflow.schema import ConfigError

if not OmegaConf.has_resolver("root"):
    OmegaConf.register_new_resolver("root", lambda: str(PROJECT_ROOT))
if not OmegaConf.has_resolver("tuned_if_given"):  # model.vae_decoder's default follows the decoder files
    OmegaConf.register_new_resolver("tuned_if_given", lambda *paths: "tuned" if any(paths) else "frozen")

__all__ = ["ConfigError", "validate", "compose", "flat_params", "apply_checkpoint_config", "check_init_from"]


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError on the first bad setting: the schema's checks, then the cross-key rules."""
    from rvosflow.paradigms import PARADIGMS

    schema.check(cfg)
    name = cfg.paradigm.name
    toggles = {"bbs": cfg.bbs.p > 0, "spa": cfg.spa.enabled, "dvi": cfg.dvi.enabled}
    accepts = PARADIGMS[name].accepts
    for toggle, on in toggles.items():
        if on and toggle not in accepts:
            key = "bbs.p" if toggle == "bbs" else f"{toggle}.enabled"
            allowed = ", ".join(sorted(accepts)) or "none besides wi"
            raise ConfigError(f"{key}: paradigm '{name}' cannot take {toggle.upper()} (it accepts: {allowed})")
    if cfg.trainer.strategy == "fsdp" and cfg.get("fsdp") is None:
        raise ConfigError("trainer.strategy: fsdp needs the fsdp.* settings, add +strategy=fsdp; got no fsdp block")
    if cfg.trainer.strategy == "fsdp" and cfg.ema.enabled:  # each rank holds a shard: EMAModel's shadows would not fit it
        raise ConfigError("ema.enabled: expected false with trainer.strategy=fsdp (the EMA keeps whole-model shadows), "
                          "got true (use +strategy=ddp, or ema.enabled=false)")
    _check_weights(cfg)


def _check_weights(cfg: DictConfig) -> None:
    """Which decoder and which DiT weights: the files must agree with model.vae_decoder, and one
    source of DiT weights at a time."""
    m = cfg.model
    path, ckpt = m.vae_decoder_path, m.vae_ckpt
    if path and ckpt:
        raise ConfigError(f"model.vae_ckpt: expected one tuned decoder, found model.vae_ckpt={ckpt} "
                          f"and model.vae_decoder_path={path}")
    if m.vae_decoder == "tuned" and not (path or ckpt):
        raise ConfigError("model.vae_decoder: tuned needs model.vae_decoder_path=<python -m rvosflow.decoder folder> "
                          "or model.vae_ckpt=<decoder.pth>, found neither")
    if m.vae_decoder == "frozen" and (path or ckpt):
        key = "model.vae_ckpt" if ckpt else "model.vae_decoder_path"
        raise ConfigError(f"model.vae_decoder: frozen, but {key}={ckpt or path} is a tuned decoder "
                          "(leave model.vae_decoder unset or set it to tuned)")
    if m.dit_ckpt:
        for other in ("ckpt_path", "init_from"):
            if cfg.get(other):
                raise ConfigError(f"model.dit_ckpt: expected one source of DiT weights, found model.dit_ckpt and {other}")


# What a checkpoint was trained as: its stored run config decides these when it is validated,
# predicted with or resumed, and a command-line value that differs is an error.
CHECKPOINT_KEYS = (
    "paradigm.name", "paradigm.timestep", "bbs.p", "bbs.sampler", "spa.enabled", "dvi.enabled", "wi.enabled",
    "flow.start_at_noise_end", "flow.normalize_mask_latent", "model.name", "text.max_length",
)
# Inference settings: taken from the checkpoint too, unless the command line sets them.
CHECKPOINT_INFERENCE_KEYS = ("solver.steps", "solver.shift", "solver.sigma_min", "solver.round_timesteps",
                             "ema.enabled", "text.clean", "text.lowercase", "model.mask_rule", "window_frames",
                             "data.size_multiple")
# A checkpoint whose stored config predates a key was made with the behaviour these values name
# (what rvosflow did before the release's conventions became settings), or under an older key.
LEGACY_VALUES = {"bbs.sampler": "bernoulli", "text.clean": "whitespace", "text.lowercase": "always",
                 "model.mask_rule": "antialias", "window_frames": 81, "data.size_multiple": None}
LEGACY_KEYS = {"text.max_length": "model.text_max_length"}


def stored_value(stored: DictConfig, key: str):
    """``key`` of a checkpoint's stored config, read as an older config wrote it where it did."""
    if key in LEGACY_KEYS and OmegaConf.select(stored, key) is None:
        return OmegaConf.select(stored, LEGACY_KEYS[key])
    if key in LEGACY_VALUES and OmegaConf.select(stored, key, default="<absent>") == "<absent>":
        return LEGACY_VALUES[key]
    return OmegaConf.select(stored, key)
# What must agree for `init_from` to start from a checkpoint's DiT.
INIT_FROM_KEYS = ("paradigm.name", "dvi.enabled", "model.name")


# The first bytes of what torch.save writes: a zip archive, or (legacy format, as the FlowRVS
# release writes) a pickle stream, protocol 2 and up.
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_MAGIC = tuple(bytes([0x80, n]) for n in range(2, 6))


def load_checkpoint(path, key: str, what: str = "a Lightning checkpoint", allowed: tuple = ()) -> dict:
    """``torch.load`` of plain data only, from either container torch writes (zip, or the legacy
    pickle); ``allowed`` names the extra classes a file may hold (the release's ``args`` Namespace).
    A checkpoint carrying anything else is refused, never run. Any problem is a ConfigError naming
    ``key`` and the file (torch's own errors name neither); ``what`` says what the file should be."""
    import pickle
    from pathlib import Path

    import torch

    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{key}: expected a checkpoint file, found nothing at {path}")
    if path.is_dir():
        raise ConfigError(f"{key}: {path}: expected a checkpoint file, found a folder")
    with open(path, "rb") as fh:
        head = fh.read(4)
    if not (head.startswith(_ZIP_MAGIC) or head.startswith(_PICKLE_MAGIC)):  # a text file is neither
        raise ConfigError(f"{key}: {path}: expected {what} (a torch.save file), "
                          f"found another kind of file ({path.stat().st_size} bytes)")
    try:
        with torch.serialization.safe_globals(list(allowed)):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ConfigError(f"{key}: {path}: expected a plain-data checkpoint, found code or a class it may not hold "
                          f"(torch.load weights_only: {str(e).splitlines()[0][:200]})") from e
    except Exception as e:  # noqa: BLE001  (a truncated archive: torch's errors name no file)
        raise ConfigError(f"{key}: {path}: expected {what}, found an unreadable file "
                          f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})") from e
    if not isinstance(ckpt, dict):
        raise ConfigError(f"{key}: {path}: expected {what} (a dict), found {type(ckpt).__name__}")
    return ckpt


def _stored_run_config(path, key: str) -> DictConfig:
    """The resolved run config a Lightning checkpoint of FlowRVSModule carries (``run_config``)."""
    ckpt = load_checkpoint(path, key)
    stored = (ckpt.get("hyper_parameters") or {}).get("run_config") or {}
    if not stored:
        raise ConfigError(f"{key}: {path}: expected hyper_parameters.run_config, found none")
    return OmegaConf.create(dict(stored))


def _given(cfg: DictConfig, defaults: DictConfig, key: str) -> bool:
    """Whether the run config sets ``key`` away from the defaults (on the command line/preset)."""
    return OmegaConf.select(cfg, key) != OmegaConf.select(defaults, key)


def apply_checkpoint_config(cfg: DictConfig, path) -> DictConfig:
    """``cfg`` with the paradigm, toggles and model of the checkpoint at ``path`` (``ckpt_path``).

    A key the command line leaves at its default takes the checkpoint's value; one it sets to a
    different value is an error naming the key and both values. Solver settings given on the
    command line win (they only change inference)."""
    stored = _stored_run_config(path, "ckpt_path")
    defaults = compose([])
    out = copy.deepcopy(cfg)
    for key in (*CHECKPOINT_KEYS, *CHECKPOINT_INFERENCE_KEYS):
        theirs = stored_value(stored, key)
        ours = OmegaConf.select(cfg, key)
        if (theirs is None and key not in LEGACY_VALUES) or ours == theirs:
            continue
        if _given(cfg, defaults, key):
            if key in CHECKPOINT_KEYS:
                raise ConfigError(f"{key}: the checkpoint {path} was trained with {theirs!r}, "
                                  f"the command line says {ours!r}")
            continue
        OmegaConf.update(out, key, theirs, merge=False)
    return out


def check_init_from(cfg: DictConfig, path) -> None:
    """``init_from`` needs a checkpoint of the same paradigm, DVI and model: name what differs."""
    stored = _stored_run_config(path, "init_from")
    diffs = [f"{k}={stored_value(stored, k)!r} there, {OmegaConf.select(cfg, k)!r} here"
             for k in INIT_FROM_KEYS if stored_value(stored, k) != OmegaConf.select(cfg, k)]
    if diffs:
        raise ConfigError(f"init_from: {path} is incompatible with this run: {'; '.join(diffs)}")


def flat_params(cfg: DictConfig) -> dict[str, str]:
    """The resolved config as ``{"bbs.p": "0.5", ...}`` for MLflow params."""
    out: dict[str, str] = {}

    def walk(node, prefix):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            out[prefix[:-1]] = str(node)

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return out


def compose(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """The run config that `python run.py <overrides>` would see (without Hydra's own node).
    Hydra's composition errors come back as one-line :class:`ConfigError`s."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    try:
        if GlobalHydra.instance().is_initialized():  # inside run.py's @hydra.main: same configs
            return hydra_compose(config_name="config", overrides=list(overrides))
        with initialize_config_dir(config_dir=str(PROJECT_ROOT / "configs"), version_base="1.3"):
            return hydra_compose(config_name="config", overrides=list(overrides))
    except HydraException as exc:
        raise hydra_error(exc) from exc


def hydra_error(exc: Exception) -> ConfigError:
    """A Hydra composition error (unknown key or group option, bad override syntax) as one line
    naming the key: ``<key>: expected <what>, got <what>``."""
    import re

    from hydra.errors import MissingConfigException, OverrideParseException

    text = str(exc)
    if isinstance(exc, MissingConfigException) and exc.missing_cfg_file and exc.options:
        group, _, name = exc.missing_cfg_file.rpartition("/")
        return ConfigError(f"{group}: expected one of {', '.join(exc.options)}, got {name!r}")
    if isinstance(exc, OverrideParseException):
        detail = [ln for ln in text.splitlines() if ln and not ln.startswith(("See ", "Error parsing"))]
        return ConfigError(f"{exc.override}: expected key=value (Hydra's override syntax), got "
                           f"{detail[0] if detail else 'a parse error'}")
    m = re.match(r"Could not override '([^']+)'", text)
    if m:
        return ConfigError(f"{m.group(1)}: expected a key of the run config, got an unknown key")
    m = re.match(r"Could not append to config. An item is already at '([^']+)'", text)
    if m:
        return ConfigError(f"{m.group(1)}: expected a new key after '+', got one the config has (drop the '+')")
    m = re.match(r"Could not delete from config. '([^']+)' does not exist", text)
    if m:
        return ConfigError(f"{m.group(1)}: expected a key of the run config to delete, got an unknown key")
    first = next((ln for ln in text.splitlines() if ln.strip()), type(exc).__name__)
    return ConfigError(f"overrides: expected a composable config, got: {first}")
