"""The ``lightning.Trainer`` of a run: the ``trainer.*`` arguments as Lightning takes them (FSDP
built from ``fsdp.*``), the run's folder, its MLflow logger, and the callbacks every run has --
checkpoints a rerun resumes from, a stop at the next batch when a signal arrives, the training
curves, overlays and trajectory pictures, the step progress bar.

One step convention: every metric and picture of a run is logged at ``trainer.global_step``, the
optimizer steps done (Lightning would put training metrics at its batch counter, validation one
lower, and add an ``epoch`` metric to each)."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import matplotlib.pyplot as plt
import torch
from diffusers.models.transformers.transformer_wan import WanTransformerBlock
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch.distributed.fsdp import MixedPrecision

from rvosflow import atomic, signals
from rvosflow.checkpoints import last_checkpoint
from rvosflow.console import StepProgressBar
from rvosflow.models.loader import resolve_dtype
from rvosflow.signals import Stopped
from rvosflow.visualize import figure_image, overlay_figure, trajectory_figure


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


class TrainCurves(Callback):
    """``train/loss`` (the mean over the batches of each logging interval), ``train/lr`` (what the
    interval's last optimizer step used) and ``train/grad_norm`` (the mean L2 norm of all gradients
    per optimizer step, before clipping), logged every ``trainer.log_every_n_steps`` optimizer steps
    and at the end of training; and the step of the validation metrics (``val/*``, ``final/*``)."""

    def __init__(self):
        self._losses: list[torch.Tensor] = []
        self._norms: list[torch.Tensor] = []
        self._lr: float | None = None
        self._logged_step = 0

    def on_train_start(self, trainer, pl_module) -> None:
        self._losses, self._norms = [], []
        self._logged_step = trainer.global_step  # a resumed run: its first interval starts here

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if grads:
            squares = torch.stack(torch._foreach_norm(grads)).float().square().sum()
            if isinstance(trainer.strategy, FSDPStrategy):  # each rank holds a shard of the gradients
                torch.distributed.all_reduce(squares)
            self._norms.append(squares.sqrt().detach())  # stays on the device: no sync per step
        self._lr = float(optimizer.param_groups[0]["lr"])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if outputs is not None and outputs.get("loss") is not None:
            # Lightning hands the loss divided by the accumulation count (what backward saw)
            self._losses.append(outputs["loss"].detach() * trainer.accumulate_grad_batches)
        step = trainer.global_step
        if step != self._logged_step and step % trainer.log_every_n_steps == 0:
            self._flush(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        if self._losses:
            self._flush(trainer)

    def _flush(self, trainer) -> None:
        metrics = {}
        if self._losses:
            metrics["train/loss"] = torch.stack(self._losses).float().mean().item()
        if self._norms:
            metrics["train/grad_norm"] = torch.stack(self._norms).mean().item()
        if self._lr is not None:
            metrics["train/lr"] = self._lr
        if metrics and trainer.logger is not None:
            trainer.logger.log_metrics(metrics, step=trainer.global_step)
        self._losses, self._norms = [], []
        self._logged_step = trainer.global_step

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        # A logged "step" is the step Lightning logs the epoch's metrics at (and it adds no "epoch" then).
        if not trainer.sanity_checking:
            pl_module.log("step", float(trainer.global_step))


class OverlayLogger(Callback):
    """Logs each validation's overlays (one expression per video, with its J&F) and, for the
    multistep paradigms, the flow's trajectory for the first of them: as MLflow images by step
    (``val/overlays``, ``final/trajectory`` ...: the run's charts, with a step slider) and as PNG files
    (``overlays/val_step000002.png``, ``trajectory/final.png`` ...)."""

    def on_validation_epoch_end(self, trainer, module) -> None:
        if not module.overlays or not isinstance(trainer.logger, MLFlowLogger) or trainer.sanity_checking:
            return
        stage = module.metric_prefix if module.metric_prefix != "val" else f"val_step{trainer.global_step:06d}"
        self._log(trainer, overlay_figure(module.overlays), "overlays", stage, module.metric_prefix)
        trajectory = module.trajectory(module.overlays[0])
        if trajectory is not None:
            self._log(trainer, trajectory_figure(trajectory), "trajectory", stage, module.metric_prefix)

    @staticmethod
    def _log(trainer, fig, what: str, stage: str, prefix: str) -> None:
        picture = figure_image(fig)
        plt.close(fig)
        client, run_id = trainer.logger.experiment, trainer.logger.run_id
        client.log_image(run_id, picture, key=f"{prefix}/{what}", step=trainer.global_step)
        client.log_image(run_id, picture, artifact_file=f"{what}/{stage}.png")


class Checkpoints(Callback):
    """``<run dir>/checkpoints/last.ckpt``, written atomically (a kill mid-write leaves the previous
    one) at every in-training validation, every ``checkpoint.every_n_steps`` optimizer steps when
    set, at the end of training, and when a signal stops the run (:mod:`rvosflow.signals`): what a
    rerun with ``ckpt_path=`` resumes from."""

    def __init__(self, run_dir: Path, every_n_steps: int | None):
        self.path = last_checkpoint(run_dir)
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


class StreamingCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` serialises the whole checkpoint into an in-memory buffer
    before writing it: with the 1.3B DiT, its EMA and AdamW's moments that is 14 GB of host memory
    on top of the live training state (what first failed ``scripts/bench_real_cpu.py`` on 24 GB).
    Local saves here stream ``torch.save`` into a temporary file renamed into place
    (:func:`rvosflow.atomic.torch_save`); remote paths and ``storage_options`` keep Lightning's."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        if storage_options is not None or not isinstance(get_filesystem(path), LocalFileSystem):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic.torch_save(checkpoint, path)


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
    args = {**cfg.trainer, "strategy": make_strategy(cfg), "enable_checkpointing": False,  # Checkpoints writes them
            "plugins": [StreamingCheckpointIO()]}  # ... without an in-memory copy of the file
    if not validate:
        args["limit_val_batches"] = 0
    checkpoints = Checkpoints(run_dir, cfg.checkpoint.every_n_steps)
    every = [TrainCurves(), OverlayLogger(), checkpoints, SafeStop(), *(callbacks or [])]
    if cfg.trainer.get("enable_progress_bar") is not False:
        every.append(StepProgressBar())
    return L.Trainer(**args, logger=logger, default_root_dir=str(run_dir), callbacks=every), checkpoints
