"""Ref-YouTube-VOS: ``<split>/JPEGImages/<vid>/<frame>.jpg``, ``<split>/Annotations/<vid>/<frame>.png``
(palette PNG, pixel = object id, 0 = background), ``<split>/meta.json`` (objects per video) and
``meta_expressions/<split>/meta_expressions.json`` = ``{"videos": {vid: {"expressions": {exp_id:
{"exp", "obj_id": "1"}}, "frames": [..]}}}`` -- one object per expression, ``obj_id`` a string.
The real valid split has no Annotations (server-scored): the reader then has ``has_masks=False``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

from rvosflow.data.formats.base import (
    KINDS_FILE,
    DatasetFormatError,
    ExpressionRef,
    ReferringSource,
    header_size,
    id_map,
    iter_meta_videos,
    read_index_png,
    read_json,
    read_kinds,
    require,
    stack_frames,
    write_index_png,
    write_jpeg,
    write_json,
    write_kinds,
)
from rvosflow.data.schema import Video


def write_video_files(split_root: Path, v: Video, with_annotations: bool) -> None:
    for t, name in enumerate(v.frame_names):
        write_jpeg(split_root / "JPEGImages" / v.video_id / f"{name}.jpg", v.frames[t])
        if with_annotations:
            write_index_png(split_root / "Annotations" / v.video_id / f"{name}.png", id_map(v.masks, t))


def objects_meta(v: Video) -> dict:
    cats = [o.get("shape", "object") for o in v.meta.get("objects", [])] if v.meta else []
    return {
        str(k): {"category": cats[k - 1] if k - 1 < len(cats) else "object",
                 "frames": [n for t, n in enumerate(v.frame_names) if v.masks[k][t].any()]}
        for k in sorted(v.masks)
    }


def write_ytvos(root: Path, split: str, videos: Iterable[Video], with_annotations: bool = True) -> None:
    """Single-object expressions only (Ref-YTVOS has one object per expression)."""
    entries = []
    for v in videos:
        single = [e for e in v.expressions if len(e.obj_ids) == 1]
        exps = {e.exp_id: {"exp": e.text, "obj_id": str(e.obj_ids[0])} for e in single}
        if exps:
            entries.append((v, exps, {e.exp_id: e.kind for e in single if e.kind}))
    write_ytvos_layout(root, split, entries, with_annotations)


def write_ytvos_layout(root: Path, split: str, entries: Iterable[tuple[Video, dict, dict]], with_annotations: bool) -> None:
    """The Ref-YTVOS layout (also Ref-DAVIS's): frames, palette annotations and the meta files for
    ``(video, {exp_id: {"exp", "obj_id"}}, {exp_id: kind})`` triples (kinds go to the sidecar)."""
    root = Path(root)
    meta, objects, kinds = {}, {}, {}
    for v, exps, exp_kinds in entries:
        write_video_files(root / split, v, with_annotations)
        meta[v.video_id] = {"expressions": exps, "frames": list(v.frame_names)}
        objects[v.video_id] = {"objects": objects_meta(v)}
        kinds[v.video_id] = exp_kinds
    write_json(root / "meta_expressions" / split / "meta_expressions.json", {"videos": meta})
    write_kinds(root / "meta_expressions" / split, kinds)
    write_json(root / split / "meta.json", {"videos": objects})


class RefYTVOSSource(ReferringSource):
    name = "ref_ytvos"

    def __init__(self, root, split: str = "train"):
        self.root = Path(root)
        self.split = split
        require(self.root, "Ref-YouTube-VOS root")
        meta_path = self.root / "meta_expressions" / split / "meta_expressions.json"
        self._meta_path = self.index = meta_path
        meta = read_json(meta_path)
        self.has_masks = (self.root / split / "Annotations").is_dir()
        objects_path = self.root / split / "meta.json"
        self._objects = read_json(objects_path)["videos"] if objects_path.exists() else None
        self._frames: dict[str, list[str]] = {}
        self.expressions = []
        kinds = read_kinds(meta_path.parent)
        for vid, frames, exps in iter_meta_videos(meta, meta_path):
            self._frames[vid] = frames
            for pos, (exp_id, e) in enumerate(exps.items()):
                try:
                    text, obj_id = str(e["exp"]), int(e["obj_id"])
                except (KeyError, TypeError, ValueError) as err:
                    raise DatasetFormatError(f"{meta_path}: video {vid!r} expression {exp_id!r} is malformed ({err!r})") from err
                if self._objects is not None:
                    known = self._objects.get(vid, {}).get("objects", {})
                    if str(obj_id) not in known:
                        raise DatasetFormatError(
                            f"{objects_path}: obj_id {str(obj_id)!r} of video {vid!r} expression {exp_id!r} not found")
                self.expressions.append(
                    ExpressionRef(vid, str(exp_id), text, (obj_id,), tuple(frames), self._annotator(pos, len(exps), vid),
                                  kinds.get((vid, str(exp_id)), "")))

    def _annotator(self, position: int, count: int, video_id: str) -> int | None:
        return None

    def _frame_dir(self, video_id: str) -> Path:
        return self.root / self.split / "JPEGImages" / video_id

    def _frame_names(self, video_id: str) -> list[str]:
        try:
            return self._frames[video_id]
        except KeyError as e:
            raise DatasetFormatError(f"{self._meta_path}: unknown video {video_id!r}") from e

    def _check_targets(self, video_id: str, hw: tuple[int, int], exprs: list[ExpressionRef]):
        d = self.root / self.split / "Annotations" / video_id
        for n in self._frames[video_id]:
            problem, size = header_size(d / f"{n}.png", "palette annotation")
            if problem or size != hw:
                yield problem or f"{d / f'{n}.png'}: expected {hw[1]}x{hw[0]} (the frame's), found {size[1]}x{size[0]}"

    def annotation_files(self) -> list[Path]:
        """The meta files, and the palette PNG of every frame of the referenced videos."""
        meta = [self._meta_path, self._meta_path.parent / KINDS_FILE, self.root / self.split / "meta.json"]
        out = [p for p in meta if p.exists()]
        if self.has_masks:
            d = self.root / self.split / "Annotations"
            out += [d / v / f"{n}.png" for v in self.video_ids() for n in self._frames[v]]
        return out

    def _load_target_frames(self, expr: ExpressionRef, names: list[str]) -> np.ndarray:
        d = self.root / self.split / "Annotations" / expr.video_id
        paths = [d / f"{n}.png" for n in names]
        ids = stack_frames([read_index_png(p) for p in paths], paths)
        return np.isin(ids, np.asarray(expr.obj_ids, dtype=ids.dtype))
