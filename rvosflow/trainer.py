"""The ``lightning.Trainer`` of a run: the ``trainer.*`` arguments as Lightning takes them (FSDP
built from ``fsdp.*``), the run's folder, its MLflow logger, and the callbacks every run has --
checkpoints a rerun resumes from, a stop at the next batch when a signal arrives, overlays and
trajectory pictures, the step progress bar."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import matplotlib.pyplot as plt
import torch
from diffusers.models.transformers.transformer_wan import WanTransformerBlock
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch.distributed.fsdp import MixedPrecision

from rvosflow import signals
from rvosflow.console import StepProgressBar
from rvosflow.models.loader import resolve_dtype
from rvosflow.signals import Stopped
from rvosflow.visualize import overlay_figure, trajectory_figure


def make_strategy(cfg):
    """``trainer.strategy`` as Lightning takes it. ``fsdp`` (the ``+strategy=fsdp`` preset) becomes an
    ``FSDPStrategy`` with one FSDP unit per ``WanTransformerBlock`` and the ``fsdp.*`` mixed precision;
    any other value (auto, ddp, ...) is passed through."""
    name = cfg.trainer.get("strategy", "auto")
    if name != "fsdp":
        return name
    f = cfg.fsdp
    return FSDPStrategy(
        auto_wrap_policy={WanTransformerBlock},
        mixed_precision=MixedPrecision(param_dtype=resolve_dtype(f.param_dtype), reduce_dtype=resolve_dtype(f.reduce_dtype),
                                       buffer_dtype=resolve_dtype(f.buffer_dtype)),
        sharding_strategy=f.sharding_strategy, state_dict_type=f.state_dict_type, cpu_offload=bool(f.cpu_offload),
    )


class OverlayLogger(Callback):
    """Logs each validation's overlays (one expression per video, with its J&F) and, for the
    multistep paradigms, the flow's trajectory for the first of them, as PNGs in MLflow."""

    def on_validation_epoch_end(self, trainer, module) -> None:
        if not module.overlays or not isinstance(trainer.logger, MLFlowLogger) or trainer.sanity_checking:
            return
        stage = module.metric_prefix if module.metric_prefix != "val" else f"val_step{trainer.global_step:06d}"
        fig = overlay_figure(module.overlays)
        trainer.logger.experiment.log_figure(trainer.logger.run_id, fig, f"overlays/{stage}.png")
        plt.close(fig)
        trajectory = module.trajectory(module.overlays[0])
        if trajectory is not None:
            fig = trajectory_figure(trajectory)
            trainer.logger.experiment.log_figure(trainer.logger.run_id, fig, f"trajectory/{stage}.png")
            plt.close(fig)


class Checkpoints(Callback):
    """``<run dir>/checkpoints/last.ckpt``, written atomically (a kill mid-write leaves the previous
    one) at every in-training validation, every ``checkpoint.every_n_steps`` optimizer steps when
    set, at the end of training, and when a signal stops the run (:mod:`rvosflow.signals`): what a
    rerun with ``ckpt_path=`` resumes from."""

    def __init__(self, run_dir: Path, every_n_steps: int | None):
        self.path = Path(run_dir) / "checkpoints" / "last.ckpt"
        self.every_n_steps = every_n_steps
        self.written: Path | None = None
        self._step_saved = -1

    def save(self, trainer) -> None:
        if trainer.global_step == self._step_saved:
            return
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        trainer.save_checkpoint(tmp)  # every rank calls it (FSDP gathers); rank 0 writes
        if trainer.is_global_zero:
            os.replace(tmp, self.path)
        self.written, self._step_saved = self.path, trainer.global_step

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0:
            self.save(trainer)

    def on_validation_end(self, trainer, module) -> None:
        if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            self.save(trainer)

    def on_train_end(self, trainer, module) -> None:
        self.save(trainer)

    def on_exception(self, trainer, module, exception: BaseException) -> None:
        if isinstance(exception, (Stopped, SIGTERMException)) and trainer.state.fn == TrainerFn.FITTING:
            self.save(trainer)


class SafeStop(Callback):
    """Stops at a batch boundary when a signal arrived during the loop (:func:`rvosflow.signals.check`)."""

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        signals.check()

    def on_validation_batch_end(self, trainer, module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        signals.check()

    def on_predict_batch_end(self, trainer, module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        signals.check()


def make_trainer(cfg, run_dir: Path, logger, callbacks: list | None = None, validate: bool = True) -> tuple[L.Trainer, Checkpoints]:
    """The run's Trainer and its checkpoint callback (``last.ckpt`` under ``<run_dir>/checkpoints``).
    ``validate=False`` turns validation off (a split without masks)."""
    torch.set_float32_matmul_precision("high")
    args = {**cfg.trainer, "strategy": make_strategy(cfg), "enable_checkpointing": False}  # Checkpoints writes them
    if not validate:
        args["limit_val_batches"] = 0
    checkpoints = Checkpoints(run_dir, cfg.checkpoint.every_n_steps)
    every = [OverlayLogger(), checkpoints, SafeStop(), *(callbacks or [])]
    if cfg.trainer.get("enable_progress_bar") is not False:
        every.append(StepProgressBar())
    return L.Trainer(**args, logger=logger, default_root_dir=str(run_dir), callbacks=every), checkpoints
