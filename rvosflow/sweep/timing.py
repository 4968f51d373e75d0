"""The inference time of a trial's score: the wall time of its final validation loop (data loading,
the VAE encoding unless cached, the solver's steps, decoding, scoring) per video and per expression,
logged as ``infer/seconds_per_video`` and ``infer/seconds_per_expression`` to the trial's MLflow run.

From the loop's start to the end of its last batch: the overlay pictures and trajectory drawn at
the loop's end are left out. Only the scoring after (or instead of) training is timed, not the
validations during training.
"""

from __future__ import annotations

import time

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn


class InferenceTimer(Callback):
    def __init__(self):
        self.start: float | None = None
        self.end: float | None = None
        self.videos: set = set()
        self.expressions = 0

    def on_validation_epoch_start(self, trainer, module) -> None:
        if trainer.state.fn == TrainerFn.VALIDATING and not trainer.sanity_checking:
            self.start, self.end, self.videos, self.expressions = time.perf_counter(), None, set(), 0

    def on_validation_batch_end(self, trainer, module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self.start is None or trainer.state.fn != TrainerFn.VALIDATING:
            return
        if torch.cuda.is_available():
            torch.cuda.synchronize()  # the batch's kernels are done, not only queued
        self.end = time.perf_counter()
        self.videos.update(s["video_id"] for s in batch)
        self.expressions += len(batch)

    def on_validation_epoch_end(self, trainer, module) -> None:
        if trainer.state.fn == TrainerFn.VALIDATING and self.end is not None and trainer.logger is not None:
            trainer.logger.log_metrics(self.measures())

    def measures(self) -> dict[str, float]:
        """``{infer/seconds_per_video, infer/seconds_per_expression, infer/videos}``; empty before a scoring."""
        if self.start is None or self.end is None or not self.expressions:
            return {}
        seconds = self.end - self.start
        return {"infer/seconds_per_video": seconds / len(self.videos),
                "infer/seconds_per_expression": seconds / self.expressions, "infer/videos": float(len(self.videos))}
