"""Lightning DataModules. One base class holds the loaders; each benchmark only says how to
open a split (its reader)."""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path
from typing import Sequence

import lightning as L
import torch
from torch.utils.data import ConcatDataset, DataLoader, Sampler

from rvosflow.data.augment import make_augment, swap_left_right
from rvosflow.data.datasets import ClipDataset, VideoDataset, as_list
from rvosflow.data.formats.base import first_videos
from rvosflow.data.formats.concat import ConcatSource
from rvosflow.data.formats.davis import RefDAVISSource
from rvosflow.data.formats.mevis import MevisSource
from rvosflow.data.formats.refcoco import RefCOCOSource
from rvosflow.data.formats.ytvos import RefYTVOSSource
from rvosflow.data.transforms import model_size
from rvosflow.errors import ConfigError


class ReferringDataModule(L.LightningDataModule):
    """Training clips from ``train_split``; whole-video validation/prediction on ``val_split``.

    ``data`` is the run's ``data.*`` settings (``rvosflow.schema.Data`` or its format's subclass;
    anything with those attributes); ``spatial_multiple`` is what frame sides are floored to.
    """

    def __init__(self, data, spatial_multiple: int = 16, seed: int = 0):
        super().__init__()
        self.options = data
        self.root = Path(data.root)
        self.train_split, self.val_split = data.train_split, data.val_split
        self.predict_split = data.predict_split or data.val_split
        self.eval_videos = data.eval_videos
        self.num_frames, self.frame_sampler = data.num_frames, data.frame_sampler
        self.augment = make_augment(data.augment, data.height)  # None: the plain resize
        self.resample_empty = data.empty_clips == "resample"
        self.size_fn = partial(model_size, target_height=data.height, max_width=data.max_width, multiple=spatial_multiple)
        self.batch_size, self.val_batch_size = data.batch_size, data.val_batch_size
        self.num_workers, self.val_limit = data.num_workers, data.val_limit
        self.seed = seed
        self._sources: dict[str, object] = {}

    def make_source(self, split: str):
        raise NotImplementedError

    def source(self, split: str):
        if split not in self._sources:
            self._sources[split] = self.make_source(split)
        return self._sources[split]

    def eval_source(self, split: str):
        """The split scored/predicted: all of it, or its first ``eval_videos`` videos (quick runs;
        ``rvosflow.evaluate --videos N`` scores the same subset)."""
        return first_videos(self.source(split), self.eval_videos)

    def training_sources(self) -> list:
        """The sources training clips come from (checked at set-up: :meth:`train_source`)."""
        return [self.train_source()]

    def scored_sources(self, mode: str) -> list:
        """The sources a run in ``mode`` (train | validate | predict) scores or predicts."""
        return [self.eval_source(self.predict_split if mode == "predict" else self.val_split)]

    def sources_read(self, mode: str) -> list:
        """The sources a run in ``mode`` reads (every file of them is checked at set-up)."""
        return [*(self.training_sources() if mode == "train" else []), *self.scored_sources(mode)]

    def train_source(self):
        """The training split, holding at least one full batch: the loader drops the last partial
        one, so fewer expressions than ``batch_size`` would train nothing and score the start."""
        src = self.source(self.train_split)
        if src.expressions and len(src.expressions) < self.batch_size:  # none: the data check names the file
            raise ConfigError(f"data.batch_size: expected at most {len(src.expressions)}, the expressions in "
                              f"data.train_split={self.train_split!r} ({self.root}), got {self.batch_size}: "
                              "no full batch, nothing would be trained")
        return src

    def training_texts(self) -> list[str]:
        """The training captions as written, and with ``data.augment`` their flipped versions."""
        texts = [e.text for s in self.training_sources() for e in s.expressions]
        return texts + ([swap_left_right(t) for t in texts] if self.augment is not None else [])

    def clip_dataset(self, source, num_frames: int, frame_sampler: str) -> ClipDataset:
        """Training clips of ``source`` with this run's augmentation and empty-clip rule."""
        return ClipDataset(source, num_frames, frame_sampler, self.size_fn, self.augment, self.resample_empty)

    def _loader(self, dataset, shuffle: bool, collate=None, batch_size: int = 1) -> DataLoader:
        return DataLoader(
            dataset, batch_size=batch_size, shuffle=shuffle, num_workers=self.num_workers,
            collate_fn=collate, persistent_workers=self.num_workers > 0, drop_last=shuffle,
        )

    def train_dataloader(self) -> DataLoader:
        ds = self.clip_dataset(self.train_source(), self.num_frames, self.frame_sampler)
        return self._loader(ds, shuffle=True, batch_size=self.batch_size)

    def val_dataloader(self) -> DataLoader:
        ds = VideoDataset(self.eval_source(self.val_split), self.size_fn, self.val_limit)
        return self._loader(ds, False, as_list, self.val_batch_size)

    def predict_dataloader(self) -> DataLoader:
        """Whole videos of ``predict_split`` (any split, with or without masks)."""
        ds = VideoDataset(self.eval_source(self.predict_split), self.size_fn, with_target=False)
        return self._loader(ds, False, as_list, self.val_batch_size)


class MevisDataModule(ReferringDataModule):
    """MeViS layout: ``<root>/<split>/{JPEGImages, meta_expressions.json, mask_dict.json}``."""

    def make_source(self, split: str):
        return MevisSource(self.root / split)


class RefYTVOSDataModule(ReferringDataModule):
    """Ref-YouTube-VOS: ``<root>/{train,valid}/...`` and ``<root>/meta_expressions/<split>/``.
    The real ``valid`` split has no masks (server-scored): train with validation off and score it
    with ``mode=predict`` + ``python -m rvosflow.evaluate --benchmark ref_ytvos``."""

    def make_source(self, split: str):
        return RefYTVOSSource(self.root, split)


class RefDAVISDataModule(ReferringDataModule):
    """Ref-DAVIS17 in the Ref-YTVOS layout (zero-shot: ``valid`` only). ``annotators`` keeps some
    of the four annotator sets (0 annot1 first-frame, 1 annot1 full-video, 2 annot2 first-frame,
    3 annot2 full-video); in-training validation averages J&F over the kept expressions, the
    official per-set DAVIS scores come from ``python -m rvosflow.evaluate --benchmark ref_davis``."""

    def __init__(self, data, spatial_multiple: int = 16, seed: int = 0):
        super().__init__(data, spatial_multiple, seed)
        self.annotators = tuple(int(a) for a in data.annotators)
        if not self.annotators or any(a not in (0, 1, 2, 3) for a in self.annotators):
            raise ConfigError(f"data.annotators: expected a non-empty subset of [0, 1, 2, 3], got {list(data.annotators)}")

    def make_source(self, split: str):
        src = RefDAVISSource(self.root, split)
        if set(self.annotators) != {0, 1, 2, 3}:
            src.expressions = [e for e in src.expressions if e.annotator in self.annotators]
        return src


def refcoco_source(root, datasets: Sequence[str], split: str, images=None):
    """RefCOCO/+/g (one or several, concatenated): every image a one-frame clip. ``exp_id`` is
    ``<dataset>-<sent_id>`` (sentence ids overlap between the three datasets)."""
    if isinstance(datasets, str):
        datasets = [datasets]
    if not datasets:
        raise ConfigError("data.datasets: name at least one of refcoco, refcoco+, refcocog")
    return ConcatSource([(d, RefCOCOSource(root, d, split, images)) for d in datasets])


class RefCOCODataModule(ReferringDataModule):
    """RefCOCO, RefCOCO+ and RefCOCOg alone or together (``datasets``), polygons or RLE; each image
    is a one-frame clip (``num_frames: 1``; a larger ``num_frames`` replicates the image into a
    static clip). ``images`` is the COCO ``train2014`` folder (default ``<root>/images/train2014``)."""

    def __init__(self, data, spatial_multiple: int = 16, seed: int = 0):
        super().__init__(data, spatial_multiple, seed)
        self.datasets = [data.datasets] if isinstance(data.datasets, str) else list(data.datasets)
        self.images = data.images

    def make_source(self, split: str):
        return refcoco_source(self.root, self.datasets, split, self.images)


class MixedBatchSampler(Sampler[list[int]]):
    """Batch-level image/video mixing over ``ConcatDataset([images, videos])``: every batch is all
    images (with probability ``image_ratio``) or all video clips, so shapes inside a batch agree
    (a 1-frame image clip and a 17-frame video clip cannot be stacked, and the Wan VAE encodes
    them to 1 and 5 latent frames). Items of each part are drawn without replacement from a fresh
    permutation per pass. ``len`` = video batches per epoch / (1 - ratio) (image batches when the
    ratio is 1). Deterministic for a given seed, epoch and rank; under DDP every rank draws its
    own stream (set ``trainer.use_distributed_sampler=false``)."""

    def __init__(self, num_images: int, num_videos: int, batch_size: int, image_ratio: float, seed: int = 0):
        if not 0 <= image_ratio <= 1:
            raise ConfigError(f"data.image_ratio: expected a number in [0, 1], got {image_ratio}")
        if (image_ratio > 0 and num_images < batch_size) or (image_ratio < 1 and num_videos < batch_size):
            raise ConfigError(f"mixed data: need at least batch_size={batch_size} images and video clips, "
                             f"got {num_images} and {num_videos}")
        self.n_img, self.n_vid, self.bs, self.ratio, self.seed = num_images, num_videos, batch_size, image_ratio, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        if self.ratio >= 1:
            return self.n_img // self.bs
        return max(1, math.ceil((self.n_vid // self.bs) / (1 - self.ratio)))

    def __iter__(self):
        rank = torch.distributed.get_rank() if torch.distributed.is_available() and torch.distributed.is_initialized() else 0
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch * 7919 + rank)
        self.epoch += 1
        pools = {True: [], False: []}

        def take(image: bool) -> list[int]:
            pool = pools[image]
            if len(pool) < self.bs:
                n = self.n_img if image else self.n_vid
                pool.extend(torch.randperm(n, generator=g).tolist())
            batch, pools[image] = pool[: self.bs], pool[self.bs:]
            return [i if image else self.n_img + i for i in batch]

        for _ in range(len(self)):
            yield take(bool(torch.rand((), generator=g) < self.ratio))


class MixedDataModule(ReferringDataModule):
    """Joint image/video training: RefCOCO/+/g images (``image_root``, ``image_datasets``) mixed
    into the clips of a video benchmark (``video_format`` at ``root``) at the batch level with
    ``image_ratio`` (see :class:`MixedBatchSampler`). Images become ``image_frames``-frame clips
    (1 = one latent frame; 1 + 4k replicates the image). Validation and prediction use the video
    benchmark's splits. ``image_batch_size`` (default ``batch_size``) lets image batches be larger,
    as they are ~num_frames times cheaper."""

    def __init__(self, data, spatial_multiple: int = 16, seed: int = 0):
        super().__init__(data, spatial_multiple, seed)
        if data.video_format not in ("mevis", "ref_ytvos"):
            raise ConfigError(f"data.video_format: expected a video benchmark, got {data.video_format!r}")
        if data.image_root is None:
            raise ConfigError("data.image_root: the RefCOCO root is required for mixed training")
        self.video = DATAMODULES[data.video_format](data, spatial_multiple, seed)
        self.image_root, self.image_datasets, self.image_split = Path(data.image_root), data.image_datasets, data.image_split
        self.images, self.image_ratio, self.image_frames = data.images, data.image_ratio, data.image_frames

    def make_source(self, split: str):
        return self.video.make_source(split)

    def image_source(self):
        if "__images__" not in self._sources:
            # Video ids prefixed too, so image ids never collide with the video benchmark's.
            inner = refcoco_source(self.image_root, self.image_datasets, self.image_split, self.images)
            self._sources["__images__"] = ConcatSource([("coco", inner)], prefix_videos=True)
        return self._sources["__images__"]

    def training_sources(self) -> list:
        return [*super().training_sources(), self.image_source()]

    def train_source(self):
        # all-image batches (image_ratio 1) need no video clip; MixedBatchSampler checks the images
        return super().train_source() if self.image_ratio < 1 else self.source(self.train_split)

    def train_dataloader(self) -> DataLoader:
        images = self.clip_dataset(self.image_source(), self.image_frames, "first")
        videos = self.clip_dataset(self.train_source(), self.num_frames, self.frame_sampler)
        sampler = MixedBatchSampler(len(images), len(videos), self.batch_size, self.image_ratio, self.seed)
        return DataLoader(ConcatDataset([images, videos]), batch_sampler=sampler, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)


# data.format -> DataModule class (the reader behind it opens the real on-disk layout).
DATAMODULES: dict[str, type[ReferringDataModule]] = {
    "mevis": MevisDataModule,
    "ref_ytvos": RefYTVOSDataModule,
    "ref_davis": RefDAVISDataModule,
    "refcoco": RefCOCODataModule,
    "mixed": MixedDataModule,
}


def from_config(data, spatial_multiple: int, seed: int = 0) -> ReferringDataModule:
    """The DataModule of ``data.format`` built from the run's ``data.*`` settings."""
    return DATAMODULES[data.format](data, spatial_multiple, seed)
