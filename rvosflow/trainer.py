"""The ``lightning.Trainer`` of a run: the ``trainer.*`` arguments as Lightning takes them (FSDP
built from ``fsdp.*``), the run's folder, its MLflow logger, and the callbacks every run has --
checkpoints, overlays and trajectory pictures, the step progress bar."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import matplotlib.pyplot as plt
import torch
from diffusers.models.transformers.transformer_wan import WanTransformerBlock
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.strategies import FSDPStrategy
from torch.distributed.fsdp import MixedPrecision

from rvosflow.console import StepProgressBar
from rvosflow.models.loader import resolve_dtype
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


def make_trainer(cfg, run_dir: Path, logger, callbacks: list | None = None, validate: bool = True) -> tuple[L.Trainer, ModelCheckpoint]:
    """The run's Trainer and its checkpoint callback (``last.ckpt`` under ``<run_dir>/checkpoints``).
    ``validate=False`` turns validation off (a split without masks)."""
    torch.set_float32_matmul_precision("high")
    args = {**cfg.trainer, "strategy": make_strategy(cfg)}
    if not validate:
        args["limit_val_batches"] = 0
    checkpointing = ModelCheckpoint(dirpath=Path(run_dir) / "checkpoints", save_last=True, save_top_k=0)
    every = [OverlayLogger(), checkpointing, *(callbacks or [])]
    if cfg.trainer.get("enable_progress_bar") is not False:
        every.append(StepProgressBar())
    return L.Trainer(**args, logger=logger, default_root_dir=str(run_dir), callbacks=every), checkpointing
