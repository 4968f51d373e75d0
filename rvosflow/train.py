"""Build and run one configuration from a composed config: the body of `python run.py`, and
what a sweep trial calls. Returns and writes ``results.json`` (J, F, JF in percent)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import MLFlowLogger
from omegaconf import DictConfig, OmegaConf

from rvosflow import config as run_config
from rvosflow.console import StepProgressBar, quiet_libraries
from rvosflow.data.check import check_sources
from rvosflow.paths import PROJECT_ROOT

log = logging.getLogger(__name__)


def default_tracking_uri() -> str:
    return f"sqlite:///{PROJECT_ROOT / 'mlflow.db'}"


def tracking_uri(cfg: DictConfig) -> str:
    """``logger.tracking_uri``, or the project's ``mlflow.db`` when it is null."""
    return cfg.logger.tracking_uri or default_tracking_uri()


class OverlayLogger(Callback):
    """Logs each validation's overlays (one expression per video, with its J&F) and, for the
    multistep paradigms, the flow's trajectory for the first of them, as PNGs in MLflow."""

    def on_validation_epoch_end(self, trainer, module) -> None:
        if not module.overlays or not isinstance(trainer.logger, MLFlowLogger) or trainer.sanity_checking:
            return
        import matplotlib.pyplot as plt

        from rvosflow.visualize import overlay_figure, trajectory_figure

        stage = module.metric_prefix if module.metric_prefix != "val" else f"val_step{trainer.global_step:06d}"
        fig = overlay_figure(module.overlays)
        trainer.logger.experiment.log_figure(trainer.logger.run_id, fig, f"overlays/{stage}.png")
        plt.close(fig)
        trajectory = module.trajectory(module.overlays[0])
        if trajectory is not None:
            fig = trajectory_figure(trajectory)
            trainer.logger.experiment.log_figure(trainer.logger.run_id, fig, f"trajectory/{stage}.png")
            plt.close(fig)


def flow_settings(cfg: DictConfig):
    from rvosflow.paradigms import FlowSettings

    return FlowSettings(
        bbs_p=float(cfg.bbs.p), bbs_sampler=str(cfg.bbs.sampler), spa=bool(cfg.spa.enabled), dvi=bool(cfg.dvi.enabled),
        steps=int(cfg.solver.steps), shift=float(cfg.solver.shift), sigma_min=float(cfg.solver.sigma_min),
        round_timesteps=bool(cfg.solver.round_timesteps),
        start_at_noise_end=bool(cfg.flow.start_at_noise_end), onestep_timestep=float(cfg.paradigm.timestep),
    )


def ensure_data(cfg: DictConfig) -> None:
    root = Path(cfg.data.root)
    if root.exists():
        return
    if not cfg.data.get("generate_if_missing", False):
        raise run_config.ConfigError(f"data.root: expected the {cfg.data.format} layout at {root}, found nothing there")
    from rvosflow.data.synthetic import SyntheticConfig, write_benchmark

    tier = cfg.data.get("tier", "default")
    log.info("synthetic benchmark (%s tier) missing at %s: generating it (once)", tier, root)
    write_benchmark(root.parent, SyntheticConfig(tier=tier))


def build_datamodule(cfg: DictConfig, spatial_multiple: int):
    """``DATAMODULES[data.format]`` from the ``data.*`` keys it takes (``from_config``)."""
    from rvosflow.data.datamodules import from_config

    return from_config(cfg.data, spatial_multiple, seed=cfg.seed)


def init_transformer_from(module, path: str | Path) -> None:
    """``init_from``: load the DiT weights (``transformer.*``) of a Lightning checkpoint before fit
    (e.g. the RefCOCO pre-training stage before Ref-YTVOS fine-tuning). Optimizer state and step
    are not taken; every DiT weight must match (same paradigm/DVI)."""
    ckpt = run_config.load_checkpoint(path, "init_from")  # plain data only: code is refused, never run
    module.convert_convention(ckpt, "init_from")  # an old-sign DiT is converted exactly
    full = ckpt.get("state_dict", {})
    state = {k[len("transformer."):]: v for k, v in full.items() if k.startswith("transformer.")}
    if not state:
        raise run_config.ConfigError(f"init_from: {path}: expected transformer.* weights, found none")
    try:
        module.transformer.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise run_config.ConfigError(f"init_from: {path}: expected weights that fit this DiT (same paradigm/DVI/model), "
                                     f"found a mismatch ({str(e).splitlines()[0]})") from e
    module.reset_ema()  # the EMA starts from the same weights
    log.info("DiT initialised from %s (%d tensors)", path, len(state))


def load_dit_ckpt(module, cfg: DictConfig) -> None:
    """``model.dit_ckpt``: the DiT weights (``model.dit_weights``: its EMA over ``model``, as the
    release's inference, or ``model``) of a release-layout ``mevis_ckpt.pth`` into the run's DiT (and
    its EMA). DVI is read off the patch embedding; a file that disagrees with the config is an error
    naming both."""
    from rvosflow import release

    path = cfg.model.dit_ckpt
    latent_channels = int(module.frozen.vae.config.z_dim)
    expected = module.paradigm.input_channels(latent_channels)
    state = release.read_dit(path, cfg.model.dit_weights, module.transformer, check=lambda model: release.check_dit_channels(
        model, latent_channels, expected, bool(cfg.dvi.enabled), path))
    try:
        module.transformer.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise release.ReleaseError(f"model.dit_ckpt: {path} does not fit model={cfg.model.name}: {first}") from None
    module.reset_ema()
    log.info("DiT weights from %s [%s] (%d tensors)", path, cfg.model.dit_weights, len(state))


def latent_cache_dir(cfg: DictConfig) -> str | None:
    """A cache folder per (VAE weights, dtype, resolution, latent convention). Entries inside are
    keyed by the content of the encoded pixels (``latents.content_key``), so the same folder is
    right for any dataset and a changed frame is encoded again. The decoder is not in the key: a
    tuned decoder (``model.vae_decoder=tuned``) only ever replaces the decoder half of the VAE
    (``rvosflow.decoder.tuned_vae`` keeps the bundle's encoder), and only the encoder is cached."""
    if not cfg.cache_latents or not cfg.latent_cache_dir:
        return None
    from rvosflow.latents import file_identity, fingerprint

    key = fingerprint("content-v1", file_identity(Path(cfg.model.path) / "vae"), cfg.data.height,
                      cfg.data.max_width, cfg.model.dtype, bool(cfg.flow.normalize_mask_latent))
    return str(Path(cfg.latent_cache_dir) / key)


def make_strategy(cfg: DictConfig):
    """``trainer.strategy`` as Lightning takes it. ``fsdp`` (the ``+strategy=fsdp`` preset) becomes an
    ``FSDPStrategy`` with one FSDP unit per ``WanTransformerBlock`` and the ``fsdp.*`` mixed precision;
    any other value (auto, ddp, ...) is passed through. ``config.validate`` checked the keys."""
    name = cfg.trainer.strategy
    if name != "fsdp":
        return name
    from diffusers.models.transformers.transformer_wan import WanTransformerBlock
    from lightning.pytorch.strategies import FSDPStrategy
    from torch.distributed.fsdp import MixedPrecision

    from rvosflow.models.loader import resolve_dtype

    f = cfg.fsdp
    return FSDPStrategy(
        auto_wrap_policy={WanTransformerBlock},
        mixed_precision=MixedPrecision(param_dtype=resolve_dtype(f.param_dtype), reduce_dtype=resolve_dtype(f.reduce_dtype),
                                       buffer_dtype=resolve_dtype(f.buffer_dtype)),
        sharding_strategy=f.sharding_strategy, state_dict_type=f.state_dict_type, cpu_offload=bool(f.cpu_offload),
    )


def build_module(cfg: DictConfig, bundle, text_cache=None):
    """The run's LightningModule; ``text_cache`` (``rvosflow.text_cache.TextCache``) holds the captions'
    embeddings (without it, the bundle's text encoder encodes them on first use)."""
    from rvosflow.models.loader import resolve_dtype
    from rvosflow.module import FlowRVSModule, OptimSettings
    from rvosflow.paradigms import build_paradigm

    fsdp = cfg.trainer.strategy == "fsdp"  # FSDP keeps float32 master weights and computes in fsdp.param_dtype

    return FlowRVSModule(
        bundle, build_paradigm(cfg.paradigm.name, flow_settings(cfg)), weight_init=cfg.wi.enabled,
        optim=OptimSettings(lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), weight_decay=cfg.optim.weight_decay,
                            schedule=cfg.optim.get("schedule", "constant"),
                            milestones=tuple(cfg.optim.get("milestones", (30,))), gamma=float(cfg.optim.get("gamma", 0.9))),
        text_max_length=cfg.text.max_length, text_clean=cfg.text.clean, text_lowercase=cfg.text.lowercase,
        mask_rule=cfg.model.mask_rule, gradient_checkpointing=cfg.model.gradient_checkpointing,
        compute_dtype=resolve_dtype(cfg.fsdp.param_dtype if fsdp else cfg.model.dtype), text_cache=text_cache,
        normalize_mask_latent=cfg.flow.normalize_mask_latent,
        window_frames=cfg.window_frames, cache_latents=cfg.cache_latents, latent_cache_dir=latent_cache_dir(cfg),
        num_overlays=cfg.num_overlays, trajectory_steps=cfg.trajectory_steps,
        seed=cfg.seed, run_config=OmegaConf.to_container(cfg, resolve=True),
        ema_decay=float(cfg.ema.decay) if cfg.ema.enabled else None,
    )


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
    import contextlib
    import sqlite3

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


def make_logger(cfg: DictConfig, tags: dict | None = None) -> MLFlowLogger:
    """The run's MLflow logger: named for what runs (unique in its experiment unless
    ``logger.run_name`` is given), tagged (``tracking.run_tags``), params logged once, flat."""
    import mlflow

    from rvosflow import tracking

    uri = tracking_uri(cfg)
    location = artifact_location(uri, cfg.logger.experiment_name)
    name = cfg.logger.run_name or tracking.unique_run_name(
        mlflow.MlflowClient(uri), cfg.logger.experiment_name, tracking.run_name(cfg))
    logger = MLFlowLogger(
        experiment_name=cfg.logger.experiment_name, run_name=name, tracking_uri=uri,
        tags={**tracking.run_tags(cfg), **dict(cfg.logger.tags or {}), **(tags or {})},
        artifact_location=location,
    )
    logger.log_hyperparams(run_config.flat_params(cfg))
    tracking.mark_experiment(logger.experiment, logger.experiment_id)
    return logger


def run_url(cfg: DictConfig, logger: MLFlowLogger) -> str:
    from rvosflow.tracking import run_url as url

    return url(tracking_uri(cfg), logger.experiment_id, logger.run_id)


def run(cfg: DictConfig, run_dir: str | Path, callbacks: list[Callback] | None = None, tags: dict | None = None) -> dict:
    """Validate, check the data, train (mode=train), score on the validation split and write
    results.json. Bad input fails before any work (and before an MLflow run exists); once the
    MLflow run exists, any failure ends it FAILED (KILLED when interrupted) with the error as
    its ``rvosflow.error`` tag."""
    run_config.validate(cfg)  # types, ranges and unknown keys first: a checkpoint path may be the bad key
    if cfg.get("ckpt_path"):  # the checkpoint's own paradigm/toggles/model, not the defaults
        cfg = run_config.apply_checkpoint_config(cfg, cfg.ckpt_path)
        run_config.validate(cfg)
    if cfg.get("init_from") and cfg.mode == "train":
        run_config.check_init_from(cfg, cfg.init_from)
    quiet_libraries()
    run_dir = Path(run_dir)
    if cfg.mode == "predict":
        prepare_predictions_dir(cfg, run_dir)
    ensure_data(cfg)
    datamodule = build_datamodule(cfg, size_multiple(cfg))
    check_sources(datamodule.sources_read(cfg.mode))  # every file the splits reference, all problems at once
    tracked = TrackedRun(cfg, tags)
    try:
        return _run(cfg, run_dir, datamodule, callbacks, tracked)
    except BaseException as exc:
        tracked.fail(exc)
        raise


class TrackedRun:
    """The run's MLflow logger, created on first use, and how the run ends when it fails."""

    def __init__(self, cfg: DictConfig, tags: dict | None):
        self.cfg, self.tags, self._logger = cfg, tags, None

    @property
    def logger(self) -> MLFlowLogger:
        if self._logger is None:
            self._logger = make_logger(self.cfg, self.tags)
        return self._logger

    def fail(self, exc: BaseException) -> None:
        """FAILED (KILLED for Ctrl-C, which Lightning turns into SystemExit) with the error as a tag;
        never hides ``exc``."""
        if self._logger is None:  # no MLflow run was started (its first use follows its creation)
            return
        import traceback

        status = "KILLED" if isinstance(exc, (KeyboardInterrupt, SystemExit)) else "FAILED"
        note = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        try:
            client = self._logger.experiment
            client.set_tag(self._logger.run_id, "rvosflow.error", note[:4900])
            client.set_terminated(self._logger.run_id, status)
        except Exception:  # noqa: BLE001
            log.exception("could not mark MLflow run %s %s", self._logger.run_id, status)


def size_multiple(cfg: DictConfig) -> int:
    """What frame sides are floored to: ``data.size_multiple`` (the release hard-codes 16), or the
    model's own (VAE spatial factor x DiT patch) when null; it must be a multiple of the model's."""
    own = bundle_spatial_multiple(cfg.model.path)
    chosen = cfg.data.get("size_multiple", 16) or own
    if chosen % own:
        raise run_config.ConfigError(f"data.size_multiple: expected a multiple of {own} (this model's VAE factor x "
                                     f"patch), got {chosen}")
    return int(chosen)


def bundle_spatial_multiple(path) -> int:
    """What H and W round to (VAE spatial factor x DiT patch), read from the bundle's config.json
    files so the data can be set up and checked before any weight is loaded."""
    from rvosflow.models.loader import check_bundle

    root = check_bundle(path, ("transformer", "vae"))
    vae = json.loads((root / "vae" / "config.json").read_text())
    dit = json.loads((root / "transformer" / "config.json").read_text())
    return int(vae.get("scale_factor_spatial") or 8) * int(dit.get("patch_size", [1, 2, 2])[1])


def _run(cfg: DictConfig, run_dir: Path, datamodule, callbacks, tracked: TrackedRun) -> dict:
    from rvosflow.decoder import select_vae
    from rvosflow.models.loader import load_wan_bundle
    from rvosflow.text_cache import TextCache, cache_dir, ensure, run_captions

    run_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision("high")
    # No text encoder: every caption the run reads is embedded once into the text cache first
    # (a no-op when `python -m rvosflow.text_cache` or an earlier run did it), so it never sits on the GPU.
    bundle = load_wan_bundle(cfg.model.path, dtype=cfg.model.dtype, components=("transformer", "vae", "scheduler"))
    bundle.vae = select_vae(cfg.model, bundle.vae)  # model.vae_decoder: frozen, or the tuned logit head
    text = TextCache(cache_dir(cfg), int(cfg.text.max_length))
    ensure(text, cfg, run_captions(datamodule, cfg.mode, cfg.text))
    module = build_module(cfg, bundle, text)
    if cfg.get("init_from") and cfg.mode == "train":
        init_transformer_from(module, cfg.init_from)
    if cfg.model.get("dit_ckpt"):
        load_dit_ckpt(module, cfg)

    logger = tracked.logger
    trainer_args = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer_args["strategy"] = make_strategy(cfg)
    checkpointing = ModelCheckpoint(dirpath=run_dir / "checkpoints", save_last=True, save_top_k=0)
    callbacks = [OverlayLogger(), checkpointing, *(callbacks or [])]
    if cfg.trainer.get("enable_progress_bar") is not False:
        callbacks.append(StepProgressBar())
    if cfg.mode == "predict":
        return _predict(cfg, run_dir, module, datamodule, logger, trainer_args, callbacks)
    # Server-scored splits (real Ref-YTVOS / MeViS `valid`) have no masks: no validation then.
    scored = datamodule.eval_source(datamodule.val_split).has_masks
    if not scored:
        log.warning("data.val_split=%s has no masks: validation off (score it with mode=predict)", datamodule.val_split)
        trainer_args["limit_val_batches"] = 0
    trainer = L.Trainer(**trainer_args, logger=logger, default_root_dir=str(run_dir), callbacks=callbacks)
    if cfg.mode == "train":
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
        ckpt = None  # score the weights in memory
        # the file ModelCheckpoint really wrote (last-v1.ckpt when last.ckpt was already there)
        written = checkpointing.last_model_path or None
    else:
        ckpt = written = cfg.ckpt_path
    datamodule.val_limit = None  # the reported score covers the whole validation split
    if scored:
        module.metric_prefix = "final"  # logged as final/*, apart from the in-training val/* curve
        scores = trainer.validate(module, datamodule=datamodule, ckpt_path=ckpt, verbose=False)[0]
        measures = {"J": scores["final/J"], "F": scores["final/F"], "JF": scores["final/JF"],
                    "per_kind": module.scores_by_kind}
    else:
        measures = {"J": None, "F": None, "JF": None, "per_kind": {}}
    out = run_dir / "results.json"
    results = {
        **measures, "checkpoint": str(written) if written else None, "results_path": str(out),
        "mlflow_run_id": logger.run_id, "mlflow_url": run_url(cfg, logger),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    out.write_text(json.dumps(results, indent=2))
    logger.experiment.log_artifact(logger.run_id, str(out))
    logger.experiment.log_text(logger.run_id, OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
    return results


def summary(results: dict) -> str:
    """The closing lines of `python run.py`: the score (J, F, per kind), where results.json and
    the MLflow run are."""
    if "predictions" in results:
        head = f"{results['expressions']} expressions ({results['frames']} frames) -> {results['predictions']}"
    elif results["JF"] is None:  # a server-scored validation split: no local score
        head = f"trained -> {results['checkpoint']} (the split has no masks: score it with mode=predict)"
    else:
        head = f"J&F {results['JF']:.1f}  J {results['J']:.1f}  F {results['F']:.1f}"
        if results["per_kind"]:
            head += "   per kind: " + ", ".join(f"{k} {v['JF']:.1f} (n={v['n']})" for k, v in results["per_kind"].items())
        if results["config"]["data"].get("eval_videos") is not None:
            head += f"   [first {results['config']['data']['eval_videos']} videos only]"
    return f"{head}\n  results: {results['results_path']}\n  MLflow:  {results['mlflow_url']}"


def predictions_dir(cfg: DictConfig, run_dir: Path) -> Path:
    return Path(cfg.predict.out_dir) if cfg.predict.out_dir else run_dir / "predictions"


def prepare_predictions_dir(cfg: DictConfig, run_dir: Path) -> None:
    """Refuse a non-empty ``predict.out_dir`` (two models' masks would mix) unless
    ``predict.overwrite=true``; then remove the earlier masks, and nothing but masks."""
    import shutil

    out_dir = predictions_dir(cfg, run_dir)
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise run_config.ConfigError(f"predict.out_dir: expected a folder, found a file at {out_dir}")
    entries = list(out_dir.rglob("*"))
    if not entries:
        return
    if not cfg.predict.get("overwrite", False):
        raise run_config.ConfigError(
            f"predict.out_dir: expected an empty or new folder, found {len(entries)} entries in {out_dir} "
            "(set predict.overwrite=true to replace them)")
    others = [p for p in entries if p.is_file() and p.suffix != ".png"]
    if others:
        raise run_config.ConfigError(
            f"predict.out_dir: expected a folder of mask PNGs to overwrite, found {len(others)} other files "
            f"in {out_dir} (e.g. {others[0]})")
    shutil.rmtree(out_dir)


def _predict(cfg, run_dir: Path, module, datamodule, logger, trainer_args, callbacks) -> dict:
    """mode=predict: masks of every expression of ``data.predict_split`` as
    ``<predict.out_dir>/<video>/<exp_id>/<frame>.png`` (0/255, original resolution)."""
    from rvosflow.predict import MaskWriter

    out_dir = predictions_dir(cfg, run_dir)
    if not cfg.ckpt_path and not cfg.model.get("dit_ckpt"):
        log.warning("mode=predict without ckpt_path or model.dit_ckpt: predicting with the untrained DiT")
    writer = MaskWriter(out_dir)
    trainer = L.Trainer(**trainer_args, logger=logger, default_root_dir=str(run_dir), callbacks=[*callbacks, writer])
    trainer.predict(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path, return_predictions=False)
    results = {
        "predictions": str(out_dir), "split": datamodule.predict_split, "expressions": writer.expressions,
        "frames": writer.frames, "checkpoint": cfg.ckpt_path or cfg.model.get("dit_ckpt"),
        "results_path": str(run_dir / "results.json"),
        "mlflow_run_id": logger.run_id, "mlflow_url": run_url(cfg, logger), "config": OmegaConf.to_container(cfg, resolve=True),
    }
    source = datamodule.eval_source(datamodule.predict_split)
    if not source.has_masks and cfg.data.format in ("mevis", "ref_ytvos"):  # server-scored: the zip it takes
        from rvosflow.evaluate import write_submission

        sub = write_submission(source, out_dir, run_dir / f"{cfg.data.format}_{datamodule.predict_split}_submission.zip")
        results["submission"] = sub["zip"]
        log.info("submission zip (%d PNGs, %d expressions missing) -> %s", sub["pngs"], len(sub["missing"]), sub["zip"])
    (run_dir / "results.json").write_text(json.dumps(results, indent=2))
    return results
