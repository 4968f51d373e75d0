"""Lightning DataModules. One base class holds the loaders; each benchmark only says how to
open a split (its reader)."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import lightning as L
from torch.utils.data import DataLoader

from rvosflow.data.datasets import ClipDataset, VideoDataset, as_list
from rvosflow.data.transforms import model_size


class ReferringDataModule(L.LightningDataModule):
    """Training clips from ``train_split``; whole-video validation/prediction on ``val_split``.

    ``spatial_multiple`` (VAE spatial factor x DiT patch) comes from the loaded bundle.
    """

    def __init__(
        self,
        root: str | Path,
        train_split: str = "train",
        val_split: str = "valid_u",
        num_frames: int = 17,
        frame_sampler: str = "global",
        height: int = 480,
        max_width: int = 832,
        spatial_multiple: int = 16,
        batch_size: int = 1,
        val_batch_size: int = 1,
        num_workers: int = 0,
        val_limit: int | None = None,
    ):
        super().__init__()
        self.root = Path(root)
        self.train_split, self.val_split = train_split, val_split
        self.num_frames, self.frame_sampler = num_frames, frame_sampler
        self.size_fn = partial(model_size, target_height=height, max_width=max_width, multiple=spatial_multiple)
        self.batch_size, self.val_batch_size = batch_size, val_batch_size
        self.num_workers, self.val_limit = num_workers, val_limit
        self._sources: dict[str, object] = {}

    def make_source(self, split: str):
        raise NotImplementedError

    def source(self, split: str):
        if split not in self._sources:
            self._sources[split] = self.make_source(split)
        return self._sources[split]

    def _loader(self, dataset, shuffle: bool, collate=None, batch_size: int = 1) -> DataLoader:
        return DataLoader(
            dataset, batch_size=batch_size, shuffle=shuffle, num_workers=self.num_workers,
            collate_fn=collate, persistent_workers=self.num_workers > 0, drop_last=shuffle,
        )

    def train_dataloader(self) -> DataLoader:
        ds = ClipDataset(self.source(self.train_split), self.num_frames, self.frame_sampler, self.size_fn)
        return self._loader(ds, shuffle=True, batch_size=self.batch_size)

    def val_dataloader(self) -> DataLoader:
        ds = VideoDataset(self.source(self.val_split), self.size_fn, self.val_limit)
        return self._loader(ds, False, as_list, self.val_batch_size)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(VideoDataset(self.source(self.val_split), self.size_fn), False, as_list, self.val_batch_size)


class MevisDataModule(ReferringDataModule):
    """MeViS layout: ``<root>/<split>/{JPEGImages, meta_expressions.json, mask_dict.json}``."""

    def make_source(self, split: str):
        from rvosflow.data.formats.mevis import MevisSource

        return MevisSource(self.root / split)


# data.format -> DataModule class (the reader behind it opens the real on-disk layout).
DATAMODULES: dict[str, type[ReferringDataModule]] = {"mevis": MevisDataModule}
