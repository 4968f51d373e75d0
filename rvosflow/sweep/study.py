"""The Optuna side of a sweep: the RDB storage (heartbeats, retries of dead workers' trials),
samplers and pruners built from the sweep file, and queueing another attempt of a trial. Only
public Optuna API."""

from __future__ import annotations

import inspect
import logging
import time
import warnings
from pathlib import Path

import optuna
from optuna_dashboard import save_note
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from rvosflow.errors import SpecError
from rvosflow.paths import PROJECT_ROOT

log = logging.getLogger("rvosflow.sweep")


def default_storage() -> str:
    return f"sqlite:///{PROJECT_ROOT / 'sweeps.db'}"


def check_storage(url: str) -> None:
    """An SQLAlchemy database URL whose driver is installed (``sqlite:///...``, ``postgresql://...``),
    checked before any work (Optuna's own error comes 20 s later, after the models are loaded)."""
    try:
        make_url(url).get_dialect()
    except (ArgumentError, NoSuchModuleError, ValueError) as exc:
        raise SpecError(f"--storage: expected a database URL Optuna can open (sqlite:///<path>, "
                        f"postgresql://user@host/db), got {redact(url)!r} ({type(exc).__name__})") from None


def redact(url: str) -> str:
    """A storage URL without its password, for printing and logging."""
    if "@" in url and "://" in url:  # user:password@host
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


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


def make_storage(url: str, spec):
    return retrying(_make_storage, url, spec)


def _make_storage(url: str, spec):
    retry_cls = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) or optuna.storages.RetryFailedTrialCallback
    callback = retry_cls(max_retry=spec.max_retry)
    engine_kwargs = {"connect_args": {"timeout": 300}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    key = ("heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in
           inspect.signature(optuna.storages.RDBStorage.__init__).parameters else "failed_trial_callback")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # heartbeat_interval is marked experimental
        return optuna.storages.RDBStorage(
            url, engine_kwargs=engine_kwargs, heartbeat_interval=spec.heartbeat_interval,
            grace_period=spec.grace_period, **{key: callback})


def _construct(path: Path, section: str, cls, kwargs: dict):
    """``cls(**kwargs)``, a misspelt argument named with the allowed ones (the sweep file's schema
    leaves sampler/pruner arguments to the Optuna class they go to)."""
    allowed = [p for p in inspect.signature(cls).parameters if p not in ("self", "args", "kwargs")]
    for key in kwargs:
        if key not in allowed:
            raise SpecError(f"{path}: {section}.{key}: expected an argument of {cls.__name__} "
                            f"(allowed: type, {', '.join(allowed)}), got an unknown key")
    return cls(**kwargs)


def sampler_from(spec):
    """The sweep file's ``sampler:`` (type + arguments) as an Optuna sampler."""
    s = dict(spec.sampler)
    kind = s.pop("type", "tpe")
    table = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler}
    if kind not in table:
        raise SpecError(f"{spec.path}: sampler.type: expected one of {', '.join(table)}, got {kind!r}")
    if kind == "tpe":
        s.setdefault("constant_liar", True)  # several workers: don't all try the same point
    return _construct(spec.path, "sampler", table[kind], s)


def pruner_from(spec):
    """The sweep file's ``pruner:`` (type + arguments) as an Optuna pruner."""
    p = dict(spec.pruner)
    kind = p.pop("type", "median")
    table = {"median": optuna.pruners.MedianPruner, "percentile": optuna.pruners.PercentilePruner,
             "threshold": optuna.pruners.ThresholdPruner, "hyperband": optuna.pruners.HyperbandPruner,
             "successive_halving": optuna.pruners.SuccessiveHalvingPruner, "none": optuna.pruners.NopPruner}
    if kind not in table:
        raise SpecError(f"{spec.path}: pruner.type: expected one of {', '.join(table)}, got {kind!r}")
    return _construct(spec.path, "pruner", table[kind], p)


def open_study(storage_url: str, study_name: str, strategy):
    return optuna.load_study(study_name=study_name, storage=make_storage(storage_url, strategy.spec),
                             sampler=strategy.sampler(), pruner=strategy.pruner())


def create_study(storage_url: str, study_name: str, strategy, reset: bool = False):
    """The study (created, or loaded when it exists; deleted first with ``reset``)."""
    storage = make_storage(storage_url, strategy.spec)
    if reset:
        try:
            optuna.delete_study(study_name=study_name, storage=storage)
            print(f"deleted study {study_name!r}", flush=True)
        except KeyError:
            pass
    study = retrying(optuna.create_study, study_name=study_name, storage=storage, sampler=strategy.sampler(),
                     pruner=strategy.pruner(), direction=strategy.spec.direction, load_if_exists=True)
    name = METRIC_NAMES[strategy.spec.metric]
    if study.metric_names != [name]:  # what optuna-dashboard's plots call the objective
        retrying(study.set_metric_names, [name])
    return study


# The objective's name in Optuna (and optuna-dashboard): the spec's metric, in percent.
METRIC_NAMES = {"JF": "J&F (%)", "J": "J (%)", "F": "F (%)"}


def frozen(study, number: int):
    """The stored FrozenTrial numbered ``number``."""
    return next(t for t in study.get_trials(deepcopy=False) if t.number == number)


def requeue(study, trial, **user_attrs) -> None:
    """Queue another attempt of a trial (WAITING, same params; popped atomically by one worker).
    Its system attrs (GridSampler's grid_id and search_space) come along, as in Optuna's
    RetryHeartbeatStaleTrialCallback."""
    system_attrs = {k: v for k, v in trial.system_attrs.items() if k != "fixed_params"}
    study.add_trial(optuna.trial.create_trial(
        state=optuna.trial.TrialState.WAITING, params=dict(trial.params), distributions=dict(trial.distributions),
        user_attrs=user_attrs, system_attrs=system_attrs))


# optuna-dashboard offers parameter importance for every study; for a grid it credits whichever
# setting column its model splits on (all of them follow from the row).
GRID_IMPORTANCE_NOTE = (
    "**Parameter importance does not apply to this study.** A grid's trials are its rows x seeds: "
    "`row` and `seed` are the only dimensions sampled, and every other parameter (`paradigm.name`, "
    "`bbs.p`, `spa.enabled`, `dvi.enabled`, `wi.enabled`) is recorded from the row, so it is a function "
    "of `row`. The importance evaluators fit a model on these dependent columns and share the credit "
    "among them arbitrarily (smoke Table 2s have credited `bbs.p` with 0.68, `dvi.enabled` with 0.46). "
    "Compare the rows in the table instead (the MLflow parent run, `results/`), and the spread over seeds "
    "in the slice plot of `row`.")


def note_study(study, kind: str, parent_url: str) -> None:
    """The study's note in optuna-dashboard (Markdown): a link to the MLflow parent run, and for a
    grid why the importance plot misleads."""
    body = f"MLflow parent run: [{study.study_name}]({parent_url})"
    if kind == "grid":
        body += "\n\n" + GRID_IMPORTANCE_NOTE
    save_note(study, body)


def link_trial(trial, url: str, name: str) -> None:
    """The trial's MLflow run as a link in optuna-dashboard (its note): user attrs show as plain text."""
    save_note(trial, f"MLflow run: [{name}]({url})")


def counts(study) -> dict[str, int]:
    """Trials per state name."""
    out: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out
