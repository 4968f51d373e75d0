"""The common reader interface of the four referring-segmentation formats, and shared helpers."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from rvosflow.data.schema import EXPRESSION_KINDS
from rvosflow.errors import DatasetFormatError


@dataclass(frozen=True)
class ExpressionRef:
    video_id: str
    exp_id: str
    text: str
    obj_ids: tuple[int, ...]
    frame_names: tuple[str, ...]
    annotator: int | None = None  # Ref-DAVIS annotator set 0..3
    kind: str = ""  # synthetic benchmark: EXPRESSION_KINDS entry from expression_kinds.json ("" = unknown)


class ReferringSource:
    """A referring-segmentation dataset: expressions indexed at init, frames and masks loaded lazily."""

    name: str = "source"
    root: Path
    has_masks: bool
    expressions: list[ExpressionRef]
    image_ext = ".jpg"

    def __len__(self) -> int:
        return len(self.expressions)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, expressions={len(self.expressions)}, has_masks={self.has_masks})"

    # -- to be provided by subclasses
    def _frame_dir(self, video_id: str) -> Path:
        raise NotImplementedError

    def _frame_names(self, video_id: str) -> Sequence[str]:
        raise NotImplementedError

    def _load_target_frames(self, expr: ExpressionRef, names: list[str]) -> np.ndarray:
        raise NotImplementedError

    # -- common API
    def video_ids(self) -> list[str]:
        return list(dict.fromkeys(e.video_id for e in self.expressions))

    def frame_paths(self, video_id: str) -> list[Path]:
        d = self._frame_dir(video_id)
        return [d / f"{n}{self.image_ext}" for n in self._frame_names(video_id)]

    def load_frames(self, video_id: str, indices: Sequence[int] | None = None) -> np.ndarray:
        """uint8 [T, H, W, 3] (T = len(indices) when given)."""
        paths = self.frame_paths(video_id)
        if indices is not None:
            paths = [paths[i] for i in indices]
        return stack_frames([read_rgb(p) for p in paths], paths)

    def check_files(self):
        """The problems of the files this source references, read from headers only (cheap: no
        pixel is decoded): every frame exists, is non-empty and has an image header, the frames
        of a video share one size, and the masks (``_check_targets``) match it. Yields messages."""
        by_video: dict[str, list[ExpressionRef]] = {}
        for e in self.expressions:
            by_video.setdefault(e.video_id, []).append(e)
        for vid, exprs in by_video.items():
            paths = self.frame_paths(vid)
            first = None
            for p in paths:
                problem, hw = header_size(p, "frame")
                if problem:
                    yield problem
                elif first is None:
                    first = (p, hw)
                elif hw != first[1]:
                    yield f"{p}: expected {first[1][1]}x{first[1][0]} like {first[0].name}, found {hw[1]}x{hw[0]}"
            if first is not None and self.has_masks:
                yield from self._check_targets(vid, first[1], exprs)

    def _check_targets(self, video_id: str, hw: tuple[int, int], exprs: list[ExpressionRef]):
        """Problems of the ground truth of a video's expressions given its frame size (H, W)."""
        return ()

    def annotation_files(self) -> list[Path]:
        """The files the expressions and masks are read from, frames aside (the data set's digest)."""
        raise NotImplementedError

    def load_target(self, expr: ExpressionRef, indices: Sequence[int] | None = None) -> np.ndarray:
        """bool [T, H, W]: union of the expression's objects."""
        if not self.has_masks:
            raise DatasetFormatError(f"{self.root}: no ground-truth masks for this split ({self.name})")
        names = list(self._frame_names(expr.video_id))
        if indices is not None:
            names = [names[i] for i in indices]
        return self._load_target_frames(expr, names)


# ------------------------------------------------------------------------------- helpers


def first_videos(source, n: int | None, setting: str = "data.eval_videos"):
    """A view of ``source`` keeping the expressions of its first ``n`` videos (None: ``source``).

    ``setting`` names where ``n`` came from, for the error message."""
    if n is None or n >= len(source.video_ids()):
        return source
    if n < 1:
        raise ValueError(f"{setting}: expected a positive number of videos or null, got {n}")
    keep = set(source.video_ids()[:n])
    view = copy.copy(source)
    view.expressions = [e for e in source.expressions if e.video_id in keep]
    return view


def iter_meta_videos(meta, meta_path: Path):
    """``(video_id, frame names, {exp_id: entry})`` for each video of a MeViS/Ref-YTVOS-style
    ``meta_expressions.json``, with the shared structure checked."""
    try:
        items = list(meta["videos"].items())
    except (KeyError, TypeError, AttributeError) as e:
        raise DatasetFormatError(f"{meta_path}: expected {{'videos': {{...}}}}") from e
    for vid, rec in items:
        try:
            frames = [str(f) for f in rec["frames"]]
            exps = rec["expressions"]
        except (KeyError, TypeError) as e:
            raise DatasetFormatError(f"{meta_path}: video {vid!r} lacks 'frames' or 'expressions'") from e
        if not frames and exps:
            raise DatasetFormatError(f"{meta_path}: video {vid!r} lists no frames for its expressions {list(exps)[:5]}")
        yield vid, frames, exps


# The synthetic benchmark's per-expression kinds live in this sidecar beside a split's
# meta_expressions.json, {video_id: {exp_id: kind}}, so the real-format files stay exactly real.
KINDS_FILE = "expression_kinds.json"


def write_kinds(directory: Path, kinds: dict[str, dict[str, str]]) -> None:
    if any(kinds.values()):
        write_json(Path(directory) / KINDS_FILE, kinds)


def read_kinds(directory: Path) -> dict[tuple[str, str], str]:
    """``{(video_id, exp_id): kind}`` from ``<directory>/expression_kinds.json``; {} when absent."""
    path = Path(directory) / KINDS_FILE
    if not path.exists():
        return {}
    raw = read_json(path)
    out = {}
    try:
        for vid, exps in raw.items():
            for exp_id, kind in exps.items():
                if kind not in EXPRESSION_KINDS:
                    raise DatasetFormatError(
                        f"{path}: video {vid!r} expression {exp_id!r}: expected a kind in {', '.join(EXPRESSION_KINDS)}, got {kind!r}")
                out[(str(vid), str(exp_id))] = kind
    except AttributeError as e:
        raise DatasetFormatError(f"{path}: expected {{video_id: {{exp_id: kind}}}}") from e
    return out


def require(path: Path, what: str = "file") -> Path:
    if not path.exists():
        raise DatasetFormatError(f"{path}: expected a {what}, found nothing")
    return path


def read_json(path: Path):
    require(path)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DatasetFormatError(f"{path}: malformed JSON ({e})") from e


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f)


def read_rgb(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except FileNotFoundError as e:
        raise DatasetFormatError(f"{path}: expected a frame file, found nothing") from e
    except OSError as e:
        raise DatasetFormatError(f"{path}: unreadable image ({e})") from e


def stack_frames(frames: Sequence[np.ndarray], paths: Sequence[Path]) -> np.ndarray:
    """``np.stack(frames)``; a frame at another size than the first is named with its file
    (NumPy's own error names none)."""
    for f, p in zip(frames[1:], paths[1:]):
        if f.shape != frames[0].shape:
            raise DatasetFormatError(f"{p}: expected {frames[0].shape[1]}x{frames[0].shape[0]} like {paths[0]}, "
                                     f"found {f.shape[1]}x{f.shape[0]}")
    return np.stack(frames)


def header_size(path: Path, what: str) -> tuple[str | None, tuple[int, int] | None]:
    """``(problem, (H, W))`` of an image file from its header alone: a missing, empty or
    undecodable file is a problem message naming it."""
    try:
        if path.stat().st_size == 0:
            return f"{path}: expected a {what} image, found an empty file", None
        with Image.open(path) as im:
            w, h = im.size
    except FileNotFoundError:
        return f"{path}: expected a {what} image, found nothing", None
    except OSError as e:
        return f"{path}: expected a {what} image, found an undecodable file ({e})", None
    return None, (h, w)


def rle_problem(rle, hw: tuple[int, int], where: str) -> str | None:
    """What is wrong with a COCO RLE (or null) for a frame of size (H, W), without decoding it."""
    if rle is None:
        return None
    try:
        size, counts = [int(s) for s in rle["size"]], rle["counts"]
    except (TypeError, KeyError, ValueError):
        return f"{where}: expected a COCO RLE {{size, counts}} or null, found {str(rle)[:80]}"
    if tuple(size) != tuple(hw):
        return f"{where}: expected an RLE of size {list(hw)} (the frame's), found {size}"
    if not isinstance(counts, (str, list)):
        return f"{where}: expected RLE counts as a string or a list, found {type(counts).__name__}"
    return None


def image_size(path: Path) -> tuple[int, int]:
    """(H, W) from the image header."""
    try:
        with Image.open(path) as im:
            w, h = im.size
    except FileNotFoundError as e:
        raise DatasetFormatError(f"{path}: expected a frame file, found nothing") from e
    except OSError as e:  # not an image (zero bytes, garbage)
        raise DatasetFormatError(f"{path}: expected an image, found an unreadable file ({e})") from e
    return h, w


def write_jpeg(path: Path, frame: np.ndarray, quality: int = 95) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(frame).save(path, quality=quality, subsampling=0)


def palette() -> list[int]:
    """The DAVIS/YouTube-VOS colour palette (bit-interleaved PASCAL VOC colour map)."""
    out = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out += [r, g, b]
    return out


_PALETTE = palette()


def write_index_png(path: Path, ids: np.ndarray) -> None:
    """Palette ('P') PNG whose pixel value is the object id (0 = background)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(ids.astype(np.uint8), mode="P")
    im.putpalette(_PALETTE)
    im.save(path)


def read_index_png(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L"):
                raise DatasetFormatError(f"{path}: annotation must be a palette PNG, got mode {im.mode!r}")
            return np.asarray(im)
    except FileNotFoundError as e:
        raise DatasetFormatError(f"{path}: expected an annotation file, found nothing") from e


def id_map(masks: dict[int, np.ndarray], t: int) -> np.ndarray:
    first = next(iter(masks.values()))
    out = np.zeros(first.shape[1:], dtype=np.uint8)
    for k, m in masks.items():
        out[m[t]] = k
    return out


def rle_encode(mask: np.ndarray) -> dict | None:
    """COCO RLE with counts as str; None for an empty mask."""
    if not mask.any():
        return None
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def rle_decode(rle: dict | None, hw: tuple[int, int], where: str) -> np.ndarray:
    if rle is None:
        return np.zeros(hw, dtype=bool)
    try:
        size = tuple(int(s) for s in rle["size"])
        counts = rle["counts"]
    except (TypeError, KeyError, ValueError) as e:
        raise DatasetFormatError(f"{where}: malformed RLE ({e!r})") from e
    if size != tuple(hw):
        raise DatasetFormatError(f"{where}: RLE size {list(size)} does not match the frame size {list(hw)}")
    if isinstance(counts, list):
        rle = mask_utils.frPyObjects({"size": list(size), "counts": counts}, *size)
    else:
        rle = {"size": list(size), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    try:
        return mask_utils.decode(rle).astype(bool)
    except Exception as e:  # noqa: BLE001  (pycocotools: "Invalid RLE mask representation", no file)
        raise DatasetFormatError(f"{where}: expected COCO RLE counts for {list(size)}, found invalid counts ({e})") from e
