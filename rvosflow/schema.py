"""The run config's schema: every key of ``configs/`` with its type and range, as dataclasses.

:func:`check` holds the composed config (``python run.py ...`` / :func:`rvosflow.config.compose`)
against :class:`RunConfig` before any work: a key the schema does not know (``+foo=1``) or a value
of the wrong type or out of its range is a :class:`ConfigError` naming the key,
``<key>: expected <what>, got <value>``. Hydra composes the YAML untyped and this module does the
typing, so Hydra's own override errors never decide the message. Cross-key rules (a toggle a
paradigm cannot take) stay in :mod:`rvosflow.config`.

Field metadata: ``range=(lo, hi)`` (either may be None; for lists, each element),
``choices=<callable returning the allowed values>`` (registries, read when checked), and
``rule=(predicate, "what is expected")`` for a one-key rule a type cannot say (1 + 4k frames).
"""

from __future__ import annotations

import dataclasses
import difflib
import numbers
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Literal, Optional, Union

from rvosflow.errors import UserError


class ConfigError(UserError, ValueError):
    """A setting with a wrong value or type; the message names the key and the allowed values."""


def _num(default, lo=None, hi=None, **more):
    return field(default=default, metadata={"range": (lo, hi), **more})


def _choice(default, choices):
    return field(default=default, metadata={"choices": choices})


def _paradigms():
    from rvosflow.paradigms import PARADIGMS
    return sorted(PARADIGMS)


def _formats():
    from rvosflow.data.datamodules import DATAMODULES
    return sorted(DATAMODULES)


def _frame_samplers():
    from rvosflow.data.sampling import FRAME_SAMPLERS
    return list(FRAME_SAMPLERS)


def _tiers():
    from rvosflow.data.synthetic.world import TIERS
    return list(TIERS)


def _schedules():
    from rvosflow.module import LR_SCHEDULES
    return list(LR_SCHEDULES)


_ONE_PLUS_4K = (lambda n: (n - 1) % 4 == 0, "1 + 4k frames (the Wan VAE drops the rest)")
DTYPE = Literal["float32", "bfloat16", "float16"]
MISSING = dataclasses.MISSING


@dataclass(kw_only=True)
class Predict:
    out_dir: Optional[str] = None
    overwrite: bool = False


@dataclass(kw_only=True)
class Paradigm:
    name: str = _choice(MISSING, _paradigms)
    timestep: float = _num(0.0, 0, 1000)


def _bbs_samplers():
    from rvosflow.flow.schedule import BBS_SAMPLERS
    return list(BBS_SAMPLERS)


def _mask_rules():
    from rvosflow.models.encoding import MASK_RULES
    return list(MASK_RULES)


@dataclass(kw_only=True)
class Bbs:
    p: float = _num(0.5, 0, 1)
    sampler: str = _choice("release", _bbs_samplers)  # release: int(B*p) at timestep 1000 per batch | bernoulli


@dataclass(kw_only=True)
class Text:
    max_length: int = _num(MISSING, 1)
    clean: Literal["release", "whitespace"] = "release"     # release: prompt_clean (whitespace, HTML, quotes)
    lowercase: Literal["train", "always", "never"] = "train"  # release: training captions only


@dataclass(kw_only=True)
class Toggle:
    enabled: bool = True


@dataclass(kw_only=True)
class Solver:
    steps: int = _num(1, 1)
    shift: float = _num(3.0, 0)
    sigma_min: float = _num(0.001, 0, 1)
    round_timesteps: bool = True  # release: integer inference timesteps


@dataclass(kw_only=True)
class Flow:
    start_at_noise_end: bool = True
    normalize_mask_latent: bool = False


@dataclass(kw_only=True)
class Model:
    name: str = MISSING
    path: str = MISSING
    dtype: DTYPE = "float32"
    gradient_checkpointing: bool = False
    vae_decoder: Literal["frozen", "tuned"] = "frozen"  # config.yaml: tuned when a file below is given
    vae_decoder_path: Optional[str] = None  # python -m rvosflow.decoder's folder (diffusers layout)
    vae_ckpt: Optional[str] = None          # the release's decoder.pth
    dit_ckpt: Optional[str] = None          # the release's mevis_ckpt.pth
    dit_weights: Literal["ema", "model"] = "ema"
    mask_rule: str = _choice("release", _mask_rules)  # release: clamp, bilinear resize, > 0 | antialias


@dataclass(kw_only=True)
class Ema:
    enabled: bool = False
    decay: float = _num(0.9999, 0, 1)


@dataclass(kw_only=True)
class Decoder:
    """``python -m rvosflow.decoder`` (Table 4: lr 8e-5, 1 epoch, batch 4, focal + dice)."""

    lr: float = _num(8e-5, 0)
    epochs: int = _num(1, 1)
    batch_size: int = _num(4, 1)
    weight_decay: float = _num(5e-4, 0)
    focal_alpha: float = _num(0.25, 0, 1)
    focal_gamma: float = _num(2.0, 0)
    dice_weight: float = _num(1.0, 0)
    head_init: Literal["mean", "random"] = "mean"
    max_steps: Optional[int] = _num(None, 1)
    crop: Optional[int] = _num(None, 1)
    frames: Optional[int] = _num(None, 1, rule=_ONE_PLUS_4K)


@dataclass(kw_only=True)
class Optim:
    lr: float = _num(MISSING, 0)
    betas: List[float] = _num(MISSING, 0, 1)
    weight_decay: float = _num(0.0, 0)
    schedule: str = _choice("constant", _schedules)
    milestones: List[int] = field(default_factory=lambda: [30], metadata={"range": (1, None)})  # multistep: epochs
    gamma: float = _num(0.9, 0, 1)  # multistep: lr factor at each milestone


@dataclass(kw_only=True)
class Data:
    """The keys every ``data.format`` takes; the formats below add theirs."""

    format: str = _choice(MISSING, _formats)
    root: str = MISSING
    generate_if_missing: bool = False
    tier: Optional[str] = _choice(None, _tiers)  # synthetic presets: the tier written at root
    train_split: str = MISSING
    val_split: str = MISSING
    predict_split: str = MISSING
    eval_videos: Optional[int] = _num(None, 1)
    num_frames: int = _num(MISSING, 1, rule=_ONE_PLUS_4K)
    frame_sampler: str = _choice("global", _frame_samplers)
    height: int = _num(MISSING, 16)          # rounded down to data.size_multiple
    max_width: int = _num(MISSING, 16)
    size_multiple: Optional[int] = _num(16, 1)  # release: 16 hard-coded; null = the model's (VAE factor x patch)
    batch_size: int = _num(1, 1)
    val_batch_size: int = _num(1, 1)
    num_workers: int = _num(0, 0)
    val_limit: Optional[int] = _num(None, 1)  # expressions scored in in-training validation


@dataclass(kw_only=True)
class RefDavisData(Data):
    annotators: List[int] = _num(MISSING, 0, 3)


@dataclass(kw_only=True)
class RefcocoData(Data):
    images: Optional[str] = None
    datasets: List[Literal["refcoco", "refcoco+", "refcocog"]] = MISSING


@dataclass(kw_only=True)
class MixedData(Data):
    video_format: Literal["mevis", "ref_ytvos"] = "mevis"
    image_root: str = MISSING
    image_datasets: List[Literal["refcoco", "refcoco+", "refcocog"]] = MISSING
    image_split: str = "train"
    images: Optional[str] = None
    image_ratio: float = _num(0.3, 0, 1)
    image_frames: int = _num(1, 1, rule=_ONE_PLUS_4K)


DATA_SCHEMAS = {"ref_davis": RefDavisData, "refcoco": RefcocoData, "mixed": MixedData}  # others: Data


@dataclass(kw_only=True)
class Trainer:
    """The ``lightning.Trainer`` arguments a config may set, typed as Lightning types them."""

    accelerator: str = "auto"
    strategy: str = "auto"
    devices: Union[int, str, List[int]] = "auto"
    num_nodes: int = _num(1, 1)
    precision: Optional[Union[int, str]] = None
    fast_dev_run: Union[bool, int] = _num(False, 0)
    max_epochs: Optional[int] = _num(None, -1)
    min_epochs: Optional[int] = _num(None, 0)
    max_steps: int = _num(-1, -1)
    min_steps: Optional[int] = _num(None, 0)
    max_time: Optional[Union[str, Dict[str, int]]] = None
    limit_train_batches: Optional[Union[int, float]] = _num(None, 0)
    limit_val_batches: Optional[Union[int, float]] = _num(None, 0)
    limit_test_batches: Optional[Union[int, float]] = _num(None, 0)
    limit_predict_batches: Optional[Union[int, float]] = _num(None, 0)
    overfit_batches: Union[int, float] = _num(0.0, 0)
    val_check_interval: Optional[Union[int, float, str, Dict[str, int]]] = _num(None, 0)
    check_val_every_n_epoch: Optional[int] = _num(1, 1)
    num_sanity_val_steps: Optional[int] = _num(None, -1)
    log_every_n_steps: Optional[int] = _num(None, 1)
    enable_checkpointing: Optional[bool] = None
    enable_progress_bar: Optional[bool] = None
    enable_model_summary: Optional[bool] = None
    accumulate_grad_batches: int = _num(1, 1)
    gradient_clip_val: Optional[Union[int, float]] = _num(None, 0)
    gradient_clip_algorithm: Optional[Literal["norm", "value"]] = None
    deterministic: Optional[Union[bool, Literal["warn"]]] = None
    benchmark: Optional[bool] = None
    inference_mode: bool = True
    use_distributed_sampler: bool = True
    profiler: Optional[str] = None
    detect_anomaly: bool = False
    barebones: bool = False
    sync_batchnorm: bool = False
    reload_dataloaders_every_n_epochs: int = _num(0, 0)
    enable_autolog_hparams: bool = True
    model_registry: Optional[str] = None


@dataclass(kw_only=True)
class Fsdp:
    sharding_strategy: Literal["FULL_SHARD", "SHARD_GRAD_OP", "HYBRID_SHARD", "NO_SHARD"] = "FULL_SHARD"
    param_dtype: DTYPE = "bfloat16"
    reduce_dtype: DTYPE = "float32"
    buffer_dtype: DTYPE = "float32"
    state_dict_type: Literal["full", "sharded"] = "full"
    cpu_offload: bool = False


@dataclass(kw_only=True)
class Logger:
    tracking_uri: Optional[str] = None
    experiment_name: str = "rvosflow"
    run_name: Optional[str] = None
    tags: Dict[str, Any] = field(default_factory=dict)


@dataclass(kw_only=True)
class RunConfig:
    """``configs/config.yaml`` and its groups, composed."""

    mode: Literal["train", "validate", "predict"] = "train"
    ckpt_path: Optional[str] = None
    init_from: Optional[str] = None
    predict: Predict = field(default_factory=Predict)
    seed: int = _num(0, 0)
    paradigm: Paradigm = field(default_factory=Paradigm)
    bbs: Bbs = field(default_factory=Bbs)
    text: Text = field(default_factory=Text)
    spa: Toggle = field(default_factory=Toggle)
    dvi: Toggle = field(default_factory=Toggle)
    wi: Toggle = field(default_factory=Toggle)
    solver: Solver = field(default_factory=Solver)
    flow: Flow = field(default_factory=Flow)
    model: Model = field(default_factory=Model)
    ema: Ema = field(default_factory=Ema)
    decoder: Decoder = field(default_factory=Decoder)
    optim: Optim = field(default_factory=Optim)
    data: Data = field(default_factory=Data)
    cache_latents: bool = True
    latent_cache_dir: Optional[str] = None
    text_cache_dir: Optional[str] = None
    num_overlays: int = _num(4, 0)
    trajectory_steps: int = _num(5, 0)
    window_frames: Optional[int] = _num(None, 1)  # null: whole videos in one pass (the release)
    trainer: Trainer = field(default_factory=Trainer)
    fsdp: Optional[Fsdp] = None  # +strategy=fsdp
    logger: Logger = field(default_factory=Logger)


# ------------------------------------------------------------------------------ checking

def check(cfg) -> None:
    """Raise :class:`ConfigError` on the first key that is unknown, missing, of the wrong type
    or out of range (``cfg``: a DictConfig or a plain dict)."""
    _check_node(_plain(cfg), RunConfig, "")


def _plain(cfg) -> dict:
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

    if not isinstance(cfg, DictConfig):
        return cfg
    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as exc:
        raise ConfigError(f"{exc.full_key}: expected a value, got none (??? in the config)") from None
    except OmegaConfBaseException as exc:  # an interpolation that does not resolve
        msg = str(exc).splitlines()[0]
        raise ConfigError(f"{getattr(exc, 'full_key', '') or '?'}: expected a value that resolves, got an error: {msg}") from None


def _check_node(value, schema, key: str) -> None:
    where = key or "the run config"
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping of {schema.__name__} settings, got {value!r}")
    if schema is Data:  # the keys a data format takes depend on the format
        fmt = value.get("format")
        _check_value(fmt, _field(Data, "format"), f"{key}.format")
        schema = DATA_SCHEMAS.get(fmt, Data)
    fields = {f.name: f for f in dataclasses.fields(schema)}
    hints = typing.get_type_hints(schema)
    for name in value:
        if name not in fields:
            raise ConfigError(_unknown(f"{key}.{name}" if key else str(name), str(name), fields, where))
    for name, f in fields.items():
        sub = f"{key}.{name}" if key else name
        if name not in value:
            if f.default is MISSING and f.default_factory is MISSING:
                raise ConfigError(f"{sub}: expected a value, got none (the key is missing)")
            continue
        _check_value(value[name], f, sub, hints[name])


def _field(schema, name):
    return next(f for f in dataclasses.fields(schema) if f.name == name)


def _unknown(full: str, name: str, fields: dict, where: str) -> str:
    close = difflib.get_close_matches(name, list(fields), n=3)
    hint = f"did you mean {' or '.join(close)}?" if close else f"allowed: {', '.join(fields)}"
    return f"{full}: expected a key of {where} ({hint}), got an unknown key"


def _check_value(value, f, key: str, tp=None) -> None:
    tp = tp if tp is not None else str
    meta = f.metadata
    if not _matches(value, tp):
        raise ConfigError(f"{key}: expected {_describe(tp, meta)}, got {value!r}")
    if dataclasses.is_dataclass(tp) or (_optional_dataclass(tp) and value is not None):
        _check_node(value, tp if dataclasses.is_dataclass(tp) else _optional_dataclass(tp), key)
        return
    items = value if isinstance(value, list) else [value]
    lo, hi = meta.get("range", (None, None))
    for v in items:
        if isinstance(v, numbers.Real) and not isinstance(v, bool) and (
                (lo is not None and v < lo) or (hi is not None and v > hi)):
            raise ConfigError(f"{key}: expected {_describe(tp, meta)}, got {value!r}")
    if "choices" in meta and value is not None:
        allowed = meta["choices"]()
        if value not in allowed:
            raise ConfigError(f"{key}: expected one of {', '.join(map(str, allowed))}, got {value!r}")
    if "rule" in meta and value is not None:
        ok, what = meta["rule"]
        if not ok(value):
            raise ConfigError(f"{key}: expected {what}, got {value!r}")


def _optional_dataclass(tp):
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if typing.get_origin(tp) is Union and len(args) == 1 and dataclasses.is_dataclass(args[0]) else None


def _matches(value, tp) -> bool:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return True
    if tp is type(None):
        return value is None
    if origin is Union:
        return any(_matches(value, a) for a in args)
    if origin is Literal:
        return value in args and not isinstance(value, bool)
    if origin in (list, List):
        return isinstance(value, list) and all(_matches(v, args[0]) for v in value)
    if origin in (dict, Dict):
        return isinstance(value, dict) and all(isinstance(k, str) and _matches(v, args[1]) for k, v in value.items())
    if dataclasses.is_dataclass(tp):
        return isinstance(value, dict)
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, tp)


def _describe(tp, meta=None) -> str:
    """``an integer >= 1``, ``a number in [0, 1]``, ``true or false``, ``one of a, b`` ..."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    lo, hi = (meta or {}).get("range", (None, None))
    rng = f" in [{lo}, {hi}]" if lo is not None and hi is not None else (f" >= {lo}" if lo is not None else "")
    if origin is Union:
        parts = [_describe(a, meta) for a in args if a is not type(None)]
        text = " or ".join(parts)
        return f"{text} or null" if type(None) in args else text
    if origin is Literal:
        return "one of " + ", ".join(map(str, args))
    if origin in (list, List):
        return f"a list of {_plural(_describe(args[0], meta))}"
    if origin in (dict, Dict):
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return f"a mapping of {tp.__name__} settings"
    return {bool: "true or false", int: f"an integer{rng}", float: f"a number{rng}", str: "a string"}.get(tp, str(tp))


def _plural(text: str) -> str:
    for one, many in (("an integer", "integers"), ("a number", "numbers"), ("a string", "strings")):
        if text.startswith(one):
            return many + text[len(one):]
    return text
