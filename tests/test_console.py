"""A quiet terminal: each log line once, no ads, a progress bar counted in the run's steps."""

import io
import logging

import lightning as L
import torch

from rvosflow.console import StepProgressBar, quiet_libraries


def test_lightning_lines_print_once_and_its_ads_not_at_all():
    from lightning.pytorch.utilities.rank_zero import rank_zero_info

    root = logging.getLogger()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)  # what Hydra installs on the root logger
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.INFO)
    try:
        quiet_libraries()
        quiet_libraries()  # idempotent
        rank_zero_info("GPU available: False, used: False")
        rank_zero_info("💡 Tip: For seamless cloud logging ... try installing [litlogger]")
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    assert stream.getvalue().splitlines() == ["GPU available: False, used: False"]
    assert not logging.getLogger("lightning").handlers


class _Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):
        return (self.w - batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(4, 1)), batch_size=2)


def test_the_progress_bar_counts_the_runs_steps_across_epochs(tmp_path):
    bar = StepProgressBar()
    trainer = L.Trainer(max_steps=5, callbacks=[bar], logger=False, enable_checkpointing=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(_Tiny())  # 2 batches per epoch: 3 epochs
    task = bar.progress.tasks[bar.train_progress_bar_id]
    assert (task.completed, task.total) == (5, 5)
    assert task.description.strip() == "train"
