"""The sweep file and its schema: a ``sweeps/*.yaml`` file, checked key by key, with one profile
chosen (:func:`load_spec`). What rows and parameters *mean* (their composed run configs) is checked
by the strategy (:mod:`rvosflow.sweep.strategy`) before any trial."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml
from omegaconf import MISSING

from rvosflow.errors import UserError

KINDS = ("grid", "search")


@dataclass
class Row:
    id: str
    label: str
    overrides: list[str]
    paper: dict[str, float] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)  # filled from the composed config


@dataclass
class Spec:
    """A sweep file with one profile chosen."""

    path: Path
    kind: str
    name: str
    title: str
    profile: str
    seeds: list[int]
    overrides: list[str]                       # the profile's, before every trial's own
    rows: list[Row] = field(default_factory=list)              # grid
    base: list[str] = field(default_factory=list)              # search: before the parameters
    params: dict[str, dict] = field(default_factory=dict)      # search: key -> distribution
    base_settings: dict[str, Any] = field(default_factory=dict)  # search: the base's settings (composed)
    n_trials: int | None = None
    sampler: dict = field(default_factory=dict)
    pruner: dict = field(default_factory=dict)
    metric: str = "JF"
    monitor: str = "val/JF"
    direction: str = "maximize"
    heartbeat_interval: int = 10
    grace_period: int = 60
    max_retry: int = 2

    @property
    def grid(self) -> list[tuple[str, int]]:
        return [(r.id, s) for r in self.rows for s in self.seeds]

    def row(self, row_id: str) -> Row:
        return next(r for r in self.rows if r.id == row_id)


class SpecError(UserError, ValueError):
    """A bad sweep file or sweep setting; the message names the file and the key."""


# The file's schema (OmegaConf structured configs): an unknown or misspelt key, or a value of the
# wrong type, is an error naming the key (and the allowed keys), never silently a default.

@dataclass
class ProfileFile:
    seeds: List[int] = field(default_factory=lambda: [0])
    overrides: List[str] = field(default_factory=list)  # before every trial's own
    n_trials: Optional[int] = None                      # search: overrides the file's n_trials


@dataclass
class RowFile:
    id: str = MISSING
    label: Optional[str] = None
    overrides: List[str] = field(default_factory=list)
    paper: Dict[str, float] = field(default_factory=dict)


@dataclass
class ParamFile:
    type: str = "float"  # float | int | categorical
    low: Optional[float] = None
    high: Optional[float] = None
    log: bool = False
    step: Optional[float] = None
    choices: Optional[List[Any]] = None


@dataclass
class SweepFile:
    kind: str = "grid"
    name: Optional[str] = None
    title: Optional[str] = None
    metric: str = "JF"            # what a trial returns to Optuna (percent): JF, J or F
    direction: str = "maximize"
    monitor: str = "val/JF"       # search: what the pruner watches during training
    rows: List[RowFile] = field(default_factory=list)
    base: List[str] = field(default_factory=list)
    params: Dict[str, ParamFile] = field(default_factory=dict)
    n_trials: Optional[int] = None
    sampler: Dict[str, Any] = field(default_factory=dict)  # Optuna sampler: type + its arguments
    pruner: Dict[str, Any] = field(default_factory=dict)   # Optuna pruner: type + its arguments
    profiles: Dict[str, ProfileFile] = field(default_factory=dict)
    heartbeat_interval: int = 10
    grace_period: int = 60
    max_retry: int = 2


METRICS = ("JF", "J", "F")
DIRECTIONS = ("maximize", "minimize")
PARAM_TYPES = ("float", "int", "categorical")


def _schema_error(path: Path, exc: Exception) -> SpecError:
    """One line: the file, the key, and what is allowed there."""
    from omegaconf.errors import ConfigKeyError

    key = getattr(exc, "full_key", "") or "?"
    obj = getattr(exc, "object_type", None)
    if isinstance(exc, ConfigKeyError) and obj is not None and dataclasses.is_dataclass(obj):
        allowed = ", ".join(f.name for f in dataclasses.fields(obj))
        return SpecError(f"{path}: {key}: unknown key; allowed: {allowed}")
    msg = (getattr(exc, "msg", None) or str(exc)).splitlines()[0]
    return SpecError(f"{path}: {key}: {msg}")


def read_sweep_file(path: str | Path) -> SweepFile:
    """The sweep file checked against :class:`SweepFile` (keys and types)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    path = Path(path)
    raw = yaml.safe_load(path.read_text())
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: expected a mapping, found {type(raw).__name__}")
    if raw.get("command"):  # a table with its own pipeline (sweeps/table3.yaml), not an Optuna sweep
        raise SpecError(f"{path}: expected an Optuna sweep file, found a table run by `{raw['command']}`")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(SweepFile), raw)
        data = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise _schema_error(path, exc) from None
    for key, value, allowed in (("kind", data.kind, KINDS), ("metric", data.metric, METRICS),
                                ("direction", data.direction, DIRECTIONS)):
        if value not in allowed:
            raise SpecError(f"{path}: {key}: expected one of {', '.join(allowed)}, found {value!r}")
    for name, dist in data.params.items():
        if dist.type not in PARAM_TYPES:
            raise SpecError(f"{path}: params.{name}.type: expected one of {', '.join(PARAM_TYPES)}, found {dist.type!r}")
        need = ("choices",) if dist.type == "categorical" else ("low", "high")
        for k in need:
            if getattr(dist, k) is None:
                raise SpecError(f"{path}: params.{name}.{k}: expected a value for type {dist.type}, found none")
    return data


def load_spec(path: str | Path, profile: str = "default") -> Spec:
    path = Path(path)
    raw = read_sweep_file(path)
    profiles = raw.profiles or {"default": ProfileFile()}
    if profile not in profiles:
        raise SpecError(f"{path}: profiles: expected one of {', '.join(profiles)} (--profile), got {profile!r}")
    prof = profiles[profile] or ProfileFile()
    spec = Spec(
        path=path, kind=raw.kind, name=raw.name or path.stem, title=raw.title or path.stem,
        profile=profile, seeds=list(prof.seeds), overrides=list(prof.overrides), metric=raw.metric,
        monitor=raw.monitor, direction=raw.direction, heartbeat_interval=raw.heartbeat_interval,
        grace_period=raw.grace_period, max_retry=raw.max_retry,
    )
    from rvosflow.sweep.strategy import STRATEGIES

    STRATEGIES[raw.kind].read(spec, raw, prof)  # the rows (grid) or the parameters (search)
    return spec


def settings_fingerprint(spec: Spec, extra: list[str]) -> str:
    """What must not change under a study's feet (seeds and n_trials may: they extend it)."""
    what = {"kind": spec.kind, "profile": spec.overrides, "extra": extra,
            "rows": {r.id: r.overrides for r in spec.rows}, "base": spec.base, "params": spec.params}
    return hashlib.sha1(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]
