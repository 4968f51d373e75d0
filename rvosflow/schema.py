"""The run config, typed: every key of ``python run.py`` with its type, default and range, as
dataclasses. This file is the single source of truth for the settings: Hydra composes
``configs/`` on top of it (``config.register``: ``RunConfig`` is the base of ``config.yaml``, each
``Data`` class the base of its format's presets), so a YAML file sets only what differs from here,
and the run's code receives these dataclasses (``build``), never repacked copies.

Settings are declared with :mod:`rvosflow.axes` (``setting`` for a checked value, ``axis`` for an
ablation axis); :func:`axes` and :func:`stages` enumerate them for validation, run names, tables,
Optuna params and the checkpoint checks. A paradigm's own ``paradigm.*`` keys are its ``options``
class, a data format's keys its ``Data`` class (:data:`DATA_SCHEMAS`). The ``lightning.Trainer``
arguments under ``trainer.`` are Lightning's own: their names, types and defaults are read from
``Trainer.__init__``'s signature (:data:`TrainerArgs`), and only ranges and allowed names are added.

:func:`check` holds a composed config against these classes before any work: a key they do not
know (``+foo=1``), a missing value, a value of the wrong type or out of its range (numbers must be
finite) is a :class:`ConfigError` naming the key, ``<key>: expected <what>, got <value>``.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
import numbers
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Union

import lightning
from lightning.pytorch.accelerators import AcceleratorRegistry
from lightning.pytorch.strategies import StrategyRegistry
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from rvosflow.axes import Axis, axes_of, axis, setting, stages_of
from rvosflow.data.augment import AUGMENTATIONS
from rvosflow.data.datamodules import DATAMODULES
from rvosflow.data.datasets import EMPTY_CLIPS
from rvosflow.data.sampling import FRAME_SAMPLERS
from rvosflow.data.synthetic.world import TIERS
from rvosflow.errors import ConfigError
from rvosflow.flow.schedule import BBS_SAMPLERS
from rvosflow.metrics.slices import SLICES
from rvosflow.models.encoding import LOWERCASE, MASK_RULES, TEXT_CLEANINGS
from rvosflow.paradigms import PARADIGMS

MISSING = "???"  # OmegaConf's mark of a value a preset or the command line must give
DTYPES = ("float32", "bfloat16", "float16")
LR_SCHEDULES = ("constant", "cosine", "multistep")
VAE_DECODERS = ("frozen", "tuned")
DIT_WEIGHTS = ("ema", "model")
HEAD_INITS = ("mean", "random")
MAX_SEED = 2**32 - 1  # numpy's and Lightning's seed_everything bound
_ONE_PLUS_4K = (lambda n: (n - 1) % 4 == 0, "1 + 4k frames (the Wan VAE drops the rest)")


def _on(name: str) -> "typing.Callable":
    return lambda v: name if v else None


@dataclass(kw_only=True)
class Checkpoint:
    # last.ckpt is written at every in-training validation, at the end, when a signal stops the run,
    # and every N optimizer steps when this is set (an epoch of real MeViS is hours)
    every_n_steps: Optional[int] = setting(None, lo=1)


@dataclass(kw_only=True)
class Predict:
    out_dir: Optional[str] = None      # mode=predict writes <out_dir>/<video>/<exp_id>/<frame>.png; null = <run dir>/predictions
    overwrite: bool = False            # replace what an earlier prediction run wrote there (nothing else is touched)


@dataclass(kw_only=True)
class Bbs:
    """Boundary-biased sampling: t ~ p * delta(0) + (1 - p) * U(0, 1); p=0 is the base flow."""

    p: float = axis(0.5, label="BBS p", token=lambda p: f"p{p:g}" if p else None, column=True, off=0.0, lo=0, hi=1)
    # release: integer timesteps, exactly int(B * p) of a batch at t=0 | bernoulli: one draw per sample
    sampler: str = axis("release", label="BBS sampler", token=lambda s: None if s == "release" else f"bbs-{s}",
                        choices=lambda: BBS_SAMPLERS)


@dataclass(kw_only=True)
class Spa:
    """Start-point augmentation: z0 ~ the VAE posterior instead of its mean (the release always samples)."""

    enabled: bool = axis(True, label="SPA", token=_on("spa"), column=True, off=False)


@dataclass(kw_only=True)
class Dvi:
    """Direct video injection: the DiT sees [z_t, z0], the new half of its patch embedding zero-initialised."""

    enabled: bool = axis(True, label="DVI", token=_on("dvi"), column=True, off=False)


@dataclass(kw_only=True)
class Wi:
    """Weight init from the pretrained text-to-video DiT (false: the same architecture at random init)."""

    enabled: bool = axis(True, label="WI", token=lambda v: None if v else "nowi", column=True, scope="all")


@dataclass(kw_only=True)
class Solver:
    """The Euler solver at inference (the release: one step, shift 3, integer timesteps)."""

    steps: int = axis(1, label="steps", token=lambda n: f"n{n}" if n != 1 else None, stage="inference", off=1, lo=1)
    shift: float = axis(3.0, label="shift", token=lambda s: f"sh{s:g}" if s != 3 else None, stage="inference",
                        off=3.0, lo=0, lo_open=True)  # s*t / (1 + (s-1)*t)
    sigma_min: float = setting(0.001, lo=0, hi=1, lo_open=True, hi_open=True, stage="inference")  # linspace(1, sigma_min, N+1)
    round_timesteps: bool = axis(True, label="rounded timesteps", token=lambda r: None if r else "noround",
                                 stage="inference", off=True)


@dataclass(kw_only=True)
class Flow:
    start_at_noise_end: bool = setting(True, stage="train")     # release: the start point at Wan's timestep 1000
    normalize_mask_latent: bool = setting(False, stage="train")  # release: the mask latent raw (REM normalises it)


@dataclass(kw_only=True)
class Text:
    """What the text encoder sees (the model preset sets ``max_length``)."""

    max_length: int = setting(MISSING, lo=1, stage="train")
    clean: str = setting("release", choices=lambda: TEXT_CLEANINGS, stage="inference")  # release: prompt_clean
    lowercase: str = setting("train", choices=lambda: LOWERCASE, stage="inference")  # train: training captions only


@dataclass(kw_only=True)
class Model:
    name: str = setting(MISSING, stage="train")
    path: str = MISSING
    dtype: str = setting("float32", choices=lambda: DTYPES)
    gradient_checkpointing: bool = False  # recompute each DiT block in backward
    # frozen: mean of the 3 decoded channels | tuned: a 1-channel logit head; tuned when a file below is given
    vae_decoder: str = axis("${tuned_if_given:${model.vae_decoder_path},${model.vae_ckpt}}", label="decoder",
                            token=lambda d: None if d == "frozen" else d, scope="all", stage="inference",
                            choices=lambda: VAE_DECODERS)
    vae_decoder_path: Optional[str] = None  # python -m rvosflow.decoder's folder (diffusers layout)
    vae_ckpt: Optional[str] = None          # the release's decoder.pth
    dit_ckpt: Optional[str] = None          # the release's mevis_ckpt.pth
    dit_weights: str = setting("ema", choices=lambda: DIT_WEIGHTS)  # its EMA over model (as the release infers) | model
    # release: decoder output clamped to [-1, 1], bilinear to the frame size, > 0 | antialias: area resize, > 0.5
    mask_rule: str = axis("release", label="mask rule", token=lambda r: None if r == "release" else f"mask-{r}",
                          scope="all", stage="inference", choices=lambda: MASK_RULES)


@dataclass(kw_only=True)
class Ema:
    """An EMA of the DiT weights (diffusers' EMAModel, as the release); validation and prediction use it."""

    enabled: bool = axis(False, label="EMA", token=_on("ema"), scope="all", stage="inference")
    decay: float = setting(0.9999, lo=0, hi=1)  # the release's; at step k+1 the decay is min(decay, (1+k)/(10+k))


@dataclass(kw_only=True)
class Decoder:
    """``python -m rvosflow.decoder`` (Table 4: lr 8e-5, 1 epoch, batch 4, focal + dice)."""

    lr: float = setting(8e-5, lo=0, lo_open=True)
    epochs: int = setting(1, lo=1)
    batch_size: int = setting(4, lo=1)
    weight_decay: float = setting(5e-4, lo=0)
    focal_alpha: float = setting(0.25, lo=0, hi=1)
    focal_gamma: float = setting(2.0, lo=0)
    dice_weight: float = setting(1.0, lo=0)  # loss = focal + dice_weight * dice
    head_init: str = setting("mean", choices=lambda: HEAD_INITS)  # mean: the frozen rule | random
    max_steps: Optional[int] = setting(None, lo=1)  # cap on optimizer steps; null = the epochs
    crop: Optional[int] = setting(None, lo=1)       # train on a random crop x crop window (CPU budgets)
    frames: Optional[int] = setting(None, lo=1, rule=_ONE_PLUS_4K)  # the first 1 + 4k frames of each clip


@dataclass(kw_only=True)
class Optim:
    """AdamW. The defaults are the paper's Table 4: lr 6e-5, betas 0.9/0.999, wd 5e-4, no schedule."""

    lr: float = setting(6e-5, lo=0)
    betas: List[float] = setting(lo=0, hi=1, hi_open=True, factory=lambda: [0.9, 0.999])
    weight_decay: float = setting(5e-4, lo=0)
    schedule: str = setting("constant", choices=lambda: LR_SCHEDULES)  # cosine: to 0 over the run | multistep
    milestones: List[int] = setting(lo=1, factory=lambda: [30])  # multistep: epochs where lr *= gamma
    gamma: float = setting(0.9, lo=0, hi=1, lo_open=True)


@dataclass(kw_only=True)
class Data:
    """The keys every ``data.format`` takes; the formats below add theirs."""

    format: str = setting(MISSING, choices=lambda: sorted(DATAMODULES))
    root: str = MISSING
    generate_if_missing: bool = False  # the synthetic presets: write the benchmark on first use
    tier: Optional[str] = setting(None, choices=lambda: [*TIERS, None])  # synthetic presets: the tier at root
    train_split: str = "train"
    val_split: str = "valid_u"
    predict_split: str = "${.val_split}"  # mode=predict: any split (MeViS `valid` for the server)
    eval_videos: Optional[int] = setting(None, lo=1)  # score/predict only the first N videos (quick runs)
    num_frames: int = setting(17, lo=1, rule=_ONE_PLUS_4K)
    frame_sampler: str = setting("global", choices=lambda: FRAME_SAMPLERS)  # global | uniform | random_sorted (REM) | first | release
    augment: str = setting("none", choices=lambda: AUGMENTATIONS)  # training clips; release: its resize/crop + flip
    empty_clips: str = setting("keep", choices=lambda: EMPTY_CLIPS)  # resample: redraw a clip with no target pixel (release)
    height: int = setting(480, lo=16)            # frames fit height x max_width, sides floored to size_multiple
    max_width: int = setting(832, lo=16)
    size_multiple: Optional[int] = setting(16, lo=1, stage="inference")  # release: 16 hard-coded; null = the model's
    batch_size: int = setting(1, lo=1)            # per device; Table 4's global batch is 8 (8 GPUs)
    val_batch_size: int = setting(8, lo=1)       # whole videos scored together when their shapes match
    num_workers: int = setting(8, lo=0)
    val_limit: Optional[int] = setting(50, lo=1)  # expressions scored by in-training validation; the final score uses all


@dataclass(kw_only=True)
class RefDavisData(Data):
    annotators: List[int] = setting(lo=0, hi=3, factory=lambda: [0, 1, 2, 3])


_COCO = ("refcoco", "refcoco+", "refcocog")


@dataclass(kw_only=True)
class RefcocoData(Data):
    images: Optional[str] = None  # COCO train2014 (default <root>/images/train2014)
    datasets: List[str] = setting(choices=lambda: _COCO, factory=lambda: ["refcoco"])


@dataclass(kw_only=True)
class MixedData(Data):
    video_format: str = setting("mevis", choices=lambda: ("mevis", "ref_ytvos"))
    image_root: str = MISSING
    image_datasets: List[str] = setting(choices=lambda: _COCO, factory=lambda: ["refcoco"])
    image_split: str = "train"
    images: Optional[str] = None
    image_ratio: float = setting(0.3, lo=0, hi=1)
    image_frames: int = setting(1, lo=1, rule=_ONE_PLUS_4K)


DATA_SCHEMAS = {"mevis": Data, "ref_ytvos": Data, "ref_davis": RefDavisData, "refcoco": RefcocoData, "mixed": MixedData}


# ------------------------------------------------------------------------------ Lightning's Trainer

# Trainer arguments the run passes itself (trainer.py), never from the config.
TRAINER_SET_BY_RUN = ("logger", "callbacks", "plugins", "default_root_dir")
# Where Lightning's numeric arguments stop meaning a run: (lo, hi, lo_open). Everything else about
# them (names, types, defaults) is Lightning's own signature.
TRAINER_RANGES = {
    "num_nodes": (1, None, False), "fast_dev_run": (0, None, False), "max_epochs": (-1, None, False),
    "min_epochs": (0, None, False), "max_steps": (-1, None, False), "min_steps": (0, None, False),
    "limit_train_batches": (0, None, False), "limit_val_batches": (0, None, False),
    "limit_test_batches": (0, None, False), "limit_predict_batches": (0, None, False),
    "overfit_batches": (0, None, False), "val_check_interval": (0, None, True), "check_val_every_n_epoch": (1, None, False),
    "num_sanity_val_steps": (-1, None, False), "log_every_n_steps": (1, None, False),
    "accumulate_grad_batches": (1, None, False), "gradient_clip_val": (0, None, False),
    "reload_dataloaders_every_n_epochs": (0, None, False), "devices": (-1, None, False),
}
# Names Lightning resolves besides its registries' (its accelerator connector's aliases).
_ACCELERATOR_ALIASES = ("auto", "gpu")
_STRATEGY_ALIASES = ("auto",)
TRAINER_CHOICES = {
    "accelerator": lambda: sorted({*_ACCELERATOR_ALIASES, *AcceleratorRegistry.available_accelerators()}),
    "strategy": lambda: [*_STRATEGY_ALIASES, *StrategyRegistry.available_strategies()],
    "gradient_clip_algorithm": lambda: ["norm", "value", None],
    "profiler": lambda: ["simple", "advanced", "pytorch", "xla", None],
}


def _trainer_args():
    """``lightning.Trainer.__init__``'s parameters as a dataclass the checker holds ``trainer.`` against."""
    hints = typing.get_type_hints(lightning.Trainer.__init__)
    fields = []
    for name, p in inspect.signature(lightning.Trainer.__init__).parameters.items():
        if name == "self" or name in TRAINER_SET_BY_RUN:
            continue
        lo, hi, lo_open = TRAINER_RANGES.get(name, (None, None, False))
        meta = {"range": (lo, hi), "open": (lo_open, False)}
        if name in TRAINER_CHOICES:
            meta["choices"] = TRAINER_CHOICES[name]
        fields.append((name, hints[name], field(default=p.default, metadata=meta)))
    return dataclasses.make_dataclass("TrainerArgs", fields, kw_only=True)


TrainerArgs = _trainer_args()


def trainer_defaults() -> dict:
    """Lightning's own defaults of the arguments a config may set."""
    return {f.name: f.default for f in dataclasses.fields(TrainerArgs)}


@dataclass(kw_only=True)
class Fsdp:
    sharding_strategy: str = setting("FULL_SHARD", choices=lambda: ("FULL_SHARD", "SHARD_GRAD_OP", "HYBRID_SHARD", "NO_SHARD"))
    param_dtype: str = setting("bfloat16", choices=lambda: DTYPES)   # weights are all-gathered and used in this dtype
    reduce_dtype: str = setting("float32", choices=lambda: DTYPES)   # gradients are reduced in this dtype
    buffer_dtype: str = setting("float32", choices=lambda: DTYPES)
    state_dict_type: str = setting("full", choices=lambda: ("full", "sharded"))  # full: last.ckpt loads without FSDP
    cpu_offload: bool = False


MODEL_FILES = ("checkpoint", "release")


@dataclass(kw_only=True)
class Logger:
    tracking_uri: Optional[str] = None  # null = sqlite:///<project root>/mlflow.db; or http://server:5000
    # the MLflow UI for links; null = the tracking server, or http://127.0.0.1:5000 (make mlflow-ui)
    ui_url: Optional[str] = None
    experiment_name: str = "rvosflow"
    run_name: Optional[str] = None
    tags: Dict[str, Any] = field(default_factory=dict)
    # A training run's logged model (MLflow's Logged models): checkpoint = last.ckpt (resumable, with the
    # optimizer state), release = mevis_ckpt.pth in the release's layout (written into <run dir>/release); [] = none
    model_files: List[str] = setting(choices=lambda: MODEL_FILES, factory=lambda: ["checkpoint"])
    upload_weights: bool = True  # false: the logged model lists the files (path, size), their bytes stay on disk
    # seconds between MLflow's system metrics samples (CPU, memory, GPU); null = off
    system_metrics_interval: Optional[float] = setting(10.0, lo=0, lo_open=True)


@dataclass(kw_only=True)
class RunConfig:
    """``configs/config.yaml`` and its groups, composed. Without ``+paradigm=``, the paper's final
    model (Table 2 row h): video2mask, BBS p=0.5, SPA, DVI and WI."""

    mode: str = setting("train", choices=lambda: ("train", "validate", "predict"))
    ckpt_path: Optional[str] = None  # a Lightning checkpoint to validate/predict with (or resume training from)
    init_from: Optional[str] = None  # a Lightning checkpoint whose DiT weights start training (e.g. RefCOCO stage 1)
    overwrite: bool = False  # replace a finished run's results in its run folder (else refused)
    checkpoint: Checkpoint = field(default_factory=Checkpoint)
    predict: Predict = field(default_factory=Predict)
    seed: int = setting(0, lo=0, hi=MAX_SEED)
    paradigm: Any = None  # the paradigm's options class (``paradigms``): name, and its own knobs
    bbs: Bbs = field(default_factory=Bbs)
    spa: Spa = field(default_factory=Spa)
    dvi: Dvi = field(default_factory=Dvi)
    wi: Wi = field(default_factory=Wi)
    solver: Solver = field(default_factory=Solver)
    flow: Flow = field(default_factory=Flow)
    text: Text = field(default_factory=Text)
    model: Model = field(default_factory=Model)
    ema: Ema = field(default_factory=Ema)
    decoder: Decoder = field(default_factory=Decoder)
    optim: Optim = field(default_factory=Optim)
    data: Any = None  # the format's ``Data`` class (DATA_SCHEMAS)
    cache_latents: bool = True  # frozen VAE outputs per clip are encoded once (a big win on CPU)
    latent_cache_dir: Optional[str] = "${root:}/cache/latents"  # shared by runs and sweep workers; null = memory only
    text_cache_dir: Optional[str] = "${root:}/cache/text"  # UMT5 embeddings per caption; null = memory only
    num_overlays: int = setting(4, lo=0)  # validation expressions (one per video) drawn as mask overlays into MLflow
    trajectory_steps: int = setting(5, lo=0)  # the flow's path for one of them, at this many solver steps (0 = off)
    # the closing score's slices beyond kinds (rvosflow.metrics.slices): results.json and MLflow
    slices: List[str] = setting(factory=lambda: list(SLICES),
                                rule=(lambda v: set(v) <= set(SLICES), f"a list of {', '.join(SLICES)}"))
    # null: whole videos in one pass (the release); N: windows of N frames (memory)
    window_frames: Optional[int] = axis(None, label="window", token=lambda w: f"w{w}" if w else None, scope="all",
                                        stage="inference", lo=1)
    trainer: Dict[str, Any] = field(default_factory=trainer_defaults)  # lightning.Trainer's arguments
    fsdp: Optional[Fsdp] = None  # +strategy=fsdp
    logger: Logger = field(default_factory=Logger)
    overrides: List[str] = field(default_factory=list)  # what was typed (command line, sweep row): config.typed_keys


# What a node holds, where a plain annotation cannot say it (the paradigm's and the format's keys,
# Lightning's arguments).
def node_schema(key: str, value) -> type | None:
    if key == "paradigm":
        name = value.get("name") if isinstance(value, dict) else None
        return PARADIGMS[name].options if name in PARADIGMS else PARADIGMS["video2mask"].options
    if key == "data":
        return DATA_SCHEMAS.get(value.get("format") if isinstance(value, dict) else None, Data)
    if key == "trainer":
        return TrainerArgs
    return None


def axes(cfg=None) -> list[Axis]:
    """Every ablation axis, with its key, in declaration order: the paradigm's (its name first) and
    the run's. ``cfg`` (a run config) picks the paradigm whose own knobs are included; without it,
    every paradigm's."""
    names = [cfg.paradigm.name] if cfg is not None else sorted(PARADIGMS)
    seen: dict[str, Axis] = {}
    for name in names:
        for a in axes_of(PARADIGMS[name].options, "paradigm."):
            seen.setdefault(a.key, a)
    return [*seen.values(), *axes_of(RunConfig)]


def stages(cfg=None) -> dict[str, str]:
    """``{key: "train" | "inference"}`` of every setting a checkpoint fixes (module doc of ``axes``)."""
    out = {}
    for name in ([cfg.paradigm.name] if cfg is not None else sorted(PARADIGMS)):
        out.update(stages_of(PARADIGMS[name].options, "paradigm."))
    out.update(stages_of(RunConfig))
    for schema in dict.fromkeys(DATA_SCHEMAS.values()):
        out.update(stages_of(schema, "data."))
    return out


# ------------------------------------------------------------------------------ checking

def describe_key(key: str) -> str | None:
    """What the schema expects at a dotted ``key`` (``an integer >= 1``), or None for no such key:
    the words for a value Hydra's typed merge refused before :func:`check` could see it."""
    candidates = {"paradigm": [p.options for p in PARADIGMS.values()], "data": list(DATA_SCHEMAS.values()),
                  "trainer": [TrainerArgs]}
    first, *rest = key.split(".")
    schemas = candidates.get(first) if rest else None
    if schemas is None:
        schemas, rest = [RunConfig], key.split(".")
    for cls in schemas:
        node, found = cls, None
        for i, part in enumerate(rest):
            f = {f.name: f for f in dataclasses.fields(node)}.get(part) if dataclasses.is_dataclass(node) else None
            if f is None:
                break
            tp = typing.get_type_hints(node)[part]
            if i == len(rest) - 1:
                found = _describe(tp, f.metadata)
            node = tp if dataclasses.is_dataclass(tp) else _optional_dataclass(tp)
        if found:
            return found
    return None


def check(cfg) -> None:
    """Raise :class:`ConfigError` on the first key that is unknown, missing, of the wrong type
    or out of range (``cfg``: a DictConfig or a plain dict)."""
    check_node(plain(cfg), RunConfig, "")


def build(cfg) -> RunConfig:
    """A checked config (DictConfig or plain dict) as the dataclasses, defaults filled in."""
    return build_node(plain(cfg), RunConfig, "")


def plain(cfg) -> dict:
    """A DictConfig resolved to plain containers (an unresolvable or ``???`` value is a ConfigError)."""
    if not isinstance(cfg, DictConfig):
        return cfg
    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as exc:
        raise ConfigError(f"{exc.full_key}: expected a value, got none (??? in the config)") from None
    except OmegaConfBaseException as exc:  # an interpolation that does not resolve
        msg = str(exc).splitlines()[0]
        raise ConfigError(f"{getattr(exc, 'full_key', '') or '?'}: expected a value that resolves, got an error: {msg}") from None


def build_node(value: dict, schema, key: str = ""):
    """A checked mapping as an instance of the dataclass ``schema`` (nested ones too), defaults filled in."""
    kwargs = {}
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        if f.name not in value:
            continue  # the dataclass' default
        sub, tp, v = (f"{key}.{f.name}" if key else f.name), hints[f.name], value[f.name]
        inner = node_schema(sub, v) or (tp if dataclasses.is_dataclass(tp) else _optional_dataclass(tp))
        item = _item_dataclass(tp)
        if inner is not None and inner is not TrainerArgs and isinstance(v, dict):
            v = build_node(v, inner, sub)
        elif item is not None and isinstance(v, list):
            v = [build_node(x, item, f"{sub}[{i}]") for i, x in enumerate(v)]
        elif item is not None and isinstance(v, dict):
            v = {k: build_node(x, item, f"{sub}.{k}") for k, x in v.items()}
        kwargs[f.name] = v
    return schema(**kwargs)


def _item_dataclass(tp):
    """The dataclass of a ``List[X]`` / ``Dict[str, X]`` annotation's items, if X is one."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (list, List, dict, Dict) and args and dataclasses.is_dataclass(args[-1]):
        return args[-1]
    return None


def check_node(value, schema, key: str = "", root: str = "the run config") -> None:
    """Raise a ConfigError on the first key of the mapping ``value`` that the dataclass ``schema``
    does not know, misses, or holds a value of another type or range for (``root`` names the whole)."""
    _check_node(value, schema, key, root)


def _check_node(value, schema, key: str, root: str = "the run config") -> None:
    where = key or root
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping of {schema.__name__} settings, got {value!r}")
    if schema is Data or (key == "paradigm"):  # the keys of these nodes depend on their format / paradigm name
        first = "format" if schema is Data else "name"
        _check_value(value.get(first), _field(schema, first), f"{key}.{first}", str)
        schema = node_schema(key, value)
    fields = {f.name: f for f in dataclasses.fields(schema)}
    hints = typing.get_type_hints(schema)
    for name in value:
        if name not in fields:
            raise ConfigError(_unknown(f"{key}.{name}" if key else str(name), str(name), fields, where))
    for name, f in fields.items():
        sub = f"{key}.{name}" if key else name
        if name not in value or value[name] == MISSING:
            if f.default == MISSING or value.get(name) == MISSING:
                raise ConfigError(f"{sub}: expected a value, got none (the key is missing)")
            continue
        inner = node_schema(sub, value[name])
        if inner is not None:
            _check_node(value[name], inner, sub)
        else:
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
    item = _item_dataclass(tp)
    if item is not None:  # a list or mapping of settings nodes (a sweep file's rows, profiles)
        for k, v in (enumerate(value) if isinstance(value, list) else value.items()):
            _check_node(v, item, f"{key}[{k}]" if isinstance(value, list) else f"{key}.{k}")
        return
    items = value if isinstance(value, list) else [value]
    for v in items:
        if isinstance(v, numbers.Real) and not isinstance(v, bool) and not _in_range(v, meta):
            raise ConfigError(f"{key}: expected {_describe(tp, meta)}, got {value!r}")
    if "choices" in meta and value is not None:
        allowed = list(meta["choices"]())
        if any(v not in allowed for v in items):
            shown = ", ".join(dict.fromkeys(str(a) for a in allowed if a is not None))  # 16 and "16" shown once
            raise ConfigError(f"{key}: expected one of {shown}{' or null' if None in allowed else ''}, got {value!r}")
    if "rule" in meta and value is not None:
        ok, what = meta["rule"]
        if not ok(value):
            raise ConfigError(f"{key}: expected {what}, got {value!r}")


def _in_range(v, meta) -> bool:
    """Finite, and inside the field's range (exclusive at an open end)."""
    if isinstance(v, float) and not math.isfinite(v):
        return False
    lo, hi = meta.get("range", (None, None))
    lo_open, hi_open = meta.get("open", (False, False))
    if lo is not None and (v < lo or (lo_open and v == lo)):
        return False
    return hi is None or not (v > hi or (hi_open and v == hi))


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
    if origin is typing.Literal:
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
    return isinstance(tp, type) and isinstance(value, tp)


def _describe(tp, meta=None) -> str:
    """``an integer >= 1``, ``a number in [0, 1]``, ``a finite number > 0``, ``true or false``, ``one of a, b`` ..."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    meta = meta or {}
    if "choices" in meta:
        allowed = list(meta["choices"]())
        return "one of " + ", ".join(map(str, (a for a in allowed if a is not None))) + (" or null" if None in allowed else "")
    lo, hi = meta.get("range", (None, None))
    lo_open, hi_open = meta.get("open", (False, False))
    if lo is not None and hi is not None:
        rng = f" in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    elif lo is not None:
        rng = f" {'>' if lo_open else '>='} {lo}"
    else:
        rng = ""
    literals = [v for a in args if typing.get_origin(a) is typing.Literal for v in typing.get_args(a)]
    if origin is Union and literals and all(typing.get_origin(a) is typing.Literal or a is type(None) for a in args):
        return "one of " + ", ".join(map(str, dict.fromkeys(literals))) + (" or null" if type(None) in args else "")
    if origin is Union:
        parts = list(dict.fromkeys(_describe(a, meta) for a in args if a is not type(None) and _plain_type(a)))
        text = " or ".join(parts)
        return f"{text} or null" if type(None) in args else text
    if origin is typing.Literal:
        return "one of " + ", ".join(map(str, args))
    if origin in (list, List):
        return f"a list of {_plural(_describe(args[0], meta))}"
    if origin in (dict, Dict):
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return f"a mapping of {tp.__name__} settings"
    return {bool: "true or false", int: f"an integer{rng}", float: f"a number{rng}", str: "a string"}.get(tp, str(tp))


def _plain_type(tp) -> bool:
    """A type a config value can have (not a Lightning object like an Accelerator)."""
    return tp in (bool, int, float, str) or typing.get_origin(tp) in (list, List, dict, Dict, typing.Literal, Union)


def _plural(text: str) -> str:
    for one, many in (("an integer", "integers"), ("a number", "numbers"), ("a string", "strings")):
        if text.startswith(one):
            return many + text[len(one):]
    return text
