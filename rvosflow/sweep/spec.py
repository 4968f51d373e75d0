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

from rvosflow.axes import setting
from rvosflow.errors import ConfigError, SpecError
from rvosflow.schema import build_node, check_node

MISSING = "???"  # a key the file must give


@dataclass
class Row:
    id: str
    label: str
    overrides: list[str]
    paper: dict[str, float] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)  # filled from the composed config
    reference: str | None = None  # the row its delta and CI are taken against (None: no delta)


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


# The file's schema, checked by the run config's checker (rvosflow.schema.check_node): an unknown
# or misspelt key, a value of the wrong type or range, is an error naming the file and the key
# (with the allowed keys), never silently a default.
KINDS = ("grid", "search")
METRICS = ("JF", "J", "F")
DIRECTIONS = ("maximize", "minimize")
PARAM_TYPES = ("float", "int", "categorical")


@dataclass(kw_only=True)
class ProfileFile:
    seeds: List[int] = setting(lo=0, factory=lambda: [0])
    overrides: List[str] = field(default_factory=list)  # before every trial's own
    n_trials: Optional[int] = setting(None, lo=1)       # search: overrides the file's n_trials


@dataclass(kw_only=True)
class RowFile:
    id: str = MISSING
    label: Optional[str] = None
    overrides: List[str] = field(default_factory=list)
    paper: Dict[str, float] = field(default_factory=dict)
    reference: Optional[str] = None  # this row's reference row; default the file's `reference`


@dataclass(kw_only=True)
class ParamFile:
    type: str = setting("float", choices=lambda: PARAM_TYPES)
    low: Optional[float] = None
    high: Optional[float] = None
    log: bool = False
    step: Optional[float] = setting(None, lo=0, lo_open=True)
    choices: Optional[List[Any]] = None


@dataclass(kw_only=True)
class SweepFile:
    kind: str = setting("grid", choices=lambda: KINDS)
    name: Optional[str] = None
    title: Optional[str] = None
    metric: str = setting("JF", choices=lambda: METRICS)  # what a trial returns to Optuna (percent)
    direction: str = setting("maximize", choices=lambda: DIRECTIONS)
    monitor: str = "val/JF"       # search: what the pruner watches during training
    rows: List[RowFile] = field(default_factory=list)
    reference: Optional[str] = None  # grid: the row every other row is compared with (paired bootstrap CI)
    base: List[str] = field(default_factory=list)
    params: Dict[str, ParamFile] = field(default_factory=dict)
    n_trials: Optional[int] = setting(None, lo=1)
    sampler: Dict[str, Any] = field(default_factory=dict)  # Optuna sampler: type + its arguments
    pruner: Dict[str, Any] = field(default_factory=dict)   # Optuna pruner: type + its arguments
    profiles: Dict[str, ProfileFile] = field(default_factory=dict)
    heartbeat_interval: int = setting(10, lo=1)
    grace_period: int = setting(60, lo=1)
    max_retry: int = setting(2, lo=0)


def read_sweep_file(path: str | Path) -> SweepFile:
    """The sweep file checked against :class:`SweepFile` (keys, types, ranges)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "somewhere"
        raise SpecError(f"{path}: expected YAML, found a syntax error at {where} ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: expected a mapping, found {type(raw).__name__}")
    if raw.get("command"):  # a table with its own pipeline (sweeps/table3.yaml), not an Optuna sweep
        raise SpecError(f"{path}: expected an Optuna sweep file, found a table run by `{raw['command']}`")
    try:
        check_node(raw, SweepFile, root="the sweep file")
    except ConfigError as exc:
        raise SpecError(f"{path}: {exc}") from None
    data = build_node(raw, SweepFile)
    for name, dist in data.params.items():
        for k in ("choices",) if dist.type == "categorical" else ("low", "high"):
            if getattr(dist, k) is None:
                raise SpecError(f"{path}: params.{name}.{k}: expected a value for type {dist.type}, found none")
    return data


def load_spec(path: str | Path, profile: str = "default") -> Spec:
    """The sweep file with ``profile`` chosen: a grid's rows (unique ids) or a search's parameters."""
    path = Path(path)
    raw = read_sweep_file(path)
    profiles = raw.profiles or {"default": ProfileFile()}
    if profile not in profiles:
        raise SpecError(f"{path}: profiles: expected one of {', '.join(profiles)} (--profile), got {profile!r}")
    prof = profiles[profile]
    spec = Spec(
        path=path, kind=raw.kind, name=raw.name or path.stem, title=raw.title or path.stem,
        profile=profile, seeds=list(prof.seeds), overrides=list(prof.overrides), metric=raw.metric,
        monitor=raw.monitor, direction=raw.direction, heartbeat_interval=raw.heartbeat_interval,
        grace_period=raw.grace_period, max_retry=raw.max_retry,
    )
    for r in raw.rows:
        reference = r.reference if r.reference is not None else raw.reference
        row = Row(id=str(r.id), label=r.label or str(r.id), overrides=list(r.overrides), paper=dict(r.paper),
                  reference=None if reference is None or str(reference) == str(r.id) else str(reference))
        if any(row.id == other.id for other in spec.rows):
            raise SpecError(f"{path}: rows: expected unique row ids, got {row.id!r} twice")
        spec.rows.append(row)
    ids = [r.id for r in spec.rows]
    for i, row in enumerate(spec.rows):
        if row.reference is not None and row.reference not in ids:
            key = f"rows[{i}].reference" if raw.rows[i].reference is not None else "reference"
            raise SpecError(f"{path}: {key}: expected a row id ({', '.join(ids)}), got {row.reference!r}")
    spec.base = list(raw.base)
    spec.params = {k: {f: v for f, v in dataclasses.asdict(d).items() if v is not None} for k, d in raw.params.items()}
    if raw.kind == "grid" and not spec.rows:
        raise SpecError(f"{path}: rows: expected a grid's rows, found none")
    if raw.kind == "search":
        if not spec.params:
            raise SpecError(f"{path}: params: expected a search's parameters, found none")
        spec.n_trials = int(prof.n_trials if prof.n_trials is not None else (raw.n_trials or 10))
        spec.sampler = dict(raw.sampler or {"type": "tpe"})
        spec.pruner = dict(raw.pruner or {"type": "median"})
    return spec


def settings_fingerprint(spec: Spec, extra: list[str]) -> str:
    """What must not change under a study's feet (seeds and n_trials may: they extend it)."""
    what = {"kind": spec.kind, "profile": spec.overrides, "extra": extra,
            "rows": {r.id: r.overrides for r in spec.rows}, "base": spec.base, "params": spec.params}
    return hashlib.sha1(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]
