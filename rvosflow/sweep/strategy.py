"""Grid vs search: what differs between a table (rows x seeds on Optuna's GridSampler) and a
search (parameters on TPE/random with pruning) lives in two small strategy objects, so the rest
of the sweep (study, worker, tracking, report) never asks which kind it runs."""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass, field

import optuna
from lightning.pytorch.trainer.states import TrainerFn
from optuna.trial import TrialState
from optuna_integration import PyTorchLightningPruningCallback

from rvosflow import tables
from rvosflow.config import compose, resolve
from rvosflow.errors import ConfigError, SpecError
from rvosflow.schema import axes
from rvosflow.sweep import reuse
from rvosflow.sweep.spec import Spec
from rvosflow.sweep.study import counts, frozen, pruner_from, requeue, sampler_from
from rvosflow.tracking import child_run_name

log = logging.getLogger("rvosflow.sweep")


class DuplicatePoint(Exception):
    """A grid trial whose (row, seed) another trial owns: skipped (PRUNED) before it trains.
    A class of its own, so it is never mistaken for a pruned trial by its message."""

    def __init__(self, owner: int):
        super().__init__(f"duplicate of trial {owner}")
        self.owner = owner


@dataclass
class TrialPlan:
    """What one trial runs: its overrides (before the worker's own), names and callbacks."""

    row: str
    seed: int
    overrides: list[str]
    what: str            # for the log line
    run_name: str        # the MLflow child run's name
    callbacks: list = field(default_factory=list)


def table_settings(run) -> dict:
    """A row's settings, every axis of its resolved config by key (``paradigm.name``, ``bbs.p``,
    ``solver.steps`` ...): what its table shows and its Optuna trial records."""
    return {a.key: tables.axis_value(run, a.key) for a in axes(run)}


def setting_params() -> list[str]:
    """The trial params a row's settings are recorded as (so that optuna-dashboard's slice plots
    can use them, not only "row" and "seed"): the paradigm and every table-column axis."""
    return [a.key for a in axes() if a.column or a.key == "paradigm.name"]


def _row_grid_sampler(space: dict, derived: dict[str, dict]):
    """Optuna's GridSampler over ``space`` that also answers the settings params of a row
    (``derived[row][param]``) once the trial has its row: they follow from the row, they are
    not grid dimensions."""
    class RowGridSampler(optuna.samplers.GridSampler):
        def sample_independent(self, study, trial, param_name, param_distribution):
            if param_name in setting_params() and trial.params.get("row") in derived:
                return derived[trial.params["row"]][param_name]
            return super().sample_independent(study, trial, param_name, param_distribution)

    return RowGridSampler(space, seed=0)


def _checked(spec: Spec, where: str, overrides: list[str]):
    """The run config of ``overrides`` composed and resolved, or a SpecError naming ``where``."""
    try:
        return resolve(compose(overrides))
    except ConfigError as exc:
        raise SpecError(f"{spec.path}: {where} ({' '.join(overrides)}): {exc}") from exc


class Grid:
    """A table: every (row, seed) once, assigned by Optuna's GridSampler."""

    kind = "grid"

    def __init__(self, spec: Spec):
        self.spec = spec

    @property
    def size(self) -> int:
        return len(self.spec.grid)

    def describe(self) -> str:
        return f"grid, {self.size} trials ({len(self.spec.rows)} rows x {len(self.spec.seeds)} seeds)"

    def compose(self, extra: list[str]) -> None:
        """Every row's config composed and validated before any trial; the table's settings and
        what each row trains (rows that differ only at inference share a model: ``sweep.reuse``) kept."""
        for row in self.spec.rows:
            cfg = _checked(self.spec, f"row {row.id}", [*self.spec.overrides, *row.overrides, *extra])
            row.settings = table_settings(cfg)
            row.training = reuse.row_training(cfg)
        check_figure(self.spec)

    def _settings_params(self) -> dict[str, dict]:
        """Each composed row's settings under their Optuna param names."""
        return {r.id: {k: r.settings[k] for k in setting_params() if k in r.settings} for r in self.spec.rows if r.settings}

    def sampler(self):
        return _row_grid_sampler({"row": [r.id for r in self.spec.rows], "seed": list(self.spec.seeds)},
                                 self._settings_params())

    def pruner(self):
        return optuna.pruners.NopPruner()

    def params(self) -> dict:
        return {f"row.{r.id}": " ".join(r.overrides) for r in self.spec.rows}

    def plan(self, trial, study) -> TrialPlan:
        row_id = trial.suggest_categorical("row", [r.id for r in self.spec.rows])
        seed = trial.suggest_categorical("seed", list(self.spec.seeds))
        owner = find_duplicate(study, trial.number, (row_id, seed))
        if owner is not None:
            trial.set_user_attr("duplicate_of", owner)
            raise DuplicatePoint(owner)
        by_row = self._settings_params()
        if row_id in by_row:  # every row's values as the choices: one distribution across trials
            for name in setting_params():
                trial.suggest_categorical(name, sorted({v[name] for v in by_row.values()}, key=str))
        row = self.spec.row(row_id)
        return TrialPlan(row_id, seed, [*self.spec.overrides, *row.overrides],
                         f"row {row_id} ({row.label}) seed {seed}", child_run_name(row_id, row.settings, seed))

    def todo(self, trials) -> int:
        seen = {grid_point(t) for t in trials}
        return len([p for p in self.spec.grid if p not in seen])

    def progress(self, study, running_done: int = 0) -> tuple[int, int]:
        done = {grid_point(t) for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"}
        return len(done & set(self.spec.grid)) + running_done, self.size

    def is_record(self, t) -> bool:
        return "row" in t.params

    def failed(self, study) -> list[str]:
        """The grid points whose every trial failed (what the table shows without a score)."""
        states: dict = {}
        for t in study.get_trials(deepcopy=False):
            if "duplicate_of" not in t.user_attrs and grid_point(t) is not None:
                states.setdefault(grid_point(t), []).append(t.state.name)
        return [f"row {r} seed {s}" for (r, s), st in states.items() if all(x == "FAIL" for x in st)]

    def retry_failed(self, study) -> int:
        """Queue a new attempt for every grid point whose trials all FAILed."""
        by_point: dict = {}
        for t in study.get_trials(deepcopy=False):
            if "duplicate_of" not in t.user_attrs:
                by_point.setdefault(grid_point(t), []).append(t)
        n = 0
        for point, trials in by_point.items():
            if point is not None and all(t.state == TrialState.FAIL for t in trials):
                last = max(trials, key=lambda t: t.number)
                requeue(study, last, retry_of=last.number)
                n += 1
        return n

    def table(self, records: list[dict], title: str) -> dict:
        """The table's pieces: ``table`` (display), ``csv``, ``md_footer``, ``figure`` and the
        parent run's summary ``metrics`` (the rows themselves go to MLflow as the table)."""
        models = reuse.model_labels(self.spec)
        rows = [{"id": r.id, "label": r.label, "paper": r.paper, "settings": r.settings, "reference": r.reference,
                 **({"model": models[r.id]} if r.id in models else {})} for r in self.spec.rows]
        summary = tables.summarize(records, rows)
        fig = self.spec.figure
        figure = (tables.plot_against(summary, fig["x"], fig.get("series"), title=title) if fig
                  else tables.plot_rows(summary, title=title))
        footers = [tables.paper_agreement(summary), tables.delta_footer(summary), tables.SHARED_MODELS_NOTE if models else ""]
        return {"table": tables.display_table(summary), "csv": tables.to_csv(summary),
                "md_footer": "".join(f"\n{line}\n" for line in footers if line),
                "figure": figure, "metrics": tables.agreement(summary)}


class Search:
    """A search: ``n_trials`` points drawn by the sampler, pruned on ``monitor`` during training."""

    kind = "search"

    def __init__(self, spec: Spec):
        self.spec = spec

    @property
    def size(self) -> int:
        return int(self.spec.n_trials or 0)

    def describe(self) -> str:
        return f"search, {self.size} trials"

    def compose(self, extra: list[str]) -> None:
        """The base with every parameter at each end of its range (or each choice), composed and
        validated before any trial; the sampler's and pruner's arguments too."""
        for key, dist in self.spec.params.items():
            for value in dist["choices"] if dist.get("type") == "categorical" else (dist["low"], dist["high"]):
                value = int(value) if dist.get("type") == "int" else value
                _checked(self.spec, f"params.{key}", [*self.spec.overrides, *self.spec.base, _override(key, value), *extra])
        self.spec.base_settings = table_settings(_checked(self.spec, "base", [*self.spec.overrides, *self.spec.base, *extra]))
        self.sampler(), self.pruner()

    def sampler(self):
        return sampler_from(self.spec)

    def pruner(self):
        return pruner_from(self.spec)

    def params(self) -> dict:
        return {"sweep.n_trials": self.spec.n_trials, "sweep.base": " ".join(self.spec.base)}

    def plan(self, trial, study) -> TrialPlan:
        seed = self.spec.seeds[0]
        values = {k: suggest(trial, k, d) for k, d in self.spec.params.items()}
        trial.set_user_attr("seed", seed)
        # The settings the search does not vary, as one-choice params (the dashboard shows them beside the rest).
        for name in setting_params():
            if name in self.spec.base_settings and name not in trial.params and name not in self.spec.params:
                trial.suggest_categorical(name, [self.spec.base_settings[name]])
        what = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
        return TrialPlan("search", seed, [*self.spec.overrides, *self.spec.base, *(_override(k, v) for k, v in values.items())],
                         what, f"trial-{trial.number}", [pruning_callback(trial, self.spec.monitor)])

    def todo(self, trials) -> int:
        retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
        finished = sum(t.state.is_finished() and t.number not in retried and "duplicate_of" not in t.user_attrs
                       for t in trials)
        busy = sum(t.state.name in ("RUNNING", "WAITING") for t in trials)
        return max(0, self.size - finished - busy)

    def progress(self, study, running_done: int = 0) -> tuple[int, int]:
        return counts(study).get("COMPLETE", 0) + running_done, self.size

    def is_record(self, t) -> bool:
        return True

    def failed(self, study) -> list[str]:
        retried = {n for t in study.get_trials(deepcopy=False) for n in t.system_attrs.get("retry_history", [])}
        return [f"trial {t.number}" for t in study.get_trials(deepcopy=False)
                if t.state.name == "FAIL" and t.number not in retried]

    def retry_failed(self, study) -> int:
        return 0  # a search draws new points instead

    def table(self, records: list[dict], title: str) -> dict:
        table = tables.search_table(records, list(self.spec.params))
        done = [r["JF"] for r in records if r["JF"] is not None]
        best = (max if self.spec.direction == "maximize" else min)(done) if done else None
        return {"table": table, "csv": table.to_csv(index=False), "md_footer": "",
                "figure": tables.plot_search(table, list(self.spec.params), title=title),
                "metrics": {"JF_best_trial": float(best)} if best is not None else {}}


STRATEGIES = {"grid": Grid, "search": Search}


def check_figure(spec: Spec) -> None:
    """A grid's ``figure:`` names axes its rows vary (their table columns), or it is a SpecError."""
    varying = {k for r in spec.rows for k in r.settings if len({repr(o.settings.get(k)) for o in spec.rows}) > 1}
    for part in ("x", "series"):
        key = spec.figure.get(part)
        if key is not None and key not in varying:
            raise SpecError(f"{spec.path}: figure.{part}: expected an axis the rows vary "
                            f"({', '.join(sorted(varying)) or 'none do'}), got {key!r}")


def strategy_for(spec: Spec):
    return STRATEGIES[spec.kind](spec)


def compose_rows(spec: Spec, extra: list[str]) -> None:
    """Compose and validate every row's (or every search point's) config before any work."""
    strategy_for(spec).compose(extra)


def _override(key: str, value) -> str:
    return f"{key}={value!r}" if isinstance(value, str) else f"{key}={value}"


def suggest(trial, key: str, dist: dict):
    kind = dist.get("type", "float")
    if kind == "float":
        return trial.suggest_float(key, float(dist["low"]), float(dist["high"]), log=bool(dist.get("log", False)),
                                   step=dist.get("step"))
    if kind == "int":
        return trial.suggest_int(key, int(dist["low"]), int(dist["high"]), log=bool(dist.get("log", False)),
                                 step=int(dist.get("step", 1)))
    return trial.suggest_categorical(key, list(dist["choices"]))  # the schema allows no other type


def pruning_callback(trial, monitor: str):
    """optuna_integration's Lightning pruning callback, reporting at every *in-training*
    validation by global step (the final full-split validation after fit is not a report)."""
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


__all__ = ["Grid", "Search", "STRATEGIES", "strategy_for", "compose_rows", "DuplicatePoint", "TrialPlan",
           "grid_point", "frozen"]
