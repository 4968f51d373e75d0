"""The worker loop: one process runs trials of the study until nothing is left to start, then
waits for the running ones (a dead worker's trial comes back as a retry). Each trial is one
:func:`rvosflow.train.run`, an MLflow child run of the study's parent run: it trains and scores,
or, for a grid row that shares its model with other rows (:mod:`.reuse`), scores that model's
checkpoint (``mode=validate``), which the worker trains first when no process has.

Signals (:mod:`rvosflow.signals`, installed with ``second_stops=False``): a trial and a shared
training run deferred, so a SIGTERM or SIGINT stops them at their next batch (their run's
``SafeStop``) or at the worker's next check, and a finished trial is recorded whole (its results,
then Optuna's COMPLETE). The trial it interrupts is marked KILLED and queued again; between trials
(waiting, picking the next one) the worker stops at once. It exits 143 / 130."""

from __future__ import annotations

import logging
import sys
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path

import optuna
import torch
from optuna.exceptions import ExperimentalWarning
from optuna.trial import TrialState

from rvosflow import signals
from rvosflow.config import compose, flat_params
from rvosflow.signals import Stopped
from rvosflow.sweep import reuse
from rvosflow.sweep.spec import Spec
from rvosflow.sweep.strategy import DuplicatePoint, grid_point, strategy_for
from rvosflow.sweep.study import frozen, link_trial, open_study, requeue
from rvosflow.sweep.timing import InferenceTimer
from rvosflow.tracking import STUDY_TAG, UID_TAG, tracking_for
from rvosflow.train import run

log = logging.getLogger("rvosflow.sweep")


@dataclass
class Context:
    """What a worker needs (picklable: workers are spawned processes)."""

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

    @property
    def strategy(self):
        return strategy_for(self.spec)

    @property
    def tracking(self):
        return tracking_for(self.tracking_uri, self.experiment_name)

    def study(self):
        return open_study(self.storage_url, self.study_name, self.strategy)


def say(ctx: Context, msg: str) -> None:
    print(f"[{ctx.study_name} {ctx.worker} {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def make_objective(ctx: Context, study):
    spec, strategy = ctx.spec, ctx.strategy

    def objective(trial):
        t0 = time.monotonic()
        try:
            plan = strategy.plan(trial, study)
        except DuplicatePoint as dup:
            say(ctx, f"trial #{trial.number}: its grid point is taken by trial #{dup.owner}; skipped")
            raise optuna.TrialPruned(str(dup)) from None
        overrides = [*plan.overrides, *ctx.extra, f"seed={plan.seed}", f"logger.run_name={plan.run_name}",
                     f"logger.tracking_uri={ctx.tracking_uri}", f"logger.experiment_name={ctx.experiment_name}"]
        tags = {"mlflow.parentRunId": ctx.parent_id, "row": plan.row, "seed": str(plan.seed), "profile": spec.profile,
                "optuna.trial": str(trial.number), "optuna.study": ctx.study_name, STUDY_TAG: ctx.study_name,
                UID_TAG: ctx.uid}
        done, total = strategy.progress(study)
        group = reuse.shared_group(spec, plan.row)
        model = None
        say(ctx, f"start trial #{trial.number}: {plan.what}  ({done}/{total} done)"
                 + (f", scoring model {group.label}" if group else ""))
        cfg = None
        timer = InferenceTimer()
        try:
            if group is not None:  # score the rows' shared model (trained here if nobody has)
                model = reuse.trained(ctx, group, plan.seed, say=lambda m: say(ctx, m))
                scoring, model_tags = reuse.scoring(spec.row(plan.row), model)
                overrides, tags = [*overrides, *scoring], {**tags, **model_tags}
            cfg = compose(overrides)
            signals.check()  # a signal that came meanwhile: before the run starts
            results = run(cfg, ctx.runs_root / f"trial-{trial.number:04d}", callbacks=[*plan.callbacks, timer],
                          tags=tags)
            for cb in plan.callbacks:  # DDP: the library's callback records pruning instead of raising
                if hasattr(cb, "check_pruned"):
                    cb.check_pruned()
        except optuna.TrialPruned as exc:
            ctx.tracking.close_trial(ctx.parent_id, trial.number, "KILLED", tags, note=f"pruned: {exc}",
                                     run_name=plan.run_name)
            say(ctx, f"pruned trial #{trial.number}: {plan.what}: {exc}  ({time.monotonic() - t0:.0f} s)")
            raise
        except BaseException as exc:
            interrupted = isinstance(exc, (Stopped, KeyboardInterrupt, SystemExit))  # a signal; Lightning turns Ctrl-C into SystemExit
            status = "KILLED" if interrupted else "FAILED"
            note = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            params = flat_params(cfg) if cfg is not None else {"overrides": " ".join(overrides)}
            try:
                ctx.tracking.close_trial(ctx.parent_id, trial.number, status, tags, note=note, params=params,
                                         run_name=plan.run_name)
            except Exception:  # never hide the trial's own error
                log.exception("could not mark the MLflow run of trial %d %s", trial.number, status)
            trial.set_user_attr("error", note[:1000])
            if interrupted:  # not the trial's fault: queue it again for the re-run
                if not isinstance(exc, (Exception, KeyboardInterrupt)):  # Optuna records only those
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
                requeue(study, frozen(study, trial.number), interrupted_trial=trial.number)
                say(ctx, f"interrupted trial #{trial.number}: {plan.what}; re-queued for the next run")
            else:
                say(ctx, f"FAILED trial #{trial.number}: {plan.what}: {note}")
            raise
        for k in ("J", "F", "JF"):
            trial.set_user_attr(k, float(results[k]))
        trial.set_user_attr("per_kind", results.get("per_kind") or {})
        trial.set_user_attr("TC", results.get("TC"))
        trial.set_user_attr("per_expression", results.get("per_expression"))  # pairs it with its reference row
        trial.set_user_attr("mlflow_run_id", results["mlflow_run_id"])
        trial.set_user_attr("mlflow_url", results["mlflow_url"])
        link_trial(trial, results["mlflow_url"], plan.run_name)
        trial.set_user_attr("seconds", round(time.monotonic() - t0, 1))
        timing = timer.measures()
        if timing:
            trial.set_user_attr("infer_s", timing["infer/seconds_per_video"])
        if model is not None:
            trial.set_user_attr("model", model["label"])
            trial.set_user_attr("trained_by", model["mlflow_run_id"])
            trial.set_user_attr("checkpoint", model["checkpoint"])
        done, total = strategy.progress(study, running_done=1)  # this one: not COMPLETE until we return
        say(ctx, f"done trial #{trial.number} [{min(done, total)}/{total}]: {plan.what}  "
                 f"J&F {results['JF']:.1f}  J {results['J']:.1f}  F {results['F']:.1f}  ({time.monotonic() - t0:.0f} s)")
        return float(results[spec.metric])

    return objective


def work(ctx: Context) -> None:
    """One worker: run trials until the study has nothing left to start, then wait for the
    running ones (they may die and come back as retries)."""
    spec, strategy = ctx.spec, ctx.strategy
    study = ctx.study()
    objective = make_objective(ctx, study)
    waiting_said = False
    while True:
        signals.check()  # a signal that came during the last trial or training stops the worker here
        optuna.storages.fail_stale_trials(study)
        ctx.tracking.reconcile(ctx.parent_id, study)
        trials = study.get_trials(deepcopy=False)
        with signals.deferred():  # first the shared models pending rows need (one per worker at a time)
            if reuse.train_next(ctx, pending_points(spec, trials), say=lambda m: say(ctx, m)):
                continue
        n_waiting = sum(t.state == TrialState.WAITING for t in trials)
        n_running = sum(t.state == TrialState.RUNNING for t in trials)
        if n_waiting or strategy.todo(trials):
            waiting_said = False
            with signals.deferred():  # the trial stops at a batch, or is recorded whole
                study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=True)
            continue
        if n_running:
            if not waiting_said:
                say(ctx, f"nothing left to start; waiting for {n_running} running trial(s) "
                         f"(a dead worker's trial is retried {spec.grace_period} s after its last heartbeat)")
                waiting_said = True
            time.sleep(max(1.0, min(spec.heartbeat_interval, 5)))  # a signal stops it at once
            continue
        return


def pending_points(spec: Spec, trials) -> set:
    """A grid's (row, seed) points that no trial holds yet, or whose trial waits (re-queued)."""
    if spec.kind != "grid":
        return set()
    held = {grid_point(t) for t in trials if t.state != TrialState.WAITING}
    return (set(spec.grid) - held) | {grid_point(t) for t in trials if t.state == TrialState.WAITING}


def worker_main(ctx: Context, threads: int) -> None:
    """A spawned worker process; exits 143 / 130 when a signal stopped it."""
    torch.set_num_threads(threads)
    quiet()
    with signals.installed(second_stops=False):
        try:
            work(ctx)
        except Stopped as stop:
            sys.exit(stop.exit_code)


def quiet() -> None:
    """Warnings and below off for Lightning and Optuna (Lightning sets its loggers to INFO when
    imported, which the imports at the top of this module have done)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=ExperimentalWarning)
