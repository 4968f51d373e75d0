"""MeViS: ``<split>/JPEGImages/<vid>/<frame>.jpg``, ``meta_expressions.json``, ``mask_dict.json``.

``meta_expressions.json`` = ``{"videos": {vid: {"expressions": {exp_id: {"exp", "obj_id": [..],
"anno_id": [..]}}, "frames": [..]}}}``; ``mask_dict.json`` = ``{str(anno_id): [COCO RLE | null per
frame]}``. One expression may refer to several objects (target = union). The real ``valid`` split
has no ``mask_dict.json`` (server-scored): the reader then has ``has_masks=False``.
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
    image_size,
    iter_meta_videos,
    read_json,
    read_kinds,
    require,
    rle_decode,
    rle_encode,
    rle_problems,
    write_jpeg,
    write_json,
    write_kinds,
)
from rvosflow.data.schema import Video


def write_mevis(split_dir: Path, videos: Iterable[Video], with_masks: bool = True, captions: bool = True) -> None:
    split_dir = Path(split_dir)
    meta: dict = {}
    mask_dict: dict = {}
    caps: dict = {}
    kinds: dict = {}
    next_anno = 0
    for v in videos:
        for t, name in enumerate(v.frame_names):
            write_jpeg(split_dir / "JPEGImages" / v.video_id / f"{name}.jpg", v.frames[t])
        anno_of = {}
        for obj_id in sorted(v.masks):
            anno_of[obj_id] = next_anno
            mask_dict[str(next_anno)] = [rle_encode(v.masks[obj_id][t]) for t in range(len(v.frame_names))]
            next_anno += 1
        exps = {
            e.exp_id: {"exp": e.text, "obj_id": list(e.obj_ids), "anno_id": [anno_of[o] for o in e.obj_ids]}
            for e in v.expressions
        }
        meta[v.video_id] = {"expressions": exps, "frames": list(v.frame_names)}
        caps[v.video_id] = v.caption
        kinds[v.video_id] = {e.exp_id: e.kind for e in v.expressions if e.kind}
    write_json(split_dir / "meta_expressions.json", {"videos": meta})
    write_kinds(split_dir, kinds)
    if with_masks:
        write_json(split_dir / "mask_dict.json", mask_dict)
    if captions:
        write_json(split_dir / "captions.json", caps)


class MevisSource(ReferringSource):
    name = "mevis"

    def __init__(self, split_dir):
        self.root = Path(split_dir)
        require(self.root, "MeViS split directory")
        meta_path = self.index = self.root / "meta_expressions.json"
        meta = read_json(meta_path)
        mask_path = self.root / "mask_dict.json"
        self.has_masks = mask_path.exists()
        self._mask_dict = read_json(mask_path) if self.has_masks else None
        if self.has_masks and not isinstance(self._mask_dict, dict):
            raise DatasetFormatError(f"{mask_path}: expected an object mapping anno_id to RLE lists")
        self._frames: dict[str, list[str]] = {}
        self._annos: dict[tuple[str, str], tuple[str, ...]] = {}
        self.expressions = []
        kinds = read_kinds(self.root)
        for vid, frames, exps in iter_meta_videos(meta, meta_path):
            self._frames[vid] = frames
            for exp_id, e in exps.items():
                try:
                    text = e["exp"]
                    obj_ids = tuple(int(o) for o in (e["obj_id"] if isinstance(e["obj_id"], list) else [e["obj_id"]]))
                except (KeyError, TypeError, ValueError) as err:
                    raise DatasetFormatError(f"{meta_path}: video {vid!r} expression {exp_id!r} is malformed ({err!r})") from err
                if self.has_masks:
                    annos = tuple(str(a) for a in e.get("anno_id", []))
                    if len(annos) != len(obj_ids):
                        raise DatasetFormatError(
                            f"{meta_path}: video {vid!r} expression {exp_id!r} has {len(annos)} anno_id for {len(obj_ids)} obj_id")
                    for a in annos:
                        if a not in self._mask_dict:
                            raise DatasetFormatError(
                                f"mask_dict.json: anno_id {a!r} of video {vid!r} expression {exp_id!r} not found ({mask_path})")
                        if len(self._mask_dict[a]) != len(frames):
                            raise DatasetFormatError(
                                f"{mask_path}: anno_id {a!r} has {len(self._mask_dict[a])} frames, video {vid!r} has {len(frames)}")
                    self._annos[(vid, str(exp_id))] = annos
                self.expressions.append(ExpressionRef(vid, str(exp_id), str(text), obj_ids, tuple(frames),
                                                      kind=kinds.get((vid, str(exp_id)), "")))

    def _frame_dir(self, video_id: str) -> Path:
        return self.root / "JPEGImages" / video_id

    def _frame_names(self, video_id: str) -> list[str]:
        try:
            return self._frames[video_id]
        except KeyError as e:
            raise DatasetFormatError(f"{self.root / 'meta_expressions.json'}: unknown video {video_id!r}") from e

    def _load_target_frames(self, expr: ExpressionRef, names: list[str]) -> np.ndarray:
        all_names = self._frames[expr.video_id]
        index = {n: i for i, n in enumerate(all_names)}
        hw = image_size(self._frame_dir(expr.video_id) / f"{all_names[0]}.jpg")
        out = np.zeros((len(names), *hw), dtype=bool)
        for a in self._annos[(expr.video_id, expr.exp_id)]:
            rles = self._mask_dict[a]
            for j, n in enumerate(names):
                where = f"{self.root / 'mask_dict.json'}: anno_id {a!r} frame {n!r} (video {expr.video_id!r})"
                out[j] |= rle_decode(rles[index[n]], hw, where)
        return out

    def _check_targets(self, video_id: str, hw: tuple[int, int], exprs: list[ExpressionRef]):
        names = self._frames[video_id]
        annos = dict.fromkeys(a for e in exprs for a in self._annos[(video_id, e.exp_id)])
        path = self.root / "mask_dict.json"
        # one batch per video: its RLE strings are decoded together (rle_string_totals)
        yield from rle_problems((rle, hw, f"{path}: anno_id {a!r} frame {n!r} (video {video_id!r})")
                                for a in annos for n, rle in zip(names, self._mask_dict[a]))

    def annotation_files(self) -> list[Path]:
        names = ("meta_expressions.json", "mask_dict.json", KINDS_FILE, "captions.json")
        return [self.root / n for n in names if (self.root / n).exists()]

    def captions(self) -> dict[str, str]:
        """The synthetic sidecar ``captions.json`` ({vid: caption}); empty for real MeViS."""
        p = self.root / "captions.json"
        return read_json(p) if p.exists() else {}
