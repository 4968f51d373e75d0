"""The run config from what a user types: composed by Hydra on top of the typed schema
(:mod:`rvosflow.schema`), then resolved into the dataclasses a run receives.

    cfg = compose(["+paradigm=video2mask", "bbs.p=0.5"])   # a DictConfig; the overrides recorded in cfg.overrides
    run_cfg = resolve(cfg)                                   # a schema.RunConfig, or a one-line ConfigError

:func:`resolve` checks types and ranges (the schema), takes a checkpoint's own settings
(``ckpt_path``: what it was trained as holds, its inference settings unless typed), sets every
ablation axis the paradigm does not take to its off value (a *typed* one is an error), and
applies the rules that span keys. "Typed" means what the user wrote: the command line or a sweep
row, and the keys of the presets they picked (:func:`typed_keys`), even where a value equals the
default.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from pathlib import Path

import yaml
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf, open_dict

from rvosflow import schema
from rvosflow.axes import fields_of
from rvosflow.checkpoints import stored_config, stored_value
from rvosflow.errors import ConfigError
from rvosflow.paradigms import PARADIGMS
from rvosflow.paths import PROJECT_ROOT

CONFIG_DIR = PROJECT_ROOT / "configs"
GROUPS = ("data", "model", "paradigm", "experiment", "strategy")  # config groups (folders of configs/)
# What must agree for `init_from` to start from a checkpoint's DiT.
INIT_FROM_KEYS = ("paradigm.name", "dvi.enabled", "model.name")


def register() -> None:
    """The schema as Hydra's base configs (idempotent): ``run_schema`` under ``config.yaml``, and
    ``/schema/data/<format>`` under each data preset."""
    store = ConfigStore.instance()
    store.store(name="run_schema", node=schema.RunConfig)
    for fmt, cls in schema.DATA_SCHEMAS.items():
        store.store(group="schema/data", name=fmt, node=cls)
    if not OmegaConf.has_resolver("root"):
        OmegaConf.register_new_resolver("root", lambda: str(PROJECT_ROOT))
    if not OmegaConf.has_resolver("tuned_if_given"):  # model.vae_decoder follows the decoder files
        OmegaConf.register_new_resolver("tuned_if_given", lambda *paths: "tuned" if any(paths) else "frozen")


register()


def compose(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """The config `python run.py <overrides>` would see (without Hydra's own node), the overrides
    recorded in ``overrides``. Hydra's composition errors come back as one-line ConfigErrors."""
    try:
        if GlobalHydra.instance().is_initialized():  # inside run.py's @hydra.main: same configs
            cfg = hydra_compose(config_name="config", overrides=list(overrides))
        else:
            with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
                cfg = hydra_compose(config_name="config", overrides=list(overrides))
    except (HydraException, yaml.YAMLError) as exc:
        raise hydra_error(exc, overrides) from exc
    return with_overrides(cfg, overrides)


def with_overrides(cfg: DictConfig, overrides) -> DictConfig:
    with open_dict(cfg):
        cfg.overrides = [str(o) for o in overrides]
    return cfg


# ------------------------------------------------------------------------------ what was typed

def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def typed_keys(overrides) -> set[str]:
    """The keys the overrides set: a ``key=value`` names its key; a ``[+]group=option`` the keys of
    that preset file (and of the presets it pulls in); a setting whose default interpolates typed
    keys (``model.vae_decoder`` follows the decoder files) counts as typed too."""
    keys: set[str] = set()
    for override in overrides:
        key = _override_key(override)
        if key in GROUPS and "=" in override:
            keys |= preset_keys(key, override.split("=", 1)[1])
        elif not key.startswith("hydra."):
            keys.add(key)
    for key, f, _ in fields_of(schema.RunConfig):
        if isinstance(f.default, str) and set(re.findall(r"\$\{([\w.]+)\}", f.default)) & keys:
            keys.add(key)
    return keys


def preset_keys(group: str, option: str) -> set[str]:
    """The leaf keys ``configs/<group>/<option>.yaml`` sets, with those of the presets its defaults
    list overrides (``- override /data: mevis``); its schema base (``/schema/...``) sets none."""
    path = CONFIG_DIR / group / f"{option}.yaml"
    if not path.is_file():
        return set()
    text = path.read_text()
    body = yaml.safe_load(text) or {}
    prefix = "" if "@package _global_" in text.split("\n", 3)[0] + text.split("\n", 3)[1] else f"{group}."
    keys: set[str] = set()
    for entry in body.pop("defaults", []) or []:
        if isinstance(entry, dict):
            for k, v in entry.items():
                name = str(k).replace("override", "").strip().lstrip("/")
                if name in GROUPS and v:
                    keys |= preset_keys(name, str(v))

    def leaves(node, at):
        for k, v in node.items():
            if isinstance(v, dict) and v:
                leaves(v, f"{at}{k}.")
            else:
                keys.add(f"{at}{k}")

    leaves(body, prefix)
    return keys


# ------------------------------------------------------------------------------ resolving

def resolve(cfg: DictConfig) -> schema.RunConfig:
    """The typed run config of ``cfg``, or a ConfigError naming the first bad key (see the module doc)."""
    schema.check(cfg)
    typed = typed_keys(cfg.get("overrides") or [])
    plain = schema.plain(cfg)
    if plain.get("ckpt_path"):
        plain = apply_checkpoint(plain, typed, plain["ckpt_path"])
        schema.check(plain)
    plain = apply_axes(plain, typed)
    run = schema.build(plain)
    check_rules(run)
    if run.init_from and run.mode == "train":
        check_init_from(plain, run.init_from)
    return run


def _get(d: dict, key: str, default=None):
    for part in key.split("."):
        if not isinstance(d, dict) or part not in d:
            return default
        d = d[part]
    return d


def _set(d: dict, key: str, value) -> None:
    *parents, last = key.split(".")
    for part in parents:
        d = d.setdefault(part, {})
    d[last] = value


def accepts(paradigm: str, axis) -> bool:
    return axis.scope == "all" or bool({axis.group(), axis.key} & PARADIGMS[paradigm].accepts)


def apply_axes(plain: dict, typed: set[str]) -> dict:
    """Every axis the run's paradigm does not take set to its off value; a typed one that is not
    off is an error naming the axis and what the paradigm takes."""
    out = copy.deepcopy(plain)
    name = plain["paradigm"]["name"]
    everything = schema.axes()
    for axis in schema.axes():
        if accepts(name, axis) or _get(plain, axis.key) == axis.off_value():
            continue
        if axis.key in typed:
            taken = [a.label for a in everything if a.scope == "accepted" and accepts(name, a)]
            raise ConfigError(f"{axis.key}: paradigm '{name}' cannot take {axis.label} "
                              f"(it accepts: {', '.join(dict.fromkeys(taken)) or 'none besides wi'})")
        _set(out, axis.key, axis.off_value())
    return out


def apply_checkpoint(plain: dict, typed: set[str], path) -> dict:
    """``plain`` with the settings of the checkpoint at ``path`` (``ckpt_path``): what it was trained
    as (``stage="train"``) holds, and typing another value is an error naming the key and both values;
    its inference settings hold unless typed."""
    stored = stored_config(path, "ckpt_path")
    out = copy.deepcopy(plain)
    for key, stage in schema.stages().items():
        found, theirs = stored_value(stored, key)
        ours = _get(plain, key)
        if not found or ours == theirs:
            continue
        if key in typed:
            if stage == "train":
                raise ConfigError(f"{key}: the checkpoint {path} was trained with {theirs!r}, "
                                  f"the command line says {ours!r}")
            continue
        _set(out, key, theirs)
    return out


def check_init_from(plain: dict, path) -> None:
    """``init_from`` needs a checkpoint of the same paradigm, DVI and model: name what differs."""
    stored = stored_config(path, "init_from")
    diffs = [f"{k}={stored_value(stored, k)[1]!r} there, {_get(plain, k)!r} here"
             for k in INIT_FROM_KEYS if stored_value(stored, k)[1] != _get(plain, k)]
    if diffs:
        raise ConfigError(f"init_from: {path} is incompatible with this run: {'; '.join(diffs)}")


def check_rules(run: schema.RunConfig) -> None:
    """The rules that span keys: FSDP needs its block and cannot keep an EMA; the decoder files
    agree with ``model.vae_decoder``; one source of DiT weights at a time."""
    strategy = run.trainer.get("strategy")
    if strategy == "fsdp" and run.fsdp is None:
        raise ConfigError("trainer.strategy: fsdp needs the fsdp.* settings, add +strategy=fsdp; got no fsdp block")
    if strategy == "fsdp" and run.ema.enabled:  # each rank holds a shard: EMAModel's shadows would not fit it
        raise ConfigError("ema.enabled: expected false with trainer.strategy=fsdp (the EMA keeps whole-model shadows), "
                          "got true (use +strategy=ddp, or ema.enabled=false)")
    check_tracking_uri(run.logger.tracking_uri)
    m = run.model
    if m.vae_decoder_path and m.vae_ckpt:
        raise ConfigError(f"model.vae_ckpt: expected one tuned decoder, found model.vae_ckpt={m.vae_ckpt} "
                          f"and model.vae_decoder_path={m.vae_decoder_path}")
    if m.vae_decoder == "tuned" and not (m.vae_decoder_path or m.vae_ckpt):
        raise ConfigError("model.vae_decoder: tuned needs model.vae_decoder_path=<python -m rvosflow.decoder folder> "
                          "or model.vae_ckpt=<decoder.pth>, found neither")
    if m.vae_decoder == "frozen" and (m.vae_decoder_path or m.vae_ckpt):
        key = "model.vae_ckpt" if m.vae_ckpt else "model.vae_decoder_path"
        raise ConfigError(f"model.vae_decoder: frozen, but {key}={m.vae_ckpt or m.vae_decoder_path} is a tuned decoder "
                          "(leave model.vae_decoder unset or set it to tuned)")
    if m.dit_ckpt and (run.ckpt_path or run.init_from):
        other = "ckpt_path" if run.ckpt_path else "init_from"
        raise ConfigError(f"model.dit_ckpt: expected one source of DiT weights, found model.dit_ckpt and {other}")


TRACKING_SCHEMES = ("sqlite", "http", "https", "databricks", "postgresql", "mysql", "mssql")


def check_tracking_uri(uri: str | None, key: str = "logger.tracking_uri") -> None:
    """An MLflow tracking URI MLflow can use, checked before any work: ``sqlite:///<path>`` (its
    folder must exist or be creatable), a server (``http(s)://``) or a database URL. MLflow 3.13+
    refuses the ``./mlruns`` file store."""
    if uri is None:
        return
    scheme, sep, rest = str(uri).partition("://")
    base = scheme.split("+")[0]  # postgresql+psycopg2://
    if not sep or base not in TRACKING_SCHEMES:
        raise ConfigError(f"{key}: expected sqlite:///<path>, http(s)://host:port or a database URL "
                          f"({', '.join(TRACKING_SCHEMES[3:])}://...), got {uri!r}")
    if base == "sqlite":
        if not rest.startswith("/"):
            raise ConfigError(f"{key}: expected sqlite:///<absolute path> (three slashes), got {uri!r}")
        folder = Path(rest[1:] if rest.startswith("//") else rest).parent
        existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
        if existing is None or not existing.is_dir():
            raise ConfigError(f"{key}: expected a database path in a folder, got {uri!r} ({existing} is not a folder)")


def meaningless(run: schema.RunConfig) -> list[str]:
    """Settings that are valid but make a training's number mean something else than it says (a
    warning and a tag on the run, not an error: a baseline may want them)."""
    if run.mode != "train":
        return []
    out = []
    if run.optim.lr == 0:
        out.append("optim.lr=0: the weights never change; the score is the untrained model's")
    if run.trainer.get("max_steps") == 0 or run.trainer.get("max_epochs") == 0 or run.trainer.get("limit_train_batches") == 0:
        out.append("no training step runs (trainer.max_steps, max_epochs or limit_train_batches is 0): "
                   "the score is the starting model's")
    return out


def flat_params(run) -> dict[str, str]:
    """A run config (dataclasses, DictConfig or dict) as ``{"bbs.p": "0.5", ...}`` for MLflow params."""
    out: dict[str, str] = {}

    def walk(node, prefix):
        if dataclasses.is_dataclass(node):
            node = {f.name: getattr(node, f.name) for f in dataclasses.fields(node)}
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            out[prefix[:-1]] = str(node)

    walk(schema.plain(run) if isinstance(run, DictConfig) else run, "")
    return out


# ------------------------------------------------------------------------------ Hydra's errors

def yaml_error(exc: BaseException) -> ConfigError | None:
    """A config file that is not YAML, as one line: the file and the line PyYAML names."""
    while exc is not None:
        mark = getattr(exc, "problem_mark", None)
        if isinstance(exc, yaml.YAMLError) and mark is not None:
            return ConfigError(f"{mark.name}: expected YAML, found a syntax error at line {mark.line + 1}, "
                               f"column {mark.column + 1} ({getattr(exc, 'problem', '') or exc})")
        exc = exc.__cause__ or exc.__context__
    return None


def hydra_error(exc: Exception, overrides=()) -> ConfigError:
    """A Hydra composition error (unknown key or group option, bad override syntax, a value the
    schema's type refuses) as one line naming the key: ``<key>: expected <what>, got <what>``."""
    text = str(exc)
    if isinstance(exc, MissingConfigException) and exc.missing_cfg_file and exc.options:
        group, _, name = exc.missing_cfg_file.rpartition("/")
        return ConfigError(f"{group}: expected one of {', '.join(exc.options)}, got {name!r}")
    if isinstance(exc, OverrideParseException):
        detail = [ln for ln in text.splitlines() if ln and not ln.startswith(("See ", "Error parsing"))]
        return ConfigError(f"{exc.override}: expected key=value (Hydra's override syntax), got "
                           f"{detail[0] if detail else 'a parse error'}")
    marked = yaml_error(exc)
    if marked is not None:
        return marked
    m = re.match(r"Error merging override (\S+?)=(.*)", text)
    if m:  # the schema's type refused the value (OmegaConf's conversion): say it the schema's way
        key, raw = m.group(1).lstrip("+"), m.group(2)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        what = schema.describe_key(key)
        if what:
            return ConfigError(f"{key}: expected {what}, got {value!r}")
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
