"""``python -m rvosflow.sweep FILE [--profile P] [--workers N] ...``: set the study up (every row's
config validated first), run the workers, report. Exit 0 when every trial finished, 1 when some
failed (after the others ran) or a worker died, 2 on bad input, 143 on SIGTERM and 130 on SIGINT
(Ctrl-C; :mod:`rvosflow.signals`): the running trial stops at its next batch and is queued again,
and the last line printed is the command that resumes the sweep."""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shlex
import sys
import time
import uuid
from pathlib import Path

import torch

from rvosflow import signals
from rvosflow.config import check_tracking_uri, compose
from rvosflow.errors import ArgumentParser, SpecError, cli
from rvosflow.paths import PROJECT_ROOT
from rvosflow.signals import Stopped
from rvosflow.sweep import reuse
from rvosflow.sweep.report import report
from rvosflow.sweep.spec import Spec, load_spec, settings_fingerprint
from rvosflow.sweep.strategy import strategy_for
from rvosflow.sweep.study import check_storage, create_study, default_storage, note_study, redact, retrying
from rvosflow.sweep.worker import Context, quiet, work, worker_main
from rvosflow.tracking import Tracking, default_tracking_uri, run_url, tracking_uri

_DESCRIPTION = "Sweeps on Optuna: the tables of the paper as grids (row x seed), and searches (TPE + pruning)."


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def base_logger_settings(spec: Spec, extra: list[str]) -> tuple[str, str]:
    cfg = compose([*spec.overrides, *extra])
    return tracking_uri(cfg), str(cfg.logger.experiment_name)


def setup(spec: Spec, storage_url: str, extra: list[str], study_name: str | None, runs_root: Path | None,
          reset: bool = False, tracking_uri: str | None = None) -> Context:
    """Validate every trial's config, then open (or create) the study and its MLflow parent run."""
    strategy = strategy_for(spec)
    study_name = study_name or f"{spec.name}-{spec.profile}"
    if tracking_uri:
        extra = [*extra, f"logger.tracking_uri={tracking_uri}"]
    strategy.compose(extra)  # every row / search point, before any work
    uri, experiment = base_logger_settings(spec, extra)
    study = create_study(storage_url, study_name, strategy, reset=reset)
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
            f"{spec.path}: profile {spec.profile!r}: expected the settings study {study_name!r} in {redact(storage_url)} "
            f"was run with, got other settings (rows, profile overrides or --set changed). "
            f"Use --study NAME for a new study, or --reset to delete this one.")
    uid = attrs["uid"]
    tracking = retrying(Tracking, uri, experiment)
    retrying(tracking.experiment_id)
    params = {"sweep.file": spec.path, "sweep.profile": spec.profile, "sweep.kind": spec.kind,
              "sweep.seeds": spec.seeds, "sweep.overrides": " ".join(spec.overrides), "sweep.extra": " ".join(extra),
              "optuna.study": study_name, "optuna.storage": redact(storage_url), **strategy.params()}
    parent_id = tracking.parent_run(study_name, uid, params, tags={"sweep": spec.name, "profile": spec.profile})
    if study.user_attrs.get("mlflow_parent_run_id") != parent_id:
        study.set_user_attr("mlflow_parent_run_id", parent_id)
    # One folder per study (its uid): a --reset study never writes into an earlier one's trials.
    runs_root = Path(runs_root or PROJECT_ROOT / "outputs" / "sweeps" / study_name) / f"study-{uid[:8]}"
    ctx = Context(spec=spec, storage_url=storage_url, tracking_uri=uri, experiment_name=experiment, extra=extra,
                  runs_root=Path(runs_root), study_name=study_name, uid=uid, parent_id=parent_id)
    retrying(note_study, study, spec.kind, parent_url(ctx))
    return ctx


def parent_url(ctx: Context) -> str:
    """The parent run's page in the MLflow UI (``logger.ui_url`` when set)."""
    ui_url = compose([*ctx.spec.overrides, *ctx.extra]).logger.ui_url
    return run_url(ctx.tracking_uri, ctx.tracking.experiment_id(), ctx.parent_id, ui_url)


def where_to_look(ctx: Context) -> str:
    """The closing lines: the parent run's URL and the commands that serve the two UIs."""
    if ctx.tracking_uri == default_tracking_uri():
        mlflow_ui = "make mlflow-ui"
    elif ctx.tracking_uri.startswith("sqlite:///"):
        mlflow_ui = f".venv/bin/mlflow ui --backend-store-uri {ctx.tracking_uri} --host 127.0.0.1"
    else:
        mlflow_ui = ""  # a tracking server serves its own UI
    dashboard = "make optuna-dashboard"
    if ctx.storage_url != default_storage():
        dashboard += f" STORAGE={redact(ctx.storage_url)}"
    return (f"MLflow parent run: {parent_url(ctx)}" + (f"   (serve it: {mlflow_ui})" if mlflow_ui else "")
            + f"\nOptuna dashboard:  {dashboard}   (http://127.0.0.1:8080, study {ctx.study_name})")


def run_workers(ctx: Context, workers: int, threads: int) -> int | None:
    """The workers (this process for one), until the study has nothing left: None, or 1 when a
    worker died; :class:`Stopped` when a signal stopped them."""
    if workers == 1:
        torch.set_num_threads(threads)
        work(ctx)
        return None
    procs = start_workers(ctx, workers, threads)
    try:
        for p in procs:
            p.join()
    except Stopped as stop:
        stop_workers(procs, stop.signum)
        raise
    bad = [p.name for p in procs if p.exitcode != 0]
    if bad:
        print(f"worker(s) exited abnormally: {', '.join(bad)}; re-run the same command to finish", flush=True)
        return 1
    return None


def start_workers(ctx: Context, workers: int, threads: int) -> list:
    mpctx = mp.get_context("spawn")
    procs = []
    for w in range(workers):
        wctx = Context(**{**ctx.__dict__, "worker": f"w{w}"})
        p = mpctx.Process(target=worker_main, args=(wctx, threads), name=f"sweep-w{w}")
        p.start()
        procs.append(p)
    return procs


def stop_workers(procs: list, signum: int | None) -> None:
    """Pass the driver's signal on (a SIGTERM reaches the driver alone; a worker that the terminal's
    Ctrl-C reached too ignores the second) and wait for each worker to queue its trial again."""
    for p in procs:
        if p.is_alive() and signum is not None:
            os.kill(p.pid, signum)
    for p in procs:
        p.join()


def parse_args(argv=None) -> argparse.Namespace:
    ap = ArgumentParser(prog="python -m rvosflow.sweep", description=_DESCRIPTION,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sweep", help="a sweep file, e.g. sweeps/table2.yaml")
    ap.add_argument("--profile", default="default", help="profile in the sweep file (default, smoke, gpu, ...)")
    ap.add_argument("--workers", type=int, default=1,
                    help="worker processes on this machine (each gets cores/workers torch threads)")
    ap.add_argument("--storage", default=None, help="Optuna RDB URL (default sqlite:///<project>/sweeps.db)")
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
    """The CLI; bad input (sweep file, a row's override, a setting) is one line, exit 2."""
    quiet()
    argv = sys.argv[1:] if argv is None else list(argv)
    with signals.installed(second_stops=False):
        try:
            return cli(lambda _: _main(parse_args(argv)), None)
        except Stopped as stop:  # the table so far is written; the re-run goes on from the study
            print(f"sweep {stop}; resume with: {shlex.join(['python', '-m', 'rvosflow.sweep', *argv])}", flush=True)
            return stop.exit_code


def _main(args) -> int:
    spec = load_spec(args.sweep, args.profile)
    if args.heartbeat_interval:
        spec.heartbeat_interval = args.heartbeat_interval
    if args.grace_period:
        spec.grace_period = args.grace_period
    storage_url = args.storage or default_storage()
    check_storage(storage_url)
    check_tracking_uri(args.tracking_uri, "--tracking-uri")
    t0 = time.monotonic()
    ctx = setup(spec, storage_url, list(args.extra), args.study, Path(args.runs_dir) if args.runs_dir else None,
                reset=args.reset, tracking_uri=args.tracking_uri)
    out_dir = Path(args.out)
    if args.table_only:
        report(ctx, out_dir, finished=False)
        return 0
    workers = max(1, args.workers)
    threads = args.threads or max(1, cpu_count() // workers)
    print(f"sweep {spec.path} profile {spec.profile}: {ctx.strategy.describe()} "
          f"| study {ctx.study_name} in {redact(storage_url)} | MLflow {ctx.tracking_uri} parent run {ctx.parent_id} "
          f"| {workers} worker(s) x {threads} thread(s)", flush=True)
    if args.retry_failed:
        print(f"re-queued {ctx.strategy.retry_failed(ctx.study())} failed trial(s); "
              f"{reuse.forget_failures(ctx)} failed shared training(s) to train again", flush=True)
    try:
        code = run_workers(ctx, workers, threads)
    except Stopped:
        report(ctx, out_dir, finished=False)
        raise
    if code is not None:
        report(ctx, out_dir, finished=False)
        return code
    report(ctx, out_dir, finished=True)
    print(f"sweep time {time.monotonic() - t0:.0f} s", flush=True)
    print(where_to_look(ctx), flush=True)
    failed = ctx.strategy.failed(ctx.study())
    if failed:  # after every other trial ran: the table marks them; --retry-failed queues them again
        print(f"{len(failed)} trial(s) failed: {', '.join(failed)}; see the table, or re-run with --retry-failed",
              file=sys.stderr, flush=True)
        return 1
    return 0
