"""Several readers seen as one :class:`ReferringSource` (RefCOCO + RefCOCO+ + RefCOCOg, or an
image source next to a video source).

Ids are prefixed so that they stay unique across the parts: ``exp_id`` becomes
``<tag>-<exp_id>`` (RefCOCO/+/g sentence ids overlap between the three datasets, and the latent
cache keys masks by ``(video_id, exp_id)``) and, with ``prefix_videos``, ``video_id`` becomes
``<tag>-<video_id>``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import numpy as np

from rvosflow.data.formats.base import (
    DatasetFormatError,
    ExpressionRef,
    ReferringSource,
)


class ConcatSource(ReferringSource):
    name = "concat"

    def __init__(self, parts: Sequence[tuple[str, ReferringSource]], prefix_videos: bool = False):
        if not parts:
            raise ValueError("ConcatSource needs at least one source")
        self.parts = list(parts)
        self.root = Path(self.parts[0][1].root)
        self.has_masks = all(s.has_masks for _, s in self.parts)
        self.prefix_videos = prefix_videos
        self.expressions: list[ExpressionRef] = []
        self._origin: dict[ExpressionRef, tuple[ReferringSource, ExpressionRef]] = {}
        self._video_source: dict[str, tuple[ReferringSource, str]] = {}
        for tag, src in self.parts:
            for e in src.expressions:
                vid = f"{tag}-{e.video_id}" if prefix_videos else e.video_id
                new = dataclasses.replace(e, video_id=vid, exp_id=f"{tag}-{e.exp_id}")
                self.expressions.append(new)
                self._origin[new] = (src, e)
                self._video_source.setdefault(vid, (src, e.video_id))

    def __repr__(self) -> str:
        tags = ", ".join(t for t, _ in self.parts)
        return f"ConcatSource([{tags}], expressions={len(self.expressions)})"

    def annotation_files(self) -> list[Path]:
        return list(dict.fromkeys(p for _, s in self.parts for p in s.annotation_files()))

    def _resolve(self, video_id: str) -> tuple[ReferringSource, str]:
        try:
            return self._video_source[video_id]
        except KeyError as e:
            raise DatasetFormatError(f"{self.root}: unknown video {video_id!r} in {self!r}") from e

    def frame_paths(self, video_id: str) -> list[Path]:
        src, vid = self._resolve(video_id)
        return src.frame_paths(vid)

    def _check_targets(self, video_id: str, hw: tuple[int, int], exprs: list[ExpressionRef]):
        src, vid = self._resolve(video_id)
        return src._check_targets(vid, hw, [self._origin[e][1] for e in exprs])

    def _empty_problems(self):
        for _, src in self.parts:  # every part must contribute: an empty one is a split or dataset named wrongly
            yield from src._empty_problems()

    def load_frames(self, video_id: str, indices: Sequence[int] | None = None) -> np.ndarray:
        src, vid = self._resolve(video_id)
        return src.load_frames(vid, indices)

    def load_target(self, expr: ExpressionRef, indices: Sequence[int] | None = None) -> np.ndarray:
        src, orig = self._origin[expr]
        return src.load_target(orig, indices)
