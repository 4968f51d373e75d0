"""One run, top to bottom: the body of `python run.py`, and what every sweep trial calls.

    results = run(compose(["+paradigm=video2mask", "bbs.p=0.5"]), "outputs/example")

1. resolve the config (types, ranges, a checkpoint's own settings, the rules across keys) and set
   the data up (every file the run reads checked): bad input fails here, before any work;
2. open the MLflow run; from here on any failure ends it FAILED (KILLED when interrupted);
3. build the module: the bundle without its text encoder (every caption is embedded once into the
   text cache first), the decoder, the DiT's starting weights;
4. train (mode=train), then score the whole validation split -- or write masks (mode=predict);
5. write ``results.json`` (J, F, J&F in percent, TC, slices) and its per-expression records, and log them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import signal
from pathlib import Path

import lightning as L
import yaml
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig

from rvosflow import atomic, checkpoints, signals
from rvosflow.caches import TextCache
from rvosflow.config import meaningless, resolve
from rvosflow.console import quiet_libraries
from rvosflow.data.setup import prepare_data
from rvosflow.decoder import select_vae
from rvosflow.errors import ConfigError
from rvosflow.evaluate import write_submission
from rvosflow.metrics.records import flat_scores, sidecar_path, write_records
from rvosflow.metrics.slices import slice_scores
from rvosflow.models.loader import load_wan_bundle
from rvosflow.module import FlowRVSModule
from rvosflow.predict import MaskWriter, predictions_dir, prepare_predictions_dir
from rvosflow.signals import Stopped
from rvosflow.text_cache import cache_dir, ensure, run_captions
from rvosflow.tracking import TrackedRun
from rvosflow.trainer import make_trainer

log = logging.getLogger(__name__)


def run(cfg: DictConfig, run_dir: str | Path, callbacks: list | None = None, tags: dict | None = None) -> dict:
    """Resolve, check the data, train (mode=train), score on the validation split or predict, and
    write results.json; returns what it holds. ``callbacks`` join the Trainer's, ``tags`` the run's."""
    run_cfg = resolve(cfg)
    quiet_libraries()
    run_dir = Path(run_dir)
    check_run_dir(run_dir, run_cfg.overwrite)  # a finished run's results are never replaced unasked
    datamodule = prepare_data(run_cfg)
    if run_cfg.mode == "predict":  # never mixes two models' masks, never deletes a file it did not write
        prepare_predictions_dir(run_cfg, run_dir, datamodule.eval_source(datamodule.predict_split))
    tracked = TrackedRun(run_cfg, tags)
    try:
        return _run(run_cfg, run_dir, datamodule, [*tracked.callbacks(run_dir), *(callbacks or [])], tracked)
    except BaseException as exc:
        if isinstance(exc, SIGTERMException):  # Lightning's stop on SIGTERM (exit code None): ours
            exc = Stopped(signal.SIGTERM)
        if isinstance(exc, Stopped):
            exc.resume = resume_command(run_cfg, run_dir)
        tracked.fail(exc)
        raise exc from None


def build_module(cfg, datamodule) -> FlowRVSModule:
    """The run's module: the bundle (no text encoder: the captions the run reads are embedded into
    the text cache first, a no-op when an earlier run or `python -m rvosflow.text_cache` did it),
    the decoder ``model.vae_decoder`` picks, and the DiT from ``init_from`` or ``model.dit_ckpt``."""
    bundle = load_wan_bundle(cfg.model.path, dtype=cfg.model.dtype, components=("transformer", "vae", "scheduler"))
    bundle.vae = select_vae(cfg.model, bundle.vae)
    text = TextCache(cache_dir(cfg), cfg.text.max_length)
    ensure(text, cfg, run_captions(datamodule, cfg.mode, cfg.text))
    module = FlowRVSModule(cfg, bundle, text)
    if cfg.init_from and cfg.mode == "train":
        checkpoints.init_dit_from(module, cfg.init_from)
    if cfg.model.dit_ckpt:
        checkpoints.load_release_dit(module, cfg)
    return module


def check_run_dir(run_dir: Path, overwrite: bool) -> None:
    if (run_dir / "results.json").exists() and not overwrite:
        raise ConfigError(f"hydra.run.dir: {run_dir} holds a finished run (results.json): expected a new run "
                          "folder (or overwrite=true to replace its results)")


def resume_command(cfg, run_dir: Path) -> str | None:
    """How to go on from the checkpoint a stopped training left: the same overrides from it, in its folder."""
    ckpt = checkpoints.last_checkpoint(run_dir)
    if cfg.mode != "train" or not ckpt.exists():
        return None
    typed = [o for o in cfg.overrides if not o.startswith(("ckpt_path=", "hydra.run.dir="))]
    return " ".join(["python run.py", *typed, f"ckpt_path={ckpt}", f"hydra.run.dir={run_dir}"])


def _run(cfg, run_dir: Path, datamodule, callbacks, tracked: TrackedRun) -> dict:
    run_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True)
    for why in meaningless(cfg):  # valid, but the number would not mean what it says
        log.warning("WARNING: %s", why)
        tracked.logger.experiment.set_tag(tracked.logger.run_id, "rvosflow.warning", why)
    module = build_module(cfg, datamodule)
    if cfg.mode == "predict":
        return _predict(cfg, run_dir, module, datamodule, callbacks, tracked)
    # Server-scored splits (real Ref-YTVOS / MeViS `valid`) have no masks: no validation then.
    scored = datamodule.eval_source(datamodule.val_split).has_masks
    if not scored:
        log.warning("data.val_split=%s has no masks: validation off (score it with mode=predict)", datamodule.val_split)
    trainer, checkpointing = make_trainer(cfg, run_dir, tracked.logger, callbacks, validate=scored)
    if cfg.mode == "train":
        with signals.deferred():  # a signal stops it at the next batch, after a checkpoint
            trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
        ckpt = None  # score the weights in memory
        written = checkpointing.written
    else:
        ckpt = written = cfg.ckpt_path
    measures = {"J": None, "F": None, "JF": None, "per_kind": {}}
    if scored:
        datamodule.val_limit = None  # the reported score covers the whole validation split
        module.metric_prefix = "final"  # logged as final/*, apart from the in-training val/* curve
        with signals.deferred():
            trainer.validate(module, datamodule=datamodule, ckpt_path=ckpt, verbose=False)
        scores = trainer.callback_metrics  # final/* go to MLflow through tracking.RunRecords, not Lightning's logger
        measures = {"J": float(scores["final/J"]), "F": float(scores["final/F"]), "JF": float(scores["final/JF"]),
                    "per_kind": module.scores_by_kind, **record_summary(module.records, cfg.slices, run_dir)}
    return _write_results(cfg, run_dir, tracked, {**measures, "checkpoint": str(written) if written else None})


def record_summary(records, slices, run_dir: Path) -> dict:
    """What the per-expression records add to ``results.json``: REM's temporal consistency, the
    ``slices``, and the sidecar CSV that pairs this run with another (tables' CIs, --compare)."""
    tc = flat_scores(records)["TC"]
    return {"TC": None if math.isnan(tc) else 100 * tc, "slices": slice_scores(records, slices),
            "per_expression": str(write_records(records, sidecar_path(run_dir / "results.json")))}


def _predict(cfg, run_dir: Path, module, datamodule, callbacks, tracked: TrackedRun) -> dict:
    """mode=predict: the masks of every expression of ``data.predict_split`` as
    ``<predict.out_dir>/<video>/<exp_id>/<frame>.png`` (0/255, original resolution), and for a
    server-scored split the zip its server takes."""
    out_dir = predictions_dir(cfg, run_dir)
    if not cfg.ckpt_path and not cfg.model.dit_ckpt:
        log.warning("mode=predict without ckpt_path or model.dit_ckpt: predicting with the untrained DiT")
    writer = MaskWriter(out_dir)
    trainer, _ = make_trainer(cfg, run_dir, tracked.logger, [*(callbacks or []), writer])
    with signals.deferred():
        trainer.predict(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path, return_predictions=False)
    results = {"predictions": str(out_dir), "split": datamodule.predict_split, "expressions": writer.expressions,
               "frames": writer.frames, "checkpoint": cfg.ckpt_path or cfg.model.dit_ckpt}
    source = datamodule.eval_source(datamodule.predict_split)
    if not source.has_masks and cfg.data.format in ("mevis", "ref_ytvos"):
        sub = write_submission(source, out_dir, run_dir / f"{cfg.data.format}_{datamodule.predict_split}_submission.zip")
        results["submission"] = sub["zip"]
        log.info("submission zip (%d PNGs, %d expressions missing) -> %s", sub["pngs"], len(sub["missing"]), sub["zip"])
    return _write_results(cfg, run_dir, tracked, results)


def _write_results(cfg, run_dir: Path, tracked: TrackedRun, results: dict) -> dict:
    """``results.json`` (atomically) with where the run is and the config it ran, logged to MLflow."""
    out = run_dir / "results.json"
    config = dataclasses.asdict(cfg)
    results = {**results, "results_path": str(out), "mlflow_run_id": tracked.logger.run_id,
               "mlflow_url": tracked.url, "config": config}
    atomic.write_text(out, json.dumps(results, indent=2))
    client = tracked.logger.experiment
    client.log_artifact(tracked.logger.run_id, str(out))
    client.log_text(tracked.logger.run_id, yaml.safe_dump(config, sort_keys=False), "config.yaml")
    if results.get("per_expression"):
        tracked.log_records(results["per_expression"], results["slices"])
    tracked.finish()  # only now: a run stopped while it was scored is never FINISHED without a score
    return results
