"""Run-config checks that fail before any work, naming the key and what is allowed.

Hydra already refuses unknown keys (the composed config is in struct mode) and unknown
`+paradigm=` options; this module checks values, types and paradigm/toggle compatibility.
"""

from __future__ import annotations

import copy
import inspect
import numbers

from omegaconf import DictConfig, OmegaConf

from rvosflow.paths import PROJECT_ROOT

if not OmegaConf.has_resolver("root"):
    OmegaConf.register_new_resolver("root", lambda: str(PROJECT_ROOT))
if not OmegaConf.has_resolver("tuned_if_given"):  # model.vae_decoder's default follows the decoder files
    OmegaConf.register_new_resolver("tuned_if_given", lambda *paths: "tuned" if any(paths) else "frozen")

MODES = ("train", "validate", "predict")
DTYPES = ("float32", "bfloat16", "float16")


class ConfigError(ValueError):
    """A setting with a wrong value or type; the message names the key and the allowed values."""


def _get(cfg: DictConfig, key: str):
    return OmegaConf.select(cfg, key, throw_on_missing=True)


def _number(cfg, key, lo=None, hi=None, integer=False):
    value = _get(cfg, key)
    kind = "an integer" if integer else "a number"
    ok_type = isinstance(value, numbers.Integral if integer else numbers.Real) and not isinstance(value, bool)
    rng = f" in [{lo}, {hi}]" if lo is not None and hi is not None else (f" >= {lo}" if lo is not None else "")
    if not ok_type or (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ConfigError(f"{key}: expected {kind}{rng}, got {value!r}")
    return value


def _bool(cfg, key):
    value = _get(cfg, key)
    if not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    return value


def _choice(cfg, key, allowed):
    value = _get(cfg, key)
    if value not in allowed:
        raise ConfigError(f"{key}: unknown value {value!r}; allowed: {', '.join(map(str, allowed))}")
    return value


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError on the first bad setting."""
    from rvosflow.data.datamodules import DATAMODULES
    from rvosflow.data.sampling import FRAME_SAMPLERS
    from rvosflow.data.synthetic.world import TIERS
    from rvosflow.module import LR_SCHEDULES
    from rvosflow.paradigms import PARADIGMS

    name = _choice(cfg, "paradigm.name", sorted(PARADIGMS))
    _number(cfg, "paradigm.timestep", 0, 1000)
    bbs_p = _number(cfg, "bbs.p", 0, 1)
    toggles = {"bbs": bbs_p > 0, "spa": _bool(cfg, "spa.enabled"), "dvi": _bool(cfg, "dvi.enabled")}
    _bool(cfg, "wi.enabled")
    accepts = PARADIGMS[name].accepts
    for toggle, on in toggles.items():
        if on and toggle not in accepts:
            key = "bbs.p" if toggle == "bbs" else f"{toggle}.enabled"
            allowed = ", ".join(sorted(accepts)) or "none besides wi"
            raise ConfigError(f"{key}: paradigm '{name}' cannot take {toggle.upper()} (it accepts: {allowed})")
    _number(cfg, "solver.steps", 1, integer=True)
    _number(cfg, "solver.shift", 0)
    _number(cfg, "solver.sigma_min", 0, 1)
    _bool(cfg, "solver.round_timesteps")
    _number(cfg, "seed", 0, integer=True)
    _bool(cfg, "flow.start_at_noise_end")
    _bool(cfg, "flow.normalize_mask_latent")
    _choice(cfg, "mode", MODES)
    _choice(cfg, "data.format", sorted(DATAMODULES))
    _choice(cfg, "data.frame_sampler", FRAME_SAMPLERS)
    frames = _number(cfg, "data.num_frames", 1, integer=True)
    if (frames - 1) % 4:
        raise ConfigError(f"data.num_frames: expected 1 + 4k frames (the Wan VAE drops the rest), got {frames}")
    _number(cfg, "data.batch_size", 1, integer=True)
    _choice(cfg, "model.dtype", DTYPES)
    _bool(cfg, "model.gradient_checkpointing")
    _check_weights(cfg)
    if _get(cfg, "trainer.strategy") == "fsdp":
        if cfg.get("fsdp") is None:
            raise ConfigError("trainer.strategy: fsdp needs the fsdp.* settings, add +strategy=fsdp; got no fsdp block")
        for key in ("param_dtype", "reduce_dtype", "buffer_dtype"):
            _choice(cfg, f"fsdp.{key}", DTYPES)
        _choice(cfg, "fsdp.sharding_strategy", ("FULL_SHARD", "SHARD_GRAD_OP", "HYBRID_SHARD", "NO_SHARD"))
        _choice(cfg, "fsdp.state_dict_type", ("full", "sharded"))
        _bool(cfg, "fsdp.cpu_offload")
    _number(cfg, "optim.lr", 0)
    _number(cfg, "optim.weight_decay", 0)
    _choice(cfg, "optim.schedule", LR_SCHEDULES)
    if "tier" in cfg.data:
        _choice(cfg, "data.tier", TIERS)
    _check_trainer(cfg)


def _check_weights(cfg: DictConfig) -> None:
    """The decoder choice and its files, release weights, EMA and decoder tuning settings."""
    from rvosflow.decoder import HEAD_INITS, VAE_DECODERS
    from rvosflow.release import DIT_WEIGHTS

    decoder = _choice(cfg, "model.vae_decoder", VAE_DECODERS)
    path, ckpt = _get(cfg, "model.vae_decoder_path"), _get(cfg, "model.vae_ckpt")
    if path and ckpt:
        raise ConfigError(f"model.vae_ckpt: expected one tuned decoder, found model.vae_ckpt={ckpt} "
                          f"and model.vae_decoder_path={path}")
    if decoder == "tuned" and not (path or ckpt):
        raise ConfigError("model.vae_decoder: tuned needs model.vae_decoder_path=<python -m rvosflow.decoder folder> "
                          "or model.vae_ckpt=<decoder.pth>, found neither")
    if decoder == "frozen" and (path or ckpt):
        key = "model.vae_ckpt" if ckpt else "model.vae_decoder_path"
        raise ConfigError(f"model.vae_decoder: frozen, but {key}={ckpt or path} is a tuned decoder "
                          "(leave model.vae_decoder unset or set it to tuned)")
    _choice(cfg, "model.dit_weights", DIT_WEIGHTS)
    if _get(cfg, "model.dit_ckpt"):
        for other in ("ckpt_path", "init_from"):
            if cfg.get(other):
                raise ConfigError(f"model.dit_ckpt: expected one source of DiT weights, found model.dit_ckpt and {other}")
    _bool(cfg, "ema.enabled")
    _number(cfg, "ema.decay", 0, 1)
    _number(cfg, "decoder.lr", 0)
    _number(cfg, "decoder.epochs", 1, integer=True)
    _number(cfg, "decoder.batch_size", 1, integer=True)
    _number(cfg, "decoder.weight_decay", 0)
    _number(cfg, "decoder.focal_alpha", 0, 1)
    _number(cfg, "decoder.focal_gamma", 0)
    _number(cfg, "decoder.dice_weight", 0)
    _choice(cfg, "decoder.head_init", HEAD_INITS)
    for key in ("decoder.max_steps", "decoder.crop", "decoder.frames"):
        if _get(cfg, key) is not None:
            _number(cfg, key, 1, integer=True)
    frames = _get(cfg, "decoder.frames")
    if frames is not None and (frames - 1) % 4:
        raise ConfigError(f"decoder.frames: expected 1 + 4k frames (the Wan VAE drops the rest), got {frames}")


def _check_trainer(cfg: DictConfig) -> None:
    import lightning as L

    allowed = set(inspect.signature(L.Trainer.__init__).parameters) - {"self", "logger", "callbacks"}
    for key in cfg.trainer:
        if key not in allowed:
            raise ConfigError(f"trainer.{key}: not a lightning.Trainer argument")


# What a checkpoint was trained as: its stored run config decides these when it is validated,
# predicted with or resumed, and a command-line value that differs is an error.
CHECKPOINT_KEYS = (
    "paradigm.name", "paradigm.timestep", "bbs.p", "spa.enabled", "dvi.enabled", "wi.enabled",
    "flow.start_at_noise_end", "flow.normalize_mask_latent", "model.name", "model.text_max_length",
)
# Inference settings: taken from the checkpoint too, unless the command line sets them.
CHECKPOINT_INFERENCE_KEYS = ("solver.steps", "solver.shift", "solver.sigma_min", "solver.round_timesteps",
                             "ema.enabled")
# What must agree for `init_from` to start from a checkpoint's DiT.
INIT_FROM_KEYS = ("paradigm.name", "dvi.enabled", "model.name")


def _stored_run_config(path, key: str) -> DictConfig:
    """The resolved run config a Lightning checkpoint of FlowRVSModule carries (``run_config``)."""
    import pickle

    import torch

    try:  # plain data only: a checkpoint carrying code is refused, never run
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConfigError(f"{key}: expected a checkpoint file, found nothing at {path}") from None
    except pickle.UnpicklingError as e:
        raise ConfigError(f"{key}: {path}: expected a plain-data checkpoint, found code ({e})") from e
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
        theirs = OmegaConf.select(stored, key)
        ours = OmegaConf.select(cfg, key)
        if theirs is None or ours == theirs:
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
    diffs = [f"{k}={OmegaConf.select(stored, k)!r} there, {OmegaConf.select(cfg, k)!r} here"
             for k in INIT_FROM_KEYS if OmegaConf.select(stored, k) != OmegaConf.select(cfg, k)]
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
    """The run config that `python run.py <overrides>` would see (without Hydra's own node)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():  # inside run.py's @hydra.main: same configs
        return hydra_compose(config_name="config", overrides=list(overrides))
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "configs"), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides))
