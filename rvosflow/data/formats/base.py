"""The common reader interface of the four referring-segmentation formats, and shared helpers."""

from __future__ import annotations

import copy
import json
import os
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
    index: Path  # the file that lists the split's expressions, named when it lists none

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
        of a video share one size, and the masks (``_check_targets``) match it; and the split holds
        an expression (``_empty_problems``). Yields messages."""
        yield from self._empty_problems()
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

    def _empty_problems(self):
        """A split without an expression: a run would train on nothing, or score nothing and fail after training."""
        if not self.expressions:
            yield f"{self.index}: expected at least one expression, found none"

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


# How much of a file's end is searched for its end marker: padding or a small trailer after it is
# allowed (zero padding to a block, camera trailers), and one page is as cheap to read as two bytes.
END_WINDOW = 4096
# The end markers searched for, by PIL format: JPEG's end-of-image, PNG's IEND chunk (type + CRC).
END_MARKERS = {"JPEG": (b"\xff\xd9", "end-of-image marker FF D9"), "MPO": (b"\xff\xd9", "end-of-image marker FF D9"),
               "PNG": (b"IEND\xaeB`\x82", "IEND chunk")}


def header_size(path: Path, what: str) -> tuple[str | None, tuple[int, int] | None]:
    """``(problem, (H, W))`` of an image file from its header and its last bytes: a missing, empty,
    undecodable or cut-short file is a problem message naming it.

    Cut short: a JPEG without its end-of-image marker, a PNG without its IEND chunk, in the file's
    last ``END_WINDOW`` bytes after the image data began (PIL stops reading the header there). A
    JPEG's compressed data cannot hold FF D9 (an FF byte there is followed by 00 or a restart
    marker D0-D7), so finding it means the data ended: a file cut anywhere in its data has none,
    while zero padding or a trailer after the marker, which PIL and libjpeg read past, is allowed.
    PIL refuses to decode a JPEG missing even just that marker ("image file is truncated")."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                return f"{path}: expected a {what} image, found an empty file", None
            with Image.open(f) as im:
                w, h = im.size
                marker = END_MARKERS.get(im.format)
            if marker is not None:
                start = max(f.tell(), size - END_WINDOW)  # never the header's bytes (an EXIF thumbnail has FF D9)
                f.seek(start)
                if marker[0] not in f.read():
                    return (f"{path}: expected a complete {what} image, found a {im.format} cut short "
                            f"(no {marker[1]} in its last {size - start} bytes)"), None
    except FileNotFoundError:
        return f"{path}: expected a {what} image, found nothing", None
    except OSError as e:
        return f"{path}: expected a {what} image, found an undecodable file ({e})", None
    return None, (h, w)


# The longest count pycocotools' reader takes: it shifts each 5-bit group as a 32-bit int, so a
# 7th group (bits 30-34) overflows; 6 hold any run, and difference of runs, of a frame below 2**29 pixels.
RLE_MAX_GROUPS = 6

# Why a string is not RLE counts: rle_string_totals' negative codes.
NOT_RLE = {-1: "a character outside '0'..'o'", -2: "its last count cut short",
           -3: f"a count of more than {RLE_MAX_GROUPS} characters", -4: "a negative run"}


def rle_string_totals(strings: Sequence[str | bytes]) -> np.ndarray:
    """The sum of the runs of each compressed COCO RLE counts string, or a negative code (a key of
    ``NOT_RLE``) for a string that is not RLE counts; no mask is built (the strings are decoded
    together in NumPy, ~10 passes over their characters).

    pycocotools' format (``rleFrString`` in maskApi.c): each count is written in 5-bit groups, low
    group first, as the character ``'0' + group``, with 0x20 set while more groups follow and 0x10
    of the last group the sign; from the fourth count on, a count is stored as its difference from
    the count two before. Not RLE counts: a character outside ``'0'..'o'``, a count cut short at the
    end of the string, a count longer than ``RLE_MAX_GROUPS`` groups, a negative run (pycocotools
    reads it as a run of ~4e9 pixels).
    """
    raw = [s.encode() if isinstance(s, str) else bytes(s) for s in strings]  # non-ASCII: bytes > "o"
    n = len(raw)
    lengths = np.fromiter(map(len, raw), np.int64, n)
    if not lengths.any():
        return np.zeros(n, np.int64)  # only empty strings: no runs at all
    chars = np.frombuffer(b"".join(raw), np.uint8)
    string_end = np.cumsum(lengths)  # one past each string's last character
    nonempty = lengths > 0
    reason = np.zeros(n, np.int64)  # a NOT_RLE code, the first found kept

    def flag(strings_at, code):
        reason[strings_at] = np.where(reason[strings_at] == 0, code, reason[strings_at])

    outside = (chars < 48) | (chars > 111)
    if outside.any():
        flag(np.searchsorted(string_end, np.flatnonzero(outside), side="right"), -1)
    c = chars - np.uint8(48)  # each character's 6 bits (wrapped for those outside: flagged above)
    more = (c & 0x20) != 0
    last_char = string_end[nonempty] - 1
    flag(np.flatnonzero(nonempty)[more[last_char]], -2)  # the string ends inside a count
    more[last_char] = False  # a count never runs on into the next string
    ends = np.flatnonzero(~more)  # each count's last character
    top = c[ends]
    values = (top & 0x1F).astype(np.int64) - ((top & 0x10).astype(np.int64) << 1)  # signed top group
    inner = np.flatnonzero(more)  # the lower groups of counts of several characters (few)
    if inner.size:
        owner = np.searchsorted(ends, inner)
        first = np.concatenate(([0], ends[:-1] + 1))[owner]
        group = inner - first
        multi = np.unique(owner)
        values[multi] <<= 5 * np.minimum(ends[multi] - first[np.searchsorted(owner, multi)], RLE_MAX_GROUPS - 1)
        np.add.at(values, owner, (c[inner] & 0x1F).astype(np.int64) << (5 * np.minimum(group, RLE_MAX_GROUPS - 1)))
        too_long = np.unique(owner[group >= RLE_MAX_GROUPS - 1])
        flag(np.searchsorted(string_end, ends[too_long], side="right"), -3)
        values[too_long] = 0  # flagged; kept out of the sums, so |value| < 2**30 and no prefix overflows
    tokens = np.searchsorted(ends, string_end)  # counts in the strings up to each one
    count_n = np.diff(tokens, prepend=0)
    t0 = tokens - count_n  # each string's first count
    has = count_n > 0
    # Count m >= 1 is the sum of the values m, m-2, ... down to 1 or 2: a strided prefix sum over the
    # whole batch (value 0 left out) less what it held before the string began.
    head = values[t0[has]]
    values[t0[has]] = 0
    prefix = np.empty_like(values)
    np.cumsum(values[0::2], out=prefix[0::2])
    np.cumsum(values[1::2], out=prefix[1::2])
    padded = np.concatenate(([0], prefix))  # padded[i] = prefix[i - 1]
    k, first_t = count_n[has], t0[has]
    before_odd, before_even = padded[first_t], padded[first_t + 1]  # each parity's sum before the string
    sums = np.add.reduceat(prefix, first_t)  # may wrap around: the difference below is exact modulo 2**64
    totals = np.zeros(n, np.int64)
    # sum of counts = value 0 + the prefixes of counts 1.. less their strings' befores
    totals[has] = head + sums - before_even - (k // 2) * before_odd - ((k - 1) // 2) * before_even
    flag(np.flatnonzero(totals < 0), -4)  # a sum past 2**63 pixels
    # every count >= 0: each parity's smallest prefix in the string is at least its before
    for parity in (0, 1):
        stream = prefix[parity::2]
        lo, hi = (first_t - parity + 1) // 2, (first_t + k - parity + 1) // 2
        seg = lo < hi
        smallest = np.minimum.reduceat(stream, lo[seg])
        before = np.where((first_t[seg] - parity) % 2 == 0, before_even[seg], before_odd[seg])
        flag(np.flatnonzero(has)[seg][smallest < before], -4)
    flag(np.flatnonzero(has)[head < 0], -4)
    return np.where(reason < 0, reason, totals)


def _rle_structure_problem(rle, hw: tuple[int, int], where: str) -> str | None:
    try:
        size, counts = [int(s) for s in rle["size"]], rle["counts"]
    except (TypeError, KeyError, ValueError):
        return f"{where}: expected a COCO RLE {{size, counts}} or null, found {str(rle)[:80]}"
    if tuple(size) != tuple(hw):
        return f"{where}: expected an RLE of size {list(hw)} (the frame's), found {size}"
    if isinstance(counts, list):
        if not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in counts):
            bad = next(x for x in counts if not (isinstance(x, int) and not isinstance(x, bool) and x >= 0))
            return f"{where}: expected RLE counts as run lengths (integers >= 0), found {bad!r}"
        return _rle_total_problem(sum(counts), hw, where)
    if not isinstance(counts, (str, bytes)):
        return f"{where}: expected RLE counts as a string or a list, found {type(counts).__name__}"
    return None


def _rle_total_problem(total: int, hw: tuple[int, int], where: str, counts=None) -> str | None:
    if total < 0:
        return f"{where}: expected compressed COCO RLE counts, found {str(counts)[:40]!r}, not RLE ({NOT_RLE[total]})"
    if total != hw[0] * hw[1]:
        return f"{where}: expected RLE runs summing to {hw[0] * hw[1]} (H*W of {list(hw)}), found {total}"
    return None


def rle_problems(entries):
    """What is wrong with each ``(rle or None, (H, W), where)`` (a frame's COCO RLE), in order, as
    messages: its structure, its size and the sum of its runs, which must be H*W (pycocotools
    decodes a shorter RLE into uninitialised memory and rejects a longer one only when decoding).
    The compressed strings are decoded together (:func:`rle_string_totals`), so a video's masks
    cost one NumPy pass."""
    entries = list(entries)
    problems: list[str | None] = [None] * len(entries)
    strings = []
    for i, (rle, hw, where) in enumerate(entries):
        if rle is None:
            continue
        problems[i] = _rle_structure_problem(rle, hw, where)
        if problems[i] is None and not isinstance(rle["counts"], list):
            strings.append(i)
    totals = rle_string_totals([entries[i][0]["counts"] for i in strings]) if strings else ()
    for i, total in zip(strings, totals):
        rle, hw, where = entries[i]
        problems[i] = _rle_total_problem(int(total), hw, where, rle["counts"])
    return [p for p in problems if p]


def rle_problem(rle, hw: tuple[int, int], where: str) -> str | None:
    """What is wrong with a COCO RLE (or null) for a frame of size (H, W), without building the mask."""
    problems = rle_problems([(rle, hw, where)])
    return problems[0] if problems else None


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
    problem = rle_problem(rle, hw, where)  # runs that do not sum to H*W would decode to another mask
    if problem:
        raise DatasetFormatError(problem)
    if isinstance(counts, list):
        rle = mask_utils.frPyObjects({"size": list(size), "counts": counts}, *size)
    else:
        rle = {"size": list(size), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    try:
        return mask_utils.decode(rle).astype(bool)
    except Exception as e:  # noqa: BLE001  (pycocotools: "Invalid RLE mask representation", no file)
        raise DatasetFormatError(f"{where}: expected COCO RLE counts for {list(size)}, found invalid counts ({e})") from e
