"""Sweeps on Optuna: the tables of the paper as grids (row x seed), and searches (TPE + pruning).

    python -m rvosflow.sweep sweeps/table2.yaml --profile default [--workers N] [--storage URL]
    python -m rvosflow.sweep sweeps/bbs_p.yaml --profile smoke --workers 2
    python -m rvosflow.sweep sweeps/table2.yaml --table-only          # print/write the table so far

A sweep file (``sweeps/*.yaml``) names its rows (grids) or parameters (searches) as Hydra override
strings for :func:`rvosflow.config.compose`, and *profiles* (run length, data, model, seeds).
One Optuna study per file + profile (``<name>-<profile>``) lives in an RDB storage (SQLite
``<project>/sweeps.db`` by default; any SQLAlchemy URL, e.g. ``postgresql://...``, so that the same
command on many machines shares one study). Each trial is one :func:`rvosflow.train.run`, logged as
an MLflow child run of the study's parent run, which holds the results table and plot.

Guarantees:

* **no duplicates** -- grid trials are assigned by Optuna's GridSampler (the first N trials take
  grid ids 0..N-1 by trial number); any other trial whose (row, seed) already has a COMPLETE
  trial, or a RUNNING trial with a lower number, is skipped (state PRUNED, user attr
  ``duplicate_of``) before it trains;
* **resume** -- re-running the same command loads the study (``load_if_exists``): completed trials
  are kept; trials whose worker died stop sending heartbeats and, after ``grace_period`` seconds,
  are marked FAIL and re-queued (RetryHeartbeatStaleTrialCallback, ``max_retry`` times); a worker
  with nothing left to start waits for running trials so it can pick such retries up;
* **failures** -- a trial that raises (a NaN loss raises FloatingPointError in training_step) is
  FAIL in Optuna and FAILED in MLflow and the study goes on (``--retry-failed`` re-queues them).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import json
import logging
import math
import os
import sys
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml
from omegaconf import MISSING

from rvosflow.paths import PROJECT_ROOT

log = logging.getLogger("rvosflow.sweep")

PARENT_TAG = "rvosflow.sweep"        # on the parent run: the study's uid
STUDY_TAG = "rvosflow.study"         # on parent and child runs: the study name
UID_TAG = "rvosflow.sweep_uid"       # on child runs: the study's uid
KINDS = ("grid", "search")


def default_storage() -> str:
    return f"sqlite:///{PROJECT_ROOT / 'sweeps.db'}"


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# --------------------------------------------------------------------------------------- spec

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

    @property
    def size(self) -> int:
        return len(self.grid) if self.kind == "grid" else int(self.n_trials or 0)

    def row(self, row_id: str) -> Row:
        return next(r for r in self.rows if r.id == row_id)


class SpecError(ValueError):
    pass


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
        raise SpecError(f"{path}: no profile {profile!r}; allowed: {', '.join(profiles)}")
    prof = profiles[profile] or ProfileFile()
    spec = Spec(
        path=path, kind=raw.kind, name=raw.name or path.stem, title=raw.title or path.stem,
        profile=profile, seeds=list(prof.seeds), overrides=list(prof.overrides), metric=raw.metric,
        monitor=raw.monitor, direction=raw.direction, heartbeat_interval=raw.heartbeat_interval,
        grace_period=raw.grace_period, max_retry=raw.max_retry,
    )
    if raw.kind == "grid":
        ids = set()
        for r in raw.rows:
            row = Row(id=str(r.id), label=r.label or str(r.id), overrides=list(r.overrides), paper=dict(r.paper))
            if row.id in ids:
                raise SpecError(f"{path}: rows: duplicate row id {row.id!r}")
            ids.add(row.id)
            spec.rows.append(row)
        if not spec.rows:
            raise SpecError(f"{path}: rows: a grid needs rows, found none")
    else:
        spec.base = list(raw.base)
        spec.params = {k: {f: v for f, v in dataclasses.asdict(d).items() if v is not None}
                       for k, d in raw.params.items()}
        if not spec.params:
            raise SpecError(f"{path}: params: a search needs params, found none")
        spec.n_trials = int(prof.n_trials if prof.n_trials is not None else (raw.n_trials or 10))
        spec.sampler = dict(raw.sampler or {"type": "tpe"})
        spec.pruner = dict(raw.pruner or {"type": "median"})
    return spec


def settings_fingerprint(spec: Spec, extra: list[str]) -> str:
    """What must not change under a study's feet (seeds and n_trials may: they extend it)."""
    what = {"kind": spec.kind, "profile": spec.overrides, "extra": extra,
            "rows": {r.id: r.overrides for r in spec.rows}, "base": spec.base, "params": spec.params}
    return hashlib.sha1(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------ Optuna objects

def retrying(fn, *args, tries: int = 6, **kw):
    """``fn(*args, **kw)``, retried on errors: several workers creating a fresh SQLite database at
    once race on its schema (Optuna's alembic table, MLflow's tables)."""
    for i in range(tries):
        try:
            return fn(*args, **kw)
        except Exception as exc:  # noqa: BLE001
            if i == tries - 1:
                raise
            log.info("retrying %s after %s", getattr(fn, "__name__", fn), exc)
            time.sleep(0.5 + i)


def make_storage(url: str, spec: Spec):
    return retrying(_make_storage, url, spec)


def _make_storage(url: str, spec: Spec):
    import optuna

    retry_cls = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) or optuna.storages.RetryFailedTrialCallback
    callback = retry_cls(max_retry=spec.max_retry)
    engine_kwargs = {"connect_args": {"timeout": 300}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    import inspect

    key = ("heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in
           inspect.signature(optuna.storages.RDBStorage.__init__).parameters else "failed_trial_callback")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # heartbeat_interval is marked experimental
        return optuna.storages.RDBStorage(
            url, engine_kwargs=engine_kwargs, heartbeat_interval=spec.heartbeat_interval,
            grace_period=spec.grace_period, **{key: callback})


def make_sampler(spec: Spec):
    import optuna

    if spec.kind == "grid":
        return optuna.samplers.GridSampler({"row": [r.id for r in spec.rows], "seed": list(spec.seeds)}, seed=0)
    s = dict(spec.sampler)
    kind = s.pop("type", "tpe")
    table = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler}
    if kind not in table:
        raise SpecError(f"{spec.path}: sampler.type: unknown value {kind!r}; allowed: {', '.join(table)}")
    if kind == "tpe":
        s.setdefault("constant_liar", True)  # several workers: don't all try the same point
    return _construct(spec.path, "sampler", table[kind], s)


def _construct(path: Path, section: str, cls, kwargs: dict):
    """``cls(**kwargs)``, a misspelt argument named with the allowed ones (the sweep file's schema
    leaves sampler/pruner arguments to the Optuna class they go to)."""
    import inspect

    allowed = [p for p in inspect.signature(cls).parameters if p not in ("self", "args", "kwargs")]
    for key in kwargs:
        if key not in allowed:
            raise SpecError(f"{path}: {section}.{key}: unknown key for {cls.__name__}; "
                            f"allowed: type, {', '.join(allowed)}")
    return cls(**kwargs)


def make_pruner(spec: Spec):
    import optuna

    if spec.kind == "grid":
        return optuna.pruners.NopPruner()
    p = dict(spec.pruner)
    kind = p.pop("type", "median")
    table = {"median": optuna.pruners.MedianPruner, "percentile": optuna.pruners.PercentilePruner,
             "threshold": optuna.pruners.ThresholdPruner, "hyperband": optuna.pruners.HyperbandPruner, "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
             "none": optuna.pruners.NopPruner}
    if kind not in table:
        raise SpecError(f"{spec.path}: pruner.type: unknown value {kind!r}; allowed: {', '.join(table)}")
    return _construct(spec.path, "pruner", table[kind], p)


def suggest(trial, key: str, dist: dict):
    kind = dist.get("type", "float")
    if kind == "float":
        return trial.suggest_float(key, float(dist["low"]), float(dist["high"]), log=bool(dist.get("log", False)),
                                   step=dist.get("step"))
    if kind == "int":
        return trial.suggest_int(key, int(dist["low"]), int(dist["high"]), log=bool(dist.get("log", False)),
                                 step=int(dist.get("step", 1)))
    if kind == "categorical":
        return trial.suggest_categorical(key, list(dist["choices"]))
    raise SpecError(f"params.{key}.type: unknown value {kind!r}; allowed: float, int, categorical")


def pruning_callback(trial, monitor: str):
    """optuna_integration's Lightning pruning callback, reporting at every *in-training*
    validation by global step (the final full-split validation after fit is not a report)."""
    import optuna
    from lightning.pytorch.trainer.states import TrainerFn
    from optuna_integration import PyTorchLightningPruningCallback

    class StepPruning(PyTorchLightningPruningCallback):
        def on_validation_end(self, trainer, pl_module) -> None:
            if trainer.state.fn != TrainerFn.FITTING:
                return
            if self.is_ddp_backend:  # the library's epoch-based path handles DDP
                return super().on_validation_end(trainer, pl_module)
            if trainer.sanity_checking:
                return
            score = trainer.callback_metrics.get(self.monitor)
            if score is None:
                log.warning("pruning: %s is not among the logged metrics", self.monitor)
                return
            step = int(trainer.global_step)
            self._trial.report(float(score), step=step)
            if self._trial.should_prune():
                raise optuna.TrialPruned(f"pruned at step {step} ({self.monitor}={float(score):.4f})")

    return StepPruning(trial, monitor)


# ------------------------------------------------------------------------------------- MLflow

class Tracking:
    """The MLflow side of a study: the parent run and the bookkeeping of child runs."""

    def __init__(self, uri: str, experiment_name: str):
        import mlflow

        self.uri = uri
        self.experiment_name = experiment_name
        self.client = mlflow.MlflowClient(uri)

    def experiment_id(self) -> str:
        from rvosflow.train import artifact_location

        location = artifact_location(self.uri, self.experiment_name)  # this project's folder
        exp = self.client.get_experiment_by_name(self.experiment_name)
        if exp is not None:
            return exp.experiment_id
        try:
            return self.client.create_experiment(self.experiment_name, artifact_location=location)
        except Exception:  # created meanwhile by another worker
            return self.client.get_experiment_by_name(self.experiment_name).experiment_id

    def _search(self, filter_string: str, **kw):
        return self.client.search_runs([self.experiment_id()], filter_string=filter_string, max_results=5000, **kw)

    def parent_run(self, study_name: str, uid: str, params: dict) -> str:
        """The study's parent run, found by its tag (created once; several workers converge on
        the earliest one)."""
        flt = f"tags.`{PARENT_TAG}` = '{uid}'"
        runs = self._search(flt)
        mine = None
        if not runs:
            mine = self.client.create_run(self.experiment_id(), run_name=study_name,
                                          tags={PARENT_TAG: uid, STUDY_TAG: study_name}).info.run_id
            for k, v in params.items():
                self.client.log_param(mine, k, str(v)[:6000])
            runs = self._search(flt)
        chosen = min(runs, key=lambda r: (r.info.start_time, r.info.run_id)).info.run_id
        if mine and mine != chosen:
            self.client.delete_run(mine)
        if self.client.get_run(chosen).info.status != "RUNNING":
            self.client.update_run(chosen, status="RUNNING")
        return chosen

    def child_runs(self, parent_id: str, trial_number: int | None = None, status: str | None = None):
        flt = f"tags.`mlflow.parentRunId` = '{parent_id}'"
        if trial_number is not None:
            flt += f" and tags.`optuna.trial` = '{trial_number}'"
        if status:
            flt += f" and attributes.status = '{status}'"
        return self._search(flt)

    def close_trial(self, parent_id: str, trial_number: int, status: str, tags: dict, note: str = "",
                    params: dict | None = None, run_name: str | None = None) -> str:
        """Terminate the trial's child run with ``status``; create one when the trial failed before
        its run existed, so that every trial has a child run."""
        runs = self.child_runs(parent_id, trial_number)
        if runs:
            run_id = runs[0].info.run_id
        else:
            run_id = self.client.create_run(self.experiment_id(), run_name=run_name, tags=tags).info.run_id
            for k, v in (params or {}).items():
                self.client.log_param(run_id, k, str(v)[:6000])
        if note:
            self.client.set_tag(run_id, "rvosflow.error", note[:4900])
        self.client.set_terminated(run_id, status)
        return run_id

    def reconcile(self, parent_id: str, study) -> None:
        """Child runs left RUNNING by a dead worker: KILLED once Optuna has failed their trial."""
        from optuna.trial import TrialState

        states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
        for r in self.child_runs(parent_id, status="RUNNING"):
            try:
                number = int(r.data.tags.get("optuna.trial", "-1"))
            except ValueError:
                continue
            if states.get(number, TrialState.RUNNING) != TrialState.RUNNING:
                self.client.set_tag(r.info.run_id, "rvosflow.error", "worker died (heartbeat stale); trial re-queued")
                self.client.set_terminated(r.info.run_id, "KILLED")


# ----------------------------------------------------------------------------------- records

def trial_records(study, spec: Spec) -> list[dict]:
    """Optuna trials as plain records for :mod:`rvosflow.tables`."""
    out = []
    for t in study.get_trials(deepcopy=False):
        if spec.kind == "grid" and "row" not in t.params:
            continue
        rec = {"number": t.number, "state": t.state.name, "row": t.params.get("row", "search"),
               "seed": t.params.get("seed", t.user_attrs.get("seed")), "params": dict(t.params),
               "JF": t.value if t.state.name == "COMPLETE" else None,
               "J": t.user_attrs.get("J"), "F": t.user_attrs.get("F"),
               **{f"JF/{kind}": v["JF"] for kind, v in (t.user_attrs.get("per_kind") or {}).items()},
               "duplicate_of": t.user_attrs.get("duplicate_of")}
        out.append(rec)
    return out


def grid_point(t) -> tuple[str, int] | None:
    """(row, seed) of a grid trial: from its params, or from GridSampler's grid_id before it
    has suggested them."""
    if "row" in t.params and "seed" in t.params:
        return t.params["row"], t.params["seed"]
    space, gid = t.system_attrs.get("search_space"), t.system_attrs.get("grid_id")
    if space is None or gid is None:
        return None
    names = sorted(space)
    values = list(itertools.product(*(space[n] for n in names)))[gid]
    d = dict(zip(names, values))
    return d.get("row"), d.get("seed")


def find_duplicate(study, me, point, wait_s: float = 10.0) -> int | None:
    """Another trial that owns ``point``: a COMPLETE one, or a RUNNING one numbered below ``me``.
    Lower-numbered RUNNING trials that have not been given their point yet are waited for."""
    from optuna.trial import TrialState

    deadline = time.monotonic() + wait_s
    while True:
        unknown = False
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING)):
            if t.number == me:
                continue
            p = grid_point(t)
            if p is None:
                unknown = unknown or (t.state == TrialState.RUNNING and t.number < me)
                continue
            if tuple(p) == tuple(point) and (t.state == TrialState.COMPLETE or t.number < me):
                return t.number
        if not unknown or time.monotonic() > deadline:
            return None
        time.sleep(0.2)


# ------------------------------------------------------------------------------------ worker

@dataclass
class Context:
    spec: Spec
    storage_url: str
    tracking_uri: str
    experiment_name: str
    extra: list[str]
    runs_root: Path
    study_name: str
    uid: str
    parent_id: str
    worker: str = "w0"


def _say(ctx: Context, msg: str) -> None:
    print(f"[{ctx.study_name} {ctx.worker} {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def counts(study) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def grid_progress(study, spec: Spec) -> tuple[int, int]:
    done = {grid_point(t) for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"}
    return len(done & set(spec.grid)), len(spec.grid)


def make_objective(ctx: Context, study):
    from rvosflow import config as run_config
    from rvosflow.train import run

    spec = ctx.spec

    def objective(trial):
        import optuna

        t0 = time.monotonic()
        if spec.kind == "grid":
            row_id = trial.suggest_categorical("row", [r.id for r in spec.rows])
            seed = trial.suggest_categorical("seed", list(spec.seeds))
            dup = find_duplicate(study, trial.number, (row_id, seed))
            if dup is not None:
                trial.set_user_attr("duplicate_of", dup)
                _say(ctx, f"trial #{trial.number}: row {row_id} seed {seed} is taken by trial #{dup}; skipped")
                raise optuna.TrialPruned(f"duplicate of trial {dup}")
            row = spec.row(row_id)
            overrides = [*spec.overrides, *row.overrides]
            what = f"row {row_id} ({row.label}) seed {seed}"
            run_name = f"{row_id}-s{seed}"
            callbacks = []
        else:
            seed = spec.seeds[0]
            values = {k: suggest(trial, k, d) for k, d in spec.params.items()}
            trial.set_user_attr("seed", seed)
            row_id = "search"
            overrides = [*spec.overrides, *spec.base, *(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in values.items())]
            what = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
            run_name = f"trial-{trial.number}"
            callbacks = [pruning_callback(trial, spec.monitor)]
        overrides += [*ctx.extra, f"seed={seed}", f"logger.run_name={run_name}",
                      f"logger.tracking_uri={ctx.tracking_uri}", f"logger.experiment_name={ctx.experiment_name}"]
        tags = {"mlflow.parentRunId": ctx.parent_id, "row": row_id, "seed": str(seed),
                "optuna.trial": str(trial.number), "optuna.study": ctx.study_name, STUDY_TAG: ctx.study_name,
                UID_TAG: ctx.uid}
        done, total = (grid_progress(study, spec) if spec.kind == "grid" else (counts(study).get("COMPLETE", 0), spec.size))
        _say(ctx, f"start trial #{trial.number}: {what}  ({done}/{total} done)")
        cfg = None
        try:
            cfg = run_config.compose(overrides)
            results = run(cfg, ctx.runs_root / f"trial-{trial.number:04d}", callbacks=callbacks, tags=tags)
            for cb in callbacks:  # DDP: the library's callback records pruning instead of raising
                if hasattr(cb, "check_pruned"):
                    cb.check_pruned()
        except optuna.TrialPruned as exc:
            if "duplicate" not in str(exc):
                ctx_tracking(ctx).close_trial(ctx.parent_id, trial.number, "KILLED", tags, note=f"pruned: {exc}",
                                              run_name=run_name)
                _say(ctx, f"pruned trial #{trial.number}: {what}: {exc}  ({time.monotonic() - t0:.0f} s)")
            raise
        except BaseException as exc:
            interrupted = isinstance(exc, (KeyboardInterrupt, SystemExit))  # Lightning turns Ctrl-C into SystemExit
            status = "KILLED" if interrupted else "FAILED"
            note = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            params = run_config.flat_params(cfg) if cfg is not None else {"overrides": " ".join(overrides)}
            try:
                ctx_tracking(ctx).close_trial(ctx.parent_id, trial.number, status, tags, note=note, params=params,
                                              run_name=run_name)
            except Exception:  # never hide the trial's own error
                log.exception("could not mark the MLflow run of trial %d %s", trial.number, status)
            trial.set_user_attr("error", note[:1000])
            if interrupted:  # not the trial's fault: queue it again for the re-run
                if isinstance(exc, SystemExit):  # Optuna only records Exception/KeyboardInterrupt
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
                requeue(study, study._storage.get_trial(trial._trial_id), interrupted_trial=trial.number)
                _say(ctx, f"interrupted trial #{trial.number}: {what}; re-queued for the next run")
            else:
                _say(ctx, f"FAILED trial #{trial.number}: {what}: {note}")
            raise
        for k in ("J", "F", "JF"):
            trial.set_user_attr(k, float(results[k]))
        trial.set_user_attr("per_kind", results.get("per_kind") or {})
        trial.set_user_attr("mlflow_run_id", results["mlflow_run_id"])
        trial.set_user_attr("seconds", round(time.monotonic() - t0, 1))
        done, total = (grid_progress(study, spec) if spec.kind == "grid" else (counts(study).get("COMPLETE", 0) + 1, spec.size))
        if spec.kind == "grid":
            done += 1  # this one, not COMPLETE in the storage until we return
        _say(ctx, f"done trial #{trial.number} [{min(done, total)}/{total}]: {what}  "
                  f"J&F {results['JF']:.1f}  J {results['J']:.1f}  F {results['F']:.1f}  ({time.monotonic() - t0:.0f} s)")
        return float(results[spec.metric])

    return objective


_TRACKING: dict[tuple, Tracking] = {}


def ctx_tracking(ctx: Context) -> Tracking:
    key = (ctx.tracking_uri, ctx.experiment_name)
    if key not in _TRACKING:
        _TRACKING[key] = Tracking(*key)
    return _TRACKING[key]


def open_study(ctx: Context):
    import optuna

    return optuna.load_study(study_name=ctx.study_name, storage=make_storage(ctx.storage_url, ctx.spec),
                             sampler=make_sampler(ctx.spec), pruner=make_pruner(ctx.spec))


def work(ctx: Context) -> None:
    """One worker: run trials until the study has nothing left to start, then wait for the
    running ones (they may die and come back as retries)."""
    import optuna
    from optuna.trial import TrialState

    spec = ctx.spec
    study = open_study(ctx)
    objective = make_objective(ctx, study)
    tracking = ctx_tracking(ctx)
    waiting_said = False
    while True:
        optuna.storages.fail_stale_trials(study)
        tracking.reconcile(ctx.parent_id, study)
        trials = study.get_trials(deepcopy=False)
        n_waiting = sum(t.state == TrialState.WAITING for t in trials)
        n_running = sum(t.state == TrialState.RUNNING for t in trials)
        if spec.kind == "grid":
            seen = {grid_point(t) for t in trials}
            todo = len([p for p in spec.grid if p not in seen])
        else:
            retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
            finished = sum(t.state.is_finished() and t.number not in retried and "duplicate_of" not in t.user_attrs
                           for t in trials)
            todo = max(0, spec.size - finished - n_running - n_waiting)
        if n_waiting or todo:
            waiting_said = False
            study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=True)
            continue
        if n_running:
            if not waiting_said:
                _say(ctx, f"nothing left to start; waiting for {n_running} running trial(s) "
                          f"(a dead worker's trial is retried {spec.grace_period} s after its last heartbeat)")
                waiting_said = True
            time.sleep(max(1.0, min(spec.heartbeat_interval, 5)))
            continue
        return


def _worker_main(ctx: Context, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    _quiet()
    work(ctx)


def _quiet() -> None:
    import optuna

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*ExperimentalWarning.*")
    try:
        from optuna.exceptions import ExperimentalWarning

        warnings.filterwarnings("ignore", category=ExperimentalWarning)
    except ImportError:
        pass


# ------------------------------------------------------------------------------------ set-up

def compose_rows(spec: Spec, extra: list[str]) -> None:
    """Compose and validate every row's (or the search base's) config before any work; record
    the settings the table shows."""
    from rvosflow import config as run_config

    def settings(cfg):
        return {"bbs_p": float(cfg.bbs.p), "spa": bool(cfg.spa.enabled), "dvi": bool(cfg.dvi.enabled),
                "wi": bool(cfg.wi.enabled), "paradigm": str(cfg.paradigm.name)}

    if spec.kind == "grid":
        for row in spec.rows:
            try:
                cfg = run_config.compose([*spec.overrides, *row.overrides, *extra])
                run_config.validate(cfg)
            except Exception as exc:
                raise SpecError(f"{spec.path}: row {row.id} ({' '.join(row.overrides)}): {exc}") from exc
            row.settings = settings(cfg)
    else:  # the base with every parameter at each end of its range (or each choice)
        for key, dist in spec.params.items():
            for value in dist["choices"] if dist.get("type") == "categorical" else (dist["low"], dist["high"]):
                value = int(value) if dist.get("type") == "int" else value
                point = f"{key}={value!r}" if isinstance(value, str) else f"{key}={value}"
                try:
                    run_config.validate(run_config.compose([*spec.overrides, *spec.base, point, *extra]))
                except Exception as exc:
                    raise SpecError(f"{spec.path}: params.{key} ({' '.join([*spec.base, point])}): {exc}") from exc
        make_sampler(spec), make_pruner(spec)  # their arguments, checked before any trial


def base_logger_settings(spec: Spec, extra: list[str]) -> tuple[str, str]:
    from rvosflow import config as run_config
    from rvosflow.train import default_tracking_uri

    cfg = run_config.compose([*spec.overrides, *extra])
    return cfg.logger.tracking_uri or default_tracking_uri(), str(cfg.logger.experiment_name)


def setup(spec: Spec, storage_url: str, extra: list[str], study_name: str | None, runs_root: Path | None,
          reset: bool = False, tracking_uri: str | None = None) -> Context:
    import optuna

    study_name = study_name or f"{spec.name}-{spec.profile}"
    if tracking_uri:
        extra = [*extra, f"logger.tracking_uri={tracking_uri}"]
    compose_rows(spec, extra)
    uri, experiment = base_logger_settings(spec, extra)
    storage = make_storage(storage_url, spec)
    if reset:
        try:
            optuna.delete_study(study_name=study_name, storage=storage)
            print(f"deleted study {study_name!r}", flush=True)
        except KeyError:
            pass
    study = retrying(optuna.create_study, study_name=study_name, storage=storage, sampler=make_sampler(spec),
                     pruner=make_pruner(spec), direction=spec.direction, load_if_exists=True)
    fp = settings_fingerprint(spec, extra)
    attrs = study.user_attrs
    if "uid" not in attrs:
        study.set_user_attr("uid", uuid.uuid4().hex)
        study.set_user_attr("settings", fp)
        study.set_user_attr("sweep_file", str(spec.path))
        time.sleep(0.5)  # several workers starting together converge on the last write
        attrs = study.user_attrs
    elif attrs.get("settings") != fp:
        raise SpecError(
            f"study {study_name!r} in {storage_url} was run with other settings than {spec.path} "
            f"profile {spec.profile!r} now gives (rows, profile overrides or --set changed). "
            f"Use --study NAME for a new study, or --reset to delete this one.")
    uid = attrs["uid"]
    tracking = retrying(Tracking, uri, experiment)
    retrying(tracking.experiment_id)
    params = {"sweep.file": spec.path, "sweep.profile": spec.profile, "sweep.kind": spec.kind,
              "sweep.seeds": spec.seeds, "sweep.overrides": " ".join(spec.overrides), "sweep.extra": " ".join(extra),
              "optuna.study": study_name, "optuna.storage": _redact(storage_url)}
    if spec.kind == "grid":
        params.update({f"row.{r.id}": " ".join(r.overrides) for r in spec.rows})
    else:
        params.update({"sweep.n_trials": spec.n_trials, "sweep.base": " ".join(spec.base)})
    parent_id = tracking.parent_run(study_name, uid, params)
    if study.user_attrs.get("mlflow_parent_run_id") != parent_id:
        study.set_user_attr("mlflow_parent_run_id", parent_id)
    # One folder per study (its uid): a --reset study never writes into an earlier one's trials.
    runs_root = Path(runs_root or PROJECT_ROOT / "outputs" / "sweeps" / study_name) / f"study-{uid[:8]}"
    return Context(spec=spec, storage_url=storage_url, tracking_uri=uri, experiment_name=experiment, extra=extra,
                   runs_root=Path(runs_root), study_name=study_name, uid=uid, parent_id=parent_id)


def _redact(url: str) -> str:
    if "@" in url and "://" in url:  # user:password@host
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


# ------------------------------------------------------------------------------------ report

def report(ctx: Context, out_dir: Path, finished: bool) -> dict[str, Path]:
    """Build the table from the study, write results/<name>[-<profile>].{md,csv,tex,png}, log
    them to the parent run, print the Markdown."""
    import matplotlib.pyplot as plt

    from rvosflow import tables

    spec = ctx.spec
    study = open_study(ctx)
    records = trial_records(study, spec)
    stem = spec.name if spec.profile == "default" else f"{spec.name}-{spec.profile}"
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {ext: out_dir / f"{stem}.{ext}" for ext in ("md", "csv", "tex", "png")}
    if spec.kind == "grid":
        rows = [{"id": r.id, "label": r.label, "paper": r.paper, "settings": r.settings} for r in spec.rows]
        summary = tables.summarize(records, rows)
        table = tables.display_table(summary)
        csv_text = tables.to_csv(summary)
        fig = tables.plot_rows(summary, title=f"{spec.title} [{spec.profile}]")
    else:
        table = tables.search_table(records, list(spec.params))
        csv_text = table.to_csv(index=False)
        fig = tables.plot_search(table, list(spec.params), title=f"{spec.title} [{spec.profile}]")
    md = tables.to_markdown(table)
    if spec.kind == "grid":
        md += "\n" + tables.paper_agreement(summary) + "\n"
    paths["md"].write_text(md)
    paths["csv"].write_text(csv_text)
    paths["tex"].write_text(tables.to_latex(table, caption=f"{spec.title} ({spec.profile} profile)",
                                            label=f"tab:{stem}"))
    fig.savefig(paths["png"], dpi=120)
    plt.close(fig)
    client = ctx_tracking(ctx).client
    for p in paths.values():
        client.log_artifact(ctx.parent_id, str(p), "results")
    c = counts(study)
    if spec.kind == "grid":
        done, total = grid_progress(study, spec)
        for _, r in summary.iterrows():
            if not math.isnan(r["JF_mean"]):
                client.log_metric(ctx.parent_id, f"JF/{r['id']}", float(r["JF_mean"]))
    else:
        done, total = c.get("COMPLETE", 0), spec.size
        if done:
            client.log_metric(ctx.parent_id, "best_JF", float(study.best_value))
    client.set_tag(ctx.parent_id, "rvosflow.progress", f"{done}/{total}")
    if finished:
        client.set_terminated(ctx.parent_id, "FINISHED")
    print(f"\n{spec.title} -- profile {spec.profile}, study {ctx.study_name}: {done}/{total} complete, "
          + ", ".join(f"{k.lower()} {v}" for k, v in sorted(c.items())) + "\n", flush=True)
    print(md, flush=True)
    print("written: " + ", ".join(str(p) for p in paths.values()), flush=True)
    return paths


def requeue(study, frozen, **user_attrs) -> None:
    """Queue another attempt of a trial (WAITING, same params; popped atomically by one worker).
    Its system attrs (GridSampler's grid_id and search_space) come along, as in Optuna's
    RetryHeartbeatStaleTrialCallback."""
    import optuna

    system_attrs = {k: v for k, v in frozen.system_attrs.items() if k != "fixed_params"}
    study.add_trial(optuna.trial.create_trial(
        state=optuna.trial.TrialState.WAITING, params=dict(frozen.params), distributions=dict(frozen.distributions),
        user_attrs=user_attrs, system_attrs=system_attrs))


def retry_failed(ctx: Context) -> int:
    """Queue a new attempt for every grid point whose trials all FAILed (search: no-op)."""
    import optuna
    from optuna.trial import TrialState

    if ctx.spec.kind != "grid":
        return 0
    study = open_study(ctx)
    by_point: dict = {}
    for t in study.get_trials(deepcopy=False):
        if "duplicate_of" not in t.user_attrs:
            by_point.setdefault(grid_point(t), []).append(t.state)
    n = 0
    for point, states in by_point.items():
        if point is not None and states and all(s == TrialState.FAIL for s in states):
            last = max((t for t in study.get_trials(deepcopy=False) if grid_point(t) == point), key=lambda t: t.number)
            requeue(study, last, retry_of=last.number)
            n += 1
    return n


# --------------------------------------------------------------------------------------- CLI

def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m rvosflow.sweep", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sweep", help="a sweep file, e.g. sweeps/table2.yaml")
    ap.add_argument("--profile", default="default", help="profile in the sweep file (default, smoke, gpu, ...)")
    ap.add_argument("--workers", type=int, default=1,
                    help="worker processes on this machine (each gets cores/workers torch threads)")
    ap.add_argument("--storage", default=None, help=f"Optuna RDB URL (default sqlite:///<project>/sweeps.db)")
    ap.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: the run config's)")
    ap.add_argument("--study", default=None, help="study name (default <name>-<profile>)")
    ap.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                    help="an override added to every trial (repeatable), e.g. --set data.num_workers=2")
    ap.add_argument("--out", default=str(PROJECT_ROOT / "results"), help="where the tables go")
    ap.add_argument("--runs-dir", default=None, help="trial run folders go to <runs-dir>/study-<uid>/ (default outputs/sweeps/<study>)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads per worker (default cores/workers)")
    ap.add_argument("--heartbeat-interval", type=int, default=None, help="seconds between trial heartbeats")
    ap.add_argument("--grace-period", type=int, default=None, help="seconds without heartbeat before a trial is retried")
    ap.add_argument("--retry-failed", action="store_true", help="queue another attempt for failed grid points")
    ap.add_argument("--reset", action="store_true", help="start the study afresh (the old Optuna study is deleted; its trial folders and MLflow runs are kept)")
    ap.add_argument("--table-only", action="store_true", help="run nothing: write and print the table so far")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    _quiet()
    try:
        return _main(args)
    except SpecError as err:  # a bad sweep file or setting: one line, before any trial (DESIGN §8)
        print(f"error: {err}", file=sys.stderr)
        return 2


def _main(args) -> int:
    spec = load_spec(args.sweep, args.profile)
    if args.heartbeat_interval:
        spec.heartbeat_interval = args.heartbeat_interval
    if args.grace_period:
        spec.grace_period = args.grace_period
    storage_url = args.storage or default_storage()
    t0 = time.monotonic()
    ctx = setup(spec, storage_url, list(args.extra), args.study, Path(args.runs_dir) if args.runs_dir else None,
                reset=args.reset, tracking_uri=args.tracking_uri)
    out_dir = Path(args.out)
    if args.table_only:
        report(ctx, out_dir, finished=False)
        return 0
    workers = max(1, args.workers)
    threads = args.threads or max(1, cpu_count() // workers)
    print(f"sweep {spec.path} profile {spec.profile}: {spec.kind}, {spec.size} trials "
          f"({len(spec.rows)} rows x {len(spec.seeds)} seeds)" if spec.kind == "grid" else
          f"sweep {spec.path} profile {spec.profile}: {spec.kind}, {spec.size} trials",
          f"| study {ctx.study_name} in {_redact(storage_url)} | MLflow {ctx.tracking_uri} parent run {ctx.parent_id} "
          f"| {workers} worker(s) x {threads} thread(s)", flush=True)
    if args.retry_failed:
        print(f"re-queued {retry_failed(ctx)} failed grid point(s)", flush=True)
    try:
        if workers == 1:
            import torch

            torch.set_num_threads(threads)
            work(ctx)
        else:
            import multiprocessing as mp

            mpctx = mp.get_context("spawn")
            procs = []
            for w in range(workers):
                wctx = Context(**{**ctx.__dict__, "worker": f"w{w}"})
                p = mpctx.Process(target=_worker_main, args=(wctx, threads), name=f"sweep-w{w}")
                p.start()
                procs.append(p)
            for p in procs:
                p.join()
            bad = [p.name for p in procs if p.exitcode != 0]
            if bad:
                print(f"worker(s) exited abnormally: {', '.join(bad)}; re-run the same command to finish", flush=True)
                report(ctx, out_dir, finished=False)
                return 1
    except (KeyboardInterrupt, SystemExit):
        print("interrupted; re-run the same command to resume", flush=True)
        report(ctx, out_dir, finished=False)
        return 130
    report(ctx, out_dir, finished=True)
    print(f"sweep time {time.monotonic() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
