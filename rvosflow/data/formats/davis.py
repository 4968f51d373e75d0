"""Ref-DAVIS17 in the Ref-YouTube-VOS layout, as converted by ReferFormer / REM.

Layout: ``valid/JPEGImages/<vid>/<frame>.jpg``, ``valid/Annotations/<vid>/<frame>.png`` (palette
PNG, pixel = object id), ``valid/meta.json``, ``meta_expressions/valid/meta_expressions.json``.

Convention (ReferFormer ``tools/data/convert_davis_to_ytvos.py`` and ``inference_davis.py``):
the text annotations come from four files -- ``Davis17_annot1.txt`` (annotator 1, first frame),
``Davis17_annot1_full_video.txt`` (annotator 1, full video), ``Davis17_annot2.txt``,
``Davis17_annot2_full_video.txt``. For every object, in increasing ``obj_id`` order, four
consecutive expressions are written with ids ``"0", "1", ...`` in this order: annot1-first,
annot1-full, annot2-first, annot2-full. So the expression at position ``i`` of a video's
``expressions`` (JSON order) belongs to object number ``i // 4`` and to annotator set ``i % 4``
(0 = annot1 first-frame, 1 = annot1 full-video, 2 = annot2 first-frame, 3 = annot2 full-video);
inference runs each set over all objects of the video and writes ``anno_<set>/<vid>/*.png``, and
each set is scored separately with the DAVIS measures, reporting the mean of the four.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from rvosflow.data.formats.base import DatasetFormatError
from rvosflow.data.formats.ytvos import RefYTVOSSource, write_ytvos_layout
from rvosflow.data.schema import Video

ANNOTATOR_SETS = ("annot1_first_frame", "annot1_full_video", "annot2_first_frame", "annot2_full_video")


def write_davis(root: Path, videos: Iterable[tuple[Video, dict[int, list[str]]]], split: str = "valid",
                with_annotations: bool = True, text_kinds: dict[str, dict[str, str]] | None = None) -> None:
    """``videos``: (video, {obj_id: [4 texts in ANNOTATOR_SETS order]}) covering every object.
    ``text_kinds`` ({video_id: {text: kind}}, synthetic only) fills the kinds sidecar."""
    entries = []
    for v, per_obj in videos:
        kinds_of_text = (text_kinds or {}).get(v.video_id, {})
        if sorted(per_obj) != sorted(v.masks) or any(len(t) != 4 for t in per_obj.values()):
            raise ValueError(f"video {v.video_id}: Ref-DAVIS needs four expressions for every object")
        exps = {}
        for obj_id in sorted(per_obj):  # increasing obj_id, four consecutive ids each
            for text in per_obj[obj_id]:
                exps[str(len(exps))] = {"exp": text, "obj_id": str(obj_id)}
        kinds = {i: kinds_of_text[e["exp"]] for i, e in exps.items() if e["exp"] in kinds_of_text}
        entries.append((v, exps, kinds))
    write_ytvos_layout(root, split, entries, with_annotations)


class RefDAVISSource(RefYTVOSSource):
    name = "ref_davis"

    def __init__(self, root, split: str = "valid"):
        super().__init__(root, split)

    def _annotator(self, position: int, count: int, video_id: str) -> int:
        if count % 4:
            raise DatasetFormatError(
                f"{self._meta_path}: video {video_id!r} has {count} expressions, not four per object")
        return position % 4

    def annotator_set(self, annotator: int) -> list:
        """The expressions of one annotator set (0..3), over all videos."""
        return [e for e in self.expressions if e.annotator == annotator]
