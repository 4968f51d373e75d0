"""Everything MLflow, in one place: where runs go, what a run is called and tagged, how it ends,
and a sweep's parent run with its children.

* **Where**: ``logger.tracking_uri``, else ``sqlite:///<project>/mlflow.db`` (``make mlflow-ui``);
  for SQLite, artifacts go to ``mlartifacts/`` beside the database (:func:`artifact_location`), and
  the first client of a database is created under a lock file (:func:`client`), as two processes
  setting its tables up together can break MLflow's migration for good.
* **Names**: a run is named for what ran (``video2mask-p0.5-spa-dvi-s0``: the axes' tokens, then
  the seed) and made unique within its experiment (``...-s0-2``); a sweep names its children by
  row and configuration. **Tags**: the axes of the tables, mode, data, tier, ``partial_eval``
  when the score does not cover the whole split, and MLflow's context (user, source, git commit).
* **Records** (the Trainer callbacks of :meth:`TrackedRun.callbacks`): the splits a run reads as MLflow data
  set inputs (digest, size, context training / evaluation / inference), the final checkpoint as
  the run's logged model (``logger.model_files``, ``logger.upload_weights``), the final scores
  linked to both, and MLflow's system metrics (``logger.system_metrics_interval``).
* **States**: :class:`TrackedRun` ends a run FAILED (KILLED when interrupted) with the error as its
  ``rvosflow.error`` tag; :class:`Tracking` keeps a sweep's parent and child runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import socket
import sqlite3
import subprocess
import tempfile
import threading
import time
import traceback
from pathlib import Path

import mlflow
import pandas as pd
import sqlalchemy.exc
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.trainer.states import TrainerFn
from mlflow.entities import Dataset, DatasetInput, InputTag, LoggedModelOutput, LoggedModelStatus, Metric
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
from mlflow.tracking.context.registry import resolve_tags
from optuna.trial import TrialState

from rvosflow import atomic, checkpoints, signals
from rvosflow.config import flat_params
from rvosflow.data import digest as data_digest
from rvosflow.errors import ConfigError
from rvosflow.paths import PROJECT_ROOT
from rvosflow.schema import axes
from rvosflow.signals import Stopped

log = logging.getLogger(__name__)

LOCAL_UI = "http://127.0.0.1:5000"  # where `make mlflow-ui` serves a SQLite store
# MLflow 3's UI opens in its GenAI views unless told this is model training: by the experiment's
# kind tag, and in a link by the workflowType query parameter.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
UI_MODE = "workflowType=machine_learning"
PARENT_TAG = "rvosflow.sweep"        # on the parent run: the study's uid
STUDY_TAG = "rvosflow.study"         # on parent and child runs: the study name
UID_TAG = "rvosflow.sweep_uid"       # on child runs: the study's uid
ERROR_TAG = "rvosflow.error"         # on a run that did not finish: why
NOTE_TAG = "mlflow.note.content"     # a run's description in the UI (Markdown)
NOTE_LIMIT = 8000                    # MLflow cuts a tag's value (a description too) at this many characters


# ----------------------------------------------------------------------------- where

def default_tracking_uri() -> str:
    return f"sqlite:///{PROJECT_ROOT / 'mlflow.db'}"


def tracking_uri(cfg) -> str:
    """``logger.tracking_uri``, or the project's ``mlflow.db`` when it is null."""
    return cfg.logger.tracking_uri or default_tracking_uri()


def client(uri: str) -> mlflow.MlflowClient:
    """An MlflowClient; for SQLite created under a lock file beside the database, with signals
    held off: the first client creates the tables, and a second process or a Ctrl-C in the middle
    leaves MLflow's migration half-done, a store no later run can open."""
    if not uri.startswith("sqlite:///"):
        return mlflow.MlflowClient(uri)
    db = Path(uri[len("sqlite:///"):])
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.parent / f".{db.name}.lock", "w") as lock, signals.deferred():
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            made = mlflow.MlflowClient(uri)
        except sqlalchemy.exc.OperationalError as exc:
            if "_alembic_tmp" not in str(exc):
                raise
            raise ConfigError(f"logger.tracking_uri: {db}: expected a complete MLflow store, found one whose table "
                              "set-up was interrupted (move the file away and rerun)") from None
        except mlflow.exceptions.MlflowException as exc:
            if "out-of-date database schema" not in str(exc):
                raise
            raise ConfigError(f"logger.tracking_uri: {db}: expected a store at this MLflow's schema, found an older one "
                              f"(back it up, then run: mlflow db upgrade {uri})") from None
    signals.check()  # a signal that came during the set-up stops the run now
    return made


def artifact_location(uri: str, experiment_name: str) -> str | None:
    """``<folder of mlflow.db>/mlartifacts`` for a SQLite tracking URI, derived at run time.

    mlflow.db stores an absolute artifact location per experiment (and per run), so a copied or
    moved project would go on logging into the original's folder. When the stored location is
    another project's ``mlartifacts``, it is pointed at this one (the experiment's and its runs'
    URIs, in one transaction); any other location (S3, a server) is left alone."""
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(uri[len("sqlite:///"):])
    location = (db.parent / "mlartifacts").as_uri()
    if not db.is_file():
        return location
    with contextlib.closing(sqlite3.connect(db, timeout=30)) as con:
        try:
            row = con.execute("SELECT experiment_id, artifact_location FROM experiments WHERE name = ?",
                              (experiment_name,)).fetchone()
        except sqlite3.OperationalError:  # a fresh file MLflow has not set up yet
            return location
        if row is None or row[1] == location or not (row[1].startswith("file://") and row[1].endswith("/mlartifacts")):
            return location
        old = row[1]
        with con:
            con.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = ?", (location, row[0]))
            con.execute("UPDATE runs SET artifact_uri = ? || substr(artifact_uri, ?) "
                        "WHERE experiment_id = ? AND substr(artifact_uri, 1, ?) = ?",
                        (location, len(old) + 1, row[0], len(old), old))
    log.warning("MLflow experiment %r: artifacts moved from %s to %s (project copied or moved)",
                experiment_name, old, location)
    return location


def mark_experiment(mlflow_client, experiment_id: str) -> None:
    """Tag the experiment as model training (once), so the UI shows runs, metrics and charts."""
    key, value = EXPERIMENT_KIND
    if key not in mlflow_client.get_experiment(experiment_id).tags:
        mlflow_client.set_experiment_tag(experiment_id, key, value)


def metric_safe(label: str) -> str:
    """A slice bin's label as MLflow takes it in a metric name (letters, digits, ``_-. /:``)."""
    for a, b in ((">=", "ge"), ("<", "lt"), (">", "gt"), ("%", "pct")):
        label = label.replace(a, b)
    return re.sub(r"[^\w\-. /:]", "_", label)


def ui_base(uri: str, ui_url: str | None = None) -> str:
    """The MLflow UI that shows the store ``uri``: ``ui_url`` (``logger.ui_url``) when given, the
    tracking server for an http(s) URI, else `make mlflow-ui`'s address."""
    if ui_url:
        return ui_url.rstrip("/")
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else LOCAL_UI


def run_url(uri: str, experiment_id: str, run_id: str, ui_url: str | None = None) -> str:
    """The run's page in the MLflow UI (:func:`ui_base`)."""
    return f"{ui_base(uri, ui_url)}/#/experiments/{experiment_id}/runs/{run_id}?{UI_MODE}"


# ----------------------------------------------------------------------------- names and tags

def run_name(cfg) -> str:
    """``<paradigm>[-<axis token>...]-s<seed>`` (each axis' token, where it gives one: ``p0.5``,
    ``spa``, ``nowi``, ``n3`` ...), prefixed by the mode when not training."""
    name = config_name({a.key: _value(cfg, a.key) for a in axes(cfg)}, cfg.seed)
    return name if cfg.mode == "train" else f"{cfg.mode}-{name}"


def config_name(settings: dict, seed: int) -> str:
    """:func:`run_name` of a configuration given as ``{axis key: value}`` (a sweep row's settings)."""
    tokens = {a.key: a.token for a in axes() if a.token}
    parts = [t for key, value in settings.items() if key in tokens and (t := tokens[key](value))]
    return "-".join([*parts, f"s{seed}"])


def child_run_name(row: str, settings: dict, seed: int) -> str:
    """A sweep child's name: its row, then what a run of that configuration alone is called
    (``h-video2mask-p0.5-spa-dvi-s0``)."""
    return f"{row}-{config_name(settings, seed)}"


def _value(cfg, key: str):
    node = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def unique_run_name(mlflow_client, experiment_name: str, name: str) -> str:
    """``name``, or ``name-2``, ``name-3``, ... when the experiment already has runs called so."""
    experiment = mlflow_client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return name
    quoted = name.replace("'", "\\'")
    taken = {r.info.run_name for r in mlflow_client.search_runs(
        [experiment.experiment_id], filter_string=f"attributes.run_name LIKE '{quoted}%'", max_results=50000)}
    if name not in taken:
        return name
    n = 2
    while f"{name}-{n}" in taken:
        n += 1
    return f"{name}-{n}"


def partial_eval(cfg) -> str | None:
    """Why the final score does not cover the whole split, or None when it does."""
    if cfg.data.eval_videos is not None:
        return f"data.eval_videos={cfg.data.eval_videos}"
    limit = cfg.trainer.get("limit_val_batches")
    if limit is not None and not (isinstance(limit, float) and limit == 1.0):  # the int 1 is one batch
        return f"trainer.limit_val_batches={limit}"
    return None


def git_commit() -> str | None:
    """The project checkout's commit (with ``-dirty`` when files differ), or None outside git."""
    def git(*args):
        return subprocess.run(["git", "-C", str(PROJECT_ROOT), *args], capture_output=True, text=True, timeout=10)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode:
            return None
        dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("-dirty" if dirty else "")


def context_tags(tags: dict[str, str]) -> dict[str, str]:
    """``tags`` with MLflow's standard context (user, entry point) and the project's git commit:
    MLflow looks for git beside the entry point, which is not the project under pytest or a launcher."""
    commit = git_commit()
    return resolve_tags({**({"mlflow.source.git.commit": commit} if commit else {}), **tags})


def run_tags(cfg) -> dict[str, str]:
    """Tags every run gets: the table's axes (``paradigm``, ``bbs.p`` ...), mode, data, tier, why
    the score is partial, and MLflow's standard context."""
    tags = {"paradigm": cfg.paradigm.name, "mode": cfg.mode, "data": str(cfg.data.format),
            "data.tier": str(cfg.data.tier or "real")}
    tags.update({a.key: str(_value(cfg, a.key)) for a in axes(cfg) if a.column})
    why = partial_eval(cfg)
    if why:
        tags["partial_eval"] = why
    return context_tags(tags)


# ----------------------------------------------------------------------------- one run

HOST_TAG, PID_TAG, HEARTBEAT_TAG = "rvosflow.host", "rvosflow.pid", "rvosflow.heartbeat"
HEARTBEAT_S = 60       # how often a live run says so
STALE_S = 15 * 60      # a RUNNING run on another host silent this long is dead


class RunLogger(MLFlowLogger):
    """Lightning's MLflow logger, except that the end of ``fit`` does not mark the run FINISHED:
    it is FINISHED only once its results are written (:meth:`TrackedRun.finish`), so a run killed
    while it is scored is never a FINISHED run without a score."""

    def finalize(self, status: str = "success") -> None:
        if status == "success":
            self.save()  # flush, but leave the run RUNNING
            return
        super().finalize(status)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def reap_dead_runs(mlflow_client, experiment_id: str, now: float | None = None) -> list[str]:
    """Mark KILLED the RUNNING runs whose process died without saying so (SIGKILL, a power cut):
    on this host, a pid that no longer exists; on another, a heartbeat older than STALE_S. Called by
    every new run of the experiment; returns the run ids it marked."""
    now = time.time() if now is None else now
    host = socket.gethostname()
    marked = []
    for r in mlflow_client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=5000):
        tags = r.data.tags
        if PID_TAG not in tags:  # not a run of ours (a sweep's parent keeps its own state)
            continue
        if tags.get(HOST_TAG) == host:
            dead = not _alive(int(tags[PID_TAG]))
        else:
            dead = now - float(tags.get(HEARTBEAT_TAG, r.info.start_time / 1000)) > STALE_S
        if dead:
            mlflow_client.set_tag(r.info.run_id, ERROR_TAG, "the process died without ending the run (found by a later run)")
            mlflow_client.set_terminated(r.info.run_id, "KILLED")
            marked.append(r.info.run_id)
    return marked


def make_logger(cfg, tags: dict | None = None) -> RunLogger:
    """The run's MLflow logger: named for what runs (unique in its experiment unless
    ``logger.run_name`` is given), tagged (:func:`run_tags`, and the host and pid that let a later
    run find it dead), params logged once, flat. Dead runs of the experiment are marked KILLED first."""
    uri = tracking_uri(cfg)
    location = artifact_location(uri, cfg.logger.experiment_name)
    mlflow_client = client(uri)
    experiment = mlflow_client.get_experiment_by_name(cfg.logger.experiment_name)
    if experiment is not None:
        reap_dead_runs(mlflow_client, experiment.experiment_id)
    name = cfg.logger.run_name or unique_run_name(mlflow_client, cfg.logger.experiment_name, run_name(cfg))
    alive = {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid()), HEARTBEAT_TAG: f"{time.time():.0f}"}
    logger = RunLogger(experiment_name=cfg.logger.experiment_name, run_name=name, tracking_uri=uri,
                       tags={**run_tags(cfg), **dict(cfg.logger.tags or {}), **(tags or {}), **alive},
                       artifact_location=location)
    logger.log_hyperparams(flat_params(cfg))
    mark_experiment(logger.experiment, logger.experiment_id)
    return logger


class TrackedRun:
    """A run's MLflow logger, created on first use, a heartbeat while it lives, and how it ends:
    FINISHED once its results are written (:meth:`finish`), else FAILED, or KILLED when stopped."""

    def __init__(self, cfg, tags: dict | None = None):
        self.cfg, self.tags, self._logger = cfg, tags, None
        self.records: RunRecords | None = None  # set by callbacks()
        self._beating = threading.Event()

    @property
    def logger(self) -> RunLogger:
        if self._logger is None:
            self._logger = make_logger(self.cfg, self.tags)
            threading.Thread(target=self._heartbeat, daemon=True, name="mlflow-heartbeat").start()
        return self._logger

    def _heartbeat(self) -> None:
        while not self._beating.wait(HEARTBEAT_S):
            try:
                self._logger.experiment.set_tag(self._logger.run_id, HEARTBEAT_TAG, f"{time.time():.0f}")
            except Exception:  # noqa: BLE001  (a store that is busy now is asked again next time)
                log.debug("heartbeat of MLflow run %s failed", self._logger.run_id, exc_info=True)

    @property
    def url(self) -> str:
        return run_url(tracking_uri(self.cfg), self.logger.experiment_id, self.logger.run_id, self.cfg.logger.ui_url)

    def callbacks(self, run_dir) -> list[Callback]:
        """The Trainer callbacks that record the run in MLflow: :class:`RunRecords` (data sets, model,
        final scores) and, when ``logger.system_metrics_interval`` is set, :class:`SystemMetrics`."""
        self.records = RunRecords(self.cfg, run_dir)
        out: list[Callback] = [self.records]
        if self.cfg.logger.system_metrics_interval:
            out.append(SystemMetrics(tracking_uri(self.cfg), self.cfg.logger.system_metrics_interval))
        return out

    def log_records(self, path: str, slices: dict) -> None:
        """The per-expression records: the sidecar CSV, an MLflow table (``per_expression.json``,
        browsable in the run's artifacts) and the slices as ``final/slice/<slice>/<bin>/{JF,J,F}``
        (final scores like the others: :meth:`RunRecords.log_final`)."""
        client, run_id = self.logger.experiment, self.logger.run_id
        client.log_artifact(run_id, path)
        client.log_table(run_id, pd.read_csv(path, keep_default_na=False, dtype=str), "per_expression.json")
        self.records.log_final(client, run_id, {f"final/slice/{name}/{metric_safe(label)}/{m}": scores[m]
                                                for name, bins in slices.items()
                                                for label, scores in bins.items() for m in ("JF", "J", "F")})

    def finish(self) -> None:
        """The run's results are written: FINISHED."""
        self._beating.set()
        self.logger.experiment.set_terminated(self.logger.run_id, "FINISHED")

    def fail(self, exc: BaseException) -> None:
        """FAILED, or KILLED for a stop (a signal, Ctrl-C, Lightning's SystemExit), with the error as a
        tag; never hides ``exc``."""
        self._beating.set()
        if self._logger is None:  # no MLflow run was started (its first use follows its creation)
            return
        status = "KILLED" if isinstance(exc, (Stopped, KeyboardInterrupt, SystemExit)) else "FAILED"
        note = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        try:
            mlflow_client = self._logger.experiment
            mlflow_client.set_tag(self._logger.run_id, ERROR_TAG, note[:4900])
            mlflow_client.set_terminated(self._logger.run_id, status)
        except Exception:  # noqa: BLE001
            log.exception("could not mark MLflow run %s %s", self._logger.run_id, status)


# ----------------------------------------------------------------------------- what a run records

DATA_CONTEXT_TAG = "mlflow.data.context"  # MLflow's tag of a run input: training | evaluation | inference
MODEL_TYPE = "flowrvs-checkpoint"
MANIFEST = "files.json"                   # in every logged model: its files' names, sizes, where they are on disk


def data_splits(cfg, datamodule) -> list[tuple[str, object, str]]:
    """``(name, source, context)`` of each split the run reads: the training split(s) (mode=train),
    and the scored split (evaluation) or the predicted one (inference). A split without masks is
    not scored, so in train and validate mode it is not an input."""
    fmt = cfg.data.format
    out = []
    if cfg.mode == "train":
        first, *more = datamodule.training_sources()
        out.append((f"{fmt}/{datamodule.train_split}", first, "training"))
        for source in more:  # data.format=mixed: the image part
            out.append((f"{'+'.join(cfg.data.image_datasets)}/{cfg.data.image_split}", source, "training"))
    split = datamodule.predict_split if cfg.mode == "predict" else datamodule.val_split
    (scored,) = datamodule.scored_sources(cfg.mode)
    if cfg.mode == "predict" or scored.has_masks:
        some = f" (first {cfg.data.eval_videos} videos)" if cfg.data.eval_videos is not None else ""
        out.append((f"{fmt}/{split}{some}", scored, "inference" if cfg.mode == "predict" else "evaluation"))
    return out


def dataset_input(name: str, source, context: str) -> DatasetInput:
    """A split as an MLflow data set input: its folder as the source, the digest of its expressions
    and files (:func:`rvosflow.data.digest.digest`), its size as the profile, and the context."""
    dataset = Dataset(name=name, digest=data_digest.digest(source), source_type="local",
                      source=json.dumps({"uri": str(Path(source.root).resolve())}),
                      profile=json.dumps(data_digest.profile(source)))
    return DatasetInput(dataset, tags=[InputTag(DATA_CONTEXT_TAG, context)])


def model_files(cfg, ckpt: Path, run_dir: Path) -> dict[str, Path]:
    """The files of the run's logged model (``logger.model_files``): ``last.ckpt``, and the release
    layout's ``mevis_ckpt.pth`` (+ ``decoder.pth`` with a tuned decoder) exported into ``<run dir>/release``."""
    files = {}
    if "checkpoint" in cfg.logger.model_files:
        files[ckpt.name] = ckpt
    if "release" in cfg.logger.model_files:
        decoder = (cfg.model.vae_decoder_path or cfg.model.vae_ckpt) if cfg.model.vae_decoder == "tuned" else None
        # the run's own folder, and this run's final checkpoint: replacing an earlier export of it is right
        exported = checkpoints.export(ckpt, run_dir / "release", decoder=decoder, overwrite=True)
        files.update({p.name: p for p in exported.values()})
    return files


def size_of(path: Path) -> int:
    """Bytes of a file, or of every file under a folder (FSDP's sharded checkpoint)."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def log_model(mlflow_client, run_id: str, experiment_id: str, name: str, files: dict[str, Path], upload: bool,
              params: dict, step: int) -> str:
    """``files`` (files or folders) as the run's MLflow logged model (READY; FAILED with the error as a
    tag when the upload fails, the run going on): their bytes when ``upload``, and always a manifest
    (``files.json``: names, sizes, paths on disk). Returns the model's id."""
    manifest = {n: {"path": str(p.resolve()), "bytes": size_of(p), "uploaded": upload} for n, p in files.items()}
    model = mlflow_client.create_logged_model(experiment_id, name=name, source_run_id=run_id, model_type=MODEL_TYPE,
                                              params={k: str(v) for k, v in params.items()},
                                              tags={"weights": "uploaded" if upload else "on disk"})
    try:
        with tempfile.TemporaryDirectory() as tmp:
            atomic.write_text(Path(tmp) / MANIFEST, json.dumps(manifest, indent=2))
            if upload:  # links: the artifact store copies the files once, from where they are
                for n, p in files.items():
                    if p.is_file():
                        (Path(tmp) / n).symlink_to(p.resolve())
            mlflow_client.log_model_artifacts(model.model_id, tmp)
            for n, p in files.items():
                if upload and p.is_dir():  # the store walks a folder, but not one behind a link
                    mlflow_client.log_model_artifacts(model.model_id, str(p), artifact_path=n)
    except Exception as exc:  # noqa: BLE001  (the run's scores matter more than its upload)
        log.exception("MLflow logged model %s: upload failed", name)
        mlflow_client.set_logged_model_tags(model.model_id, {ERROR_TAG: str(exc)[:4900]})
        mlflow_client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
        return model.model_id
    mlflow_client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    mlflow_client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step)])
    return model.model_id


class RunRecords(Callback):
    """What MLflow 3 organises a run around, for the run of ``cfg``: its data sets (inputs with their
    digests, logged at the first set-up), its model (the final checkpoint as a logged model, at the
    end of fit) and the final scores (``final/*``, logged here, linked to the scored data set and
    to the model; the module leaves them out of Lightning's logging)."""

    def __init__(self, cfg, run_dir: Path):
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.scored: Dataset | None = None
        self.model_id: str | None = None
        self.final_step = 0  # the step the final scores are logged at: the last optimizer step
        self._logged_inputs = False

    @staticmethod
    def _mlflow(trainer) -> MLFlowLogger | None:
        return trainer.logger if isinstance(trainer.logger, MLFlowLogger) and trainer.is_global_zero else None

    def setup(self, trainer, pl_module, stage: str) -> None:
        logger = self._mlflow(trainer)
        if logger is None or self._logged_inputs:
            return
        t0 = time.perf_counter()
        splits = data_splits(self.cfg, trainer.datamodule)
        inputs = [dataset_input(name, source, context) for name, source, context in splits]
        logger.experiment.log_inputs(logger.run_id, datasets=inputs)
        self.scored = next((i.dataset for i, (_, _, c) in zip(inputs, splits) if c == "evaluation"), None)
        self._logged_inputs = True
        log.info("MLflow data sets: %s (digests in %.2f s)",
                 ", ".join(f"{i.dataset.name} [{i.dataset.digest}]" for i in inputs), time.perf_counter() - t0)

    def on_fit_end(self, trainer, pl_module) -> None:
        logger = self._mlflow(trainer)
        ckpt = checkpoints.last_checkpoint(self.run_dir)  # trainer.Checkpoints wrote it at the end of training
        if logger is None or not ckpt.exists() or not self.cfg.logger.model_files:
            return
        t0 = time.perf_counter()
        files = model_files(self.cfg, ckpt, self.run_dir)
        params = {"model.name": self.cfg.model.name,
                  **{a.key: _value(self.cfg, a.key) for a in axes(self.cfg) if a.column or a.key == "paradigm.name"}}
        # named like its run ("." is not allowed in a model name)
        name = logger.experiment.get_run(logger.run_id).info.run_name.replace(".", "_")
        self.model_id = log_model(logger.experiment, logger.run_id, logger.experiment_id, name,
                                  files, self.cfg.logger.upload_weights, params, trainer.global_step)
        size = sum(size_of(p) for p in files.values())
        log.info("MLflow logged model %s: %s (%.1f MB%s) in %.2f s", self.model_id, ", ".join(files), size / 1e6,
                 "" if self.cfg.logger.upload_weights else ", not uploaded", time.perf_counter() - t0)

    def on_validation_end(self, trainer, pl_module) -> None:
        logger = self._mlflow(trainer)
        if logger is None or trainer.sanity_checking or trainer.state.fn != TrainerFn.VALIDATING:
            return
        self.final_step = trainer.global_step
        self.log_final(logger.experiment, logger.run_id,
                       {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("final/")})

    def log_final(self, mlflow_client, run_id: str, metrics: dict[str, float]) -> None:
        """Final scores (``final/*``) at the final step, linked to the scored data set and the model."""
        now = int(time.time() * 1000)
        link = {"dataset_name": self.scored.name, "dataset_digest": self.scored.digest} if self.scored else {}
        batch = [Metric(k, v, now, self.final_step, model_id=self.model_id, **link) for k, v in metrics.items()]
        for i in range(0, len(batch), 1000):  # MLflow's limit per batch
            mlflow_client.log_batch(run_id, metrics=batch[i:i + 1000])


class SystemMetrics(Callback):
    """MLflow's system metrics (CPU, memory, disk, network; GPU with nvidia-ml-py and a GPU) of the
    run, sampled every ``interval`` seconds while Lightning fits, validates or predicts. One monitor
    per stage, the next one going on from the last step; a stage shorter than ``interval`` logs none."""

    def __init__(self, uri: str, interval: float):
        self.uri, self.interval = uri, interval
        self._monitor = None
        self._started = False

    def setup(self, trainer, pl_module, stage: str) -> None:
        if not isinstance(trainer.logger, MLFlowLogger) or not trainer.is_global_zero:
            return
        self._monitor = SystemMetricsMonitor(trainer.logger.run_id, sampling_interval=self.interval,
                                             resume_logging=self._started, tracking_uri=self.uri)
        self._monitor.start()
        self._started = True

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if self._monitor is not None:
            self._monitor.finish()
            self._monitor = None

    def on_exception(self, trainer, pl_module, exception) -> None:
        self.teardown(trainer, pl_module, "")


# ----------------------------------------------------------------------------- a sweep

class Tracking:
    """The MLflow side of a study: its parent run (found by its uid tag, so that every worker and
    every re-run converge on the same one) and the bookkeeping of its child runs."""

    def __init__(self, uri: str, experiment_name: str):
        self.uri = uri
        self.experiment_name = experiment_name
        self.client = client(uri)

    def experiment_id(self) -> str:
        location = artifact_location(self.uri, self.experiment_name)  # this project's folder
        exp = self.client.get_experiment_by_name(self.experiment_name)
        if exp is not None:
            return exp.experiment_id
        try:
            exp_id = self.client.create_experiment(self.experiment_name, artifact_location=location)
        except Exception:  # created meanwhile by another worker
            return self.client.get_experiment_by_name(self.experiment_name).experiment_id
        mark_experiment(self.client, exp_id)
        return exp_id

    def _search(self, filter_string: str, **kw):
        return self.client.search_runs([self.experiment_id()], filter_string=filter_string, max_results=5000, **kw)

    def parent_run(self, study_name: str, uid: str, params: dict, tags: dict | None = None) -> str:
        """The study's parent run, found by its tag (created once; several workers converge on
        the earliest one). It carries MLflow's user, source and git tags like any run, and ``tags``."""
        flt = f"tags.`{PARENT_TAG}` = '{uid}'"
        runs = self._search(flt)
        mine = None
        if not runs:
            mine = self.client.create_run(self.experiment_id(), run_name=study_name,
                                          tags=context_tags({PARENT_TAG: uid, STUDY_TAG: study_name, **(tags or {})})).info.run_id
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
            self.client.set_tag(run_id, ERROR_TAG, note[:4900])
        self.client.set_terminated(run_id, status)
        return run_id

    def reconcile(self, parent_id: str, study) -> None:
        """Child runs left RUNNING by a dead worker: KILLED once Optuna has failed their trial."""
        states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
        for r in self.child_runs(parent_id, status="RUNNING"):
            try:
                number = int(r.data.tags.get("optuna.trial", "-1"))
            except ValueError:
                continue
            if states.get(number, TrialState.RUNNING) != TrialState.RUNNING:
                self.client.set_tag(r.info.run_id, ERROR_TAG, "worker died (heartbeat stale); trial re-queued")
                self.client.set_terminated(r.info.run_id, "KILLED")


_TRACKING: dict[tuple, Tracking] = {}


def tracking_for(uri: str, experiment_name: str) -> Tracking:
    """One Tracking (one MLflow client) per tracking URI and experiment in a process."""
    key = (uri, experiment_name)
    if key not in _TRACKING:
        _TRACKING[key] = Tracking(*key)
    return _TRACKING[key]
