"""What a run prints: each log line once, no library ads, and a progress bar counted in the
optimizer steps the run is budgeted in (``trainer.max_steps``), not in batches of one epoch."""

from __future__ import annotations

import logging
import warnings

from lightning.pytorch.callbacks import RichProgressBar

# Lightning's unconditional suggestions to install its cloud loggers/registries.
_ADS = ("💡 Tip:",)


class _DropAds(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(_ADS)


def quiet_libraries() -> None:
    """Idempotent. ``lightning`` gives its logger a console handler of its own *and* lets records
    propagate, so under Hydra (whose root handler prints too) every line printed twice: drop
    lightning's handler when the root logger has one. Drop its ads, and the deprecation warning
    that Lightning's own pytree code raises on every fit with this torch."""
    root = logging.getLogger()
    lightning = logging.getLogger("lightning")
    if root.handlers:
        for handler in list(lightning.handlers):
            if type(handler) is logging.StreamHandler:
                lightning.removeHandler(handler)
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero",
                 "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropAds) for f in logger.filters):
            logger.addFilter(_DropAds())
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated")
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # "Started monitoring ..." at every stage


class StepProgressBar(RichProgressBar):
    """Training progress as ``train  step/max_steps`` over the whole run (Lightning's default shows
    ``Epoch 8/-2`` and restarts at every epoch of a step-budgeted run). Falls back to Lightning's
    per-epoch bar when the run is budgeted in epochs."""

    def _by_steps(self) -> bool:
        return self.trainer.max_steps is not None and self.trainer.max_steps > 0

    @property
    def total_train_batches(self):
        return self.trainer.max_steps if self._by_steps() else super().total_train_batches

    def _get_train_description(self, current_epoch: int) -> str:
        return f"{'train':{len(self.validation_description)}}" if self._by_steps() else super()._get_train_description(current_epoch)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if self._by_steps() and self.train_progress_bar_id is not None:
            return  # one bar for the whole run: keep counting
        super().on_train_epoch_start(trainer, pl_module)
        if self._by_steps() and self.train_progress_bar_id is not None:  # resumed runs start part-way
            self._update(self.train_progress_bar_id, trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self._by_steps():
            return super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if not self.is_disabled and self.train_progress_bar_id is None:
            self._initialize_train_progress_bar_id()
        self._update(self.train_progress_bar_id, trainer.global_step)
        self._update_metrics(trainer, pl_module)
        self.refresh()

    def get_metrics(self, trainer, pl_module):
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)  # MLflow's run id tail: the closing summary gives the run's URL
        return items


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
