"""RefCOCO/+/g as read by the REFER API: ``<dataset>/refs(<splitBy>).p``, ``<dataset>/instances.json``
and COCO ``train2014`` images; every image is a one-frame clip.

``refs(unc).p`` (``umd`` for RefCOCOg) is a pickle of a list of dicts ``{ref_id, ann_id, image_id,
split, sentences: [{tokens, raw, sent_id, sent}], sent_ids, category_id, file_name}``. It is read
with an unpickler that refuses every global, so a refs file that carries code is rejected with a
:class:`DatasetFormatError` instead of being executed. Segmentations are COCO polygons (or RLE),
decoded with pycocotools.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Iterable

import numpy as np
from pycocotools import mask as mask_utils

from rvosflow.data.formats.base import (
    DatasetFormatError,
    ExpressionRef,
    ReferringSource,
    read_json,
    require,
    rle_decode,
    rle_encode,
    rle_problems,
    write_jpeg,
    write_json,
)

SPLIT_BY = {"refcoco": "unc", "refcoco+": "unc", "refcocog": "umd"}


def coco_file_name(image_id: int) -> str:
    return f"COCO_train2014_{image_id:012d}.jpg"


class _DataOnlyUnpickler(pickle.Unpickler):
    def __init__(self, file, path: Path):
        super().__init__(file)
        self._path = path

    def find_class(self, module, name):
        raise DatasetFormatError(
            f"{self._path}: refuses to load global '{module}.{name}': a refs file must hold plain data "
            "(lists, dicts, strings, numbers), not code")


def load_refs(path: Path) -> list[dict]:
    require(path)
    data = path.read_bytes()
    try:
        refs = _DataOnlyUnpickler(io.BytesIO(data), path).load()
    except DatasetFormatError:
        raise
    except Exception as e:  # noqa: BLE001 (any unpickling failure is a format error)
        raise DatasetFormatError(f"{path}: not a readable refs pickle ({e!r})") from e
    if not isinstance(refs, list):
        raise DatasetFormatError(f"{path}: expected a list of refs, got {type(refs).__name__}")
    return refs


def mask_to_polygons(mask: np.ndarray) -> list[list[float]]:
    """Exact polygon cover of a mask: one rectangle per run of rows with identical pixel runs."""
    polys = []
    H = mask.shape[0]
    y = 0
    prev_runs, start_y = None, 0

    def runs_of(row):
        padded = np.concatenate([[0], row.astype(np.int8), [0]])
        d = np.flatnonzero(np.diff(padded))
        return tuple(zip(d[0::2].tolist(), d[1::2].tolist()))

    for y in range(H + 1):
        runs = runs_of(mask[y]) if y < H else ()
        if runs != prev_runs:
            if prev_runs:
                for x0, x1 in prev_runs:
                    polys.append([float(v) for v in (x0, start_y, x1, start_y, x1, y, x0, y)])
            prev_runs, start_y = runs, y
    return polys


def decode_segmentation(seg, h: int, w: int, where: str) -> np.ndarray:
    if isinstance(seg, list):
        if not seg:
            return np.zeros((h, w), dtype=bool)
        try:
            rles = mask_utils.frPyObjects(seg, h, w)
        except Exception as e:  # noqa: BLE001
            raise DatasetFormatError(f"{where}: malformed polygon ({e!r})") from e
        return mask_utils.decode(mask_utils.merge(rles)).astype(bool)
    if isinstance(seg, dict):
        return rle_decode(seg, (h, w), where)
    raise DatasetFormatError(f"{where}: unknown segmentation type {type(seg).__name__}")


def write_refcoco(root: Path, samples: Iterable[dict], dataset: str = "refcoco") -> None:
    """``samples``: dicts ``{image_id, frame (uint8 HxWx3), masks {obj_id: bool HxW},
    categories {obj_id: name}, refs [(obj_id, [texts])], split}``. Objects whose polygon cover does
    not decode back exactly are stored as RLE."""
    root = Path(root)
    refs, images, annotations = [], [], []
    cat_ids: dict[str, int] = {}
    ann_id = sent_id = ref_id = 0
    for s in samples:
        image_id = int(s["image_id"])
        file_name = coco_file_name(image_id)
        frame = s["frame"]
        h, w = frame.shape[:2]
        write_jpeg(root / "images" / "train2014" / file_name, frame)
        images.append({"id": image_id, "file_name": file_name, "height": h, "width": w})
        ann_of = {}
        for obj_id in sorted(s["masks"]):
            m = s["masks"][obj_id]
            if not m.any():
                continue
            cat = s["categories"][obj_id]
            cat_ids.setdefault(cat, len(cat_ids) + 1)
            ann_id += 1
            polys = mask_to_polygons(m)
            seg = polys
            if not np.array_equal(decode_segmentation(polys, h, w, "self-check"), m):
                seg = rle_encode(m)
            ys, xs = np.nonzero(m)
            annotations.append({
                "id": ann_id, "image_id": image_id, "category_id": cat_ids[cat], "segmentation": seg,
                "area": float(m.sum()), "iscrowd": 0,
                "bbox": [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)],
            })
            ann_of[obj_id] = (ann_id, cat_ids[cat])
        for obj_id, texts in s["refs"]:
            if obj_id not in ann_of:
                continue
            sentences = []
            for text in texts:
                sent_id += 1
                sentences.append({"tokens": text.split(), "raw": text, "sent_id": sent_id, "sent": text})
            ref_id += 1
            aid, cid = ann_of[obj_id]
            refs.append({"ref_id": ref_id, "ann_id": aid, "image_id": image_id, "split": s["split"],
                         "sentences": sentences, "sent_ids": [x["sent_id"] for x in sentences],
                         "category_id": cid, "file_name": file_name.replace(".jpg", f"_{ann_id}.jpg")})
    d = root / dataset
    d.mkdir(parents=True, exist_ok=True)
    with open(d / f"refs({SPLIT_BY[dataset]}).p", "wb") as f:
        pickle.dump(refs, f, protocol=2)
    write_json(d / "instances.json", {
        "images": images, "annotations": annotations,
        "categories": [{"id": i, "name": n, "supercategory": "shape"} for n, i in cat_ids.items()],
    })


class RefCOCOSource(ReferringSource):
    """One ExpressionRef per sentence; ``video_id`` = str(image_id), one frame, obj_ids = (ann_id,)."""

    name = "refcoco"

    def __init__(self, root, dataset: str = "refcoco", split: str | None = "train", image_root=None):
        self.root = Path(root)
        if dataset not in SPLIT_BY:
            raise ValueError(f"unknown dataset {dataset!r}; expected one of {sorted(SPLIT_BY)}")
        self.dataset = dataset
        self.image_root = Path(image_root) if image_root is not None else self.root / "images" / "train2014"
        d = require(self.root / dataset, "RefCOCO dataset directory")
        refs_path = self.index = d / f"refs({SPLIT_BY[dataset]}).p"
        refs = load_refs(refs_path)
        self.split = split
        self._splits: set[str] = set()  # the splits the refs file holds, named when `split` has none
        inst_path = d / "instances.json"
        inst = read_json(inst_path)
        try:
            self._images = {int(im["id"]): im for im in inst["images"]}
            self._anns = {int(a["id"]): a for a in inst["annotations"]}
        except (KeyError, TypeError, ValueError) as e:
            raise DatasetFormatError(f"{inst_path}: expected COCO 'images' and 'annotations' ({e!r})") from e
        self.has_masks = True
        self.expressions = []
        for ref in refs:
            try:
                if isinstance(ref, dict) and "split" in ref:  # (split=None reads refs without one)
                    self._splits.add(str(ref["split"]))
                if split is not None and ref["split"] != split:
                    continue
                ann_id, image_id = int(ref["ann_id"]), int(ref["image_id"])
                sentences = ref["sentences"]
            except (KeyError, TypeError, ValueError) as e:
                raise DatasetFormatError(f"{refs_path}: malformed ref {ref!r:.200} ({e!r})") from e
            if ann_id not in self._anns:
                raise DatasetFormatError(f"{inst_path}: ann_id {ann_id} of ref {ref.get('ref_id')!r} not found")
            if image_id not in self._images:
                raise DatasetFormatError(f"{inst_path}: image_id {image_id} of ref {ref.get('ref_id')!r} not found")
            stem = Path(self._images[image_id]["file_name"]).stem
            for s in sentences:
                self.expressions.append(
                    ExpressionRef(str(image_id), str(s["sent_id"]), str(s["sent"]), (ann_id,), (stem,)))

    def _empty_problems(self):
        if not self.expressions:
            split = f" in split {self.split!r}" if self.split is not None else ""
            held = ", ".join(sorted(self._splits)) or "none"
            yield f"{self.index}: expected at least one referring sentence{split}, found none (the file's splits: {held})"

    def frame_paths(self, video_id: str) -> list[Path]:
        try:
            im = self._images[int(video_id)]
        except (KeyError, ValueError) as e:
            raise DatasetFormatError(f"{self.root / self.dataset / 'instances.json'}: unknown image {video_id!r}") from e
        return [self.image_root / im["file_name"]]

    def _frame_names(self, video_id: str) -> list[str]:
        return [Path(self.frame_paths(video_id)[0]).stem]

    def _check_targets(self, video_id: str, hw: tuple[int, int], exprs: list[ExpressionRef]):
        im = self._images[int(video_id)]
        inst = self.root / self.dataset / "instances.json"
        if (int(im["height"]), int(im["width"])) != tuple(hw):
            yield (f"{self.image_root / im['file_name']}: expected {im['width']}x{im['height']} as {inst} says, "
                   f"found {hw[1]}x{hw[0]}")
            return
        segs = ((self._anns[a]["segmentation"], a) for a in dict.fromkeys(o for e in exprs for o in e.obj_ids))
        # polygons carry no size; an RLE must match the image and its runs sum to H*W
        yield from rle_problems((seg, hw, f"{inst}: annotation {a} (image {video_id})")
                                for seg, a in segs if isinstance(seg, dict))

    def annotation_files(self) -> list[Path]:
        d = self.root / self.dataset
        return [d / f"refs({SPLIT_BY[self.dataset]}).p", d / "instances.json"]

    def _load_target_frames(self, expr: ExpressionRef, names: list[str]) -> np.ndarray:
        im = self._images[int(expr.video_id)]
        h, w = int(im["height"]), int(im["width"])
        out = np.zeros((h, w), dtype=bool)
        for a in expr.obj_ids:
            where = f"{self.root / self.dataset / 'instances.json'}: annotation {a} (image {expr.video_id})"
            out |= decode_segmentation(self._anns[a]["segmentation"], h, w, where)
        return np.stack([out] * len(names))
