"""Corrupt or inconsistent inputs fail with DatasetFormatError naming the file and the entry; a
refs pickle that carries code is refused without running it."""

from __future__ import annotations

import json
import os
import pickle
import shutil

import pytest

from rvosflow.data.formats import (
    DatasetFormatError,
    MevisSource,
    RefCOCOSource,
    RefDAVISSource,
    RefYTVOSSource,
    load_refs,
)


@pytest.fixture
def bench(tiny_benchmark, tmp_path):
    """A private copy of the tiny benchmark to corrupt."""
    return shutil.copytree(tiny_benchmark, tmp_path / "b")


def edit_json(path, fn):
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_refs_pickle_carrying_code_is_refused_not_run(bench, tmp_path):
    marker = tmp_path / "pwned"
    refs = bench / "refcoco" / "refcoco" / "refs(unc).p"
    ok = pickle.loads(refs.read_bytes())
    refs.write_bytes(pickle.dumps(ok + [_Evil(marker)], protocol=2))
    with pytest.raises(DatasetFormatError, match=r"refs\(unc\)\.p.*refuses to load global"):
        RefCOCOSource(bench / "refcoco", "refcoco")
    assert not marker.exists()
    refs.write_bytes(b"not a pickle")
    with pytest.raises(DatasetFormatError, match="not a readable refs pickle"):
        load_refs(refs)


def test_malformed_json_names_the_file(bench):
    p = bench / "mevis" / "valid_u" / "meta_expressions.json"
    p.write_text(p.read_text()[:-10])
    with pytest.raises(DatasetFormatError, match=r"meta_expressions\.json: malformed JSON"):
        MevisSource(bench / "mevis" / "valid_u")
    q = bench / "ref_ytvos" / "meta_expressions" / "train" / "meta_expressions.json"
    q.write_text("{\"videos\": [1, 2")
    with pytest.raises(DatasetFormatError, match="malformed JSON"):
        RefYTVOSSource(bench / "ref_ytvos", "train")


def test_missing_frame_file_names_the_frame(bench):
    src = MevisSource(bench / "mevis" / "train")
    e = src.expressions[0]
    path = bench / "mevis" / "train" / "JPEGImages" / e.video_id / f"{e.frame_names[2]}.jpg"
    path.unlink()
    with pytest.raises(DatasetFormatError, match=rf"{e.video_id}/{e.frame_names[2]}\.jpg: expected a frame file, found nothing"):
        src.load_frames(e.video_id)


def test_missing_annotation_png_names_the_file(bench):
    src = RefYTVOSSource(bench / "ref_ytvos", "train")
    e = src.expressions[0]
    (bench / "ref_ytvos" / "train" / "Annotations" / e.video_id / f"{e.frame_names[1]}.png").unlink()
    with pytest.raises(DatasetFormatError, match=rf"{e.video_id}/{e.frame_names[1]}\.png: expected an annotation file, found nothing"):
        src.load_target(e)


def test_rle_size_differing_from_its_frame(bench):
    split = bench / "mevis" / "train"
    src = MevisSource(split)
    e = src.expressions[0]
    anno = src._annos[(e.video_id, e.exp_id)][0]

    def shrink(d):
        for rle in d[anno]:
            if rle is not None:
                rle["size"] = [rle["size"][0] + 1, rle["size"][1]]

    edit_json(split / "mask_dict.json", shrink)
    with pytest.raises(DatasetFormatError, match=rf"mask_dict\.json: anno_id '{anno}' frame .* RLE size .* does not match"):
        MevisSource(split).load_target(e)


def test_refcoco_rle_size_differing_from_its_image(bench):
    inst = bench / "refcoco" / "refcoco" / "instances.json"
    e = RefCOCOSource(bench / "refcoco", "refcoco").expressions[0]
    ann_id = e.obj_ids[0]

    def bad(d):
        a = next(a for a in d["annotations"] if a["id"] == ann_id)
        a["segmentation"] = {"size": [7, 7], "counts": "0"}

    edit_json(inst, bad)
    src = RefCOCOSource(bench / "refcoco", "refcoco")
    with pytest.raises(DatasetFormatError, match=rf"instances\.json: annotation {ann_id} .* RLE size \[7, 7\]"):
        src.load_target(src.expressions[0])


def test_expression_with_no_frames(bench):
    split = bench / "mevis" / "valid_u"
    vid = next(iter(json.loads((split / "meta_expressions.json").read_text())["videos"]))
    edit_json(split / "meta_expressions.json", lambda d: d["videos"][vid].update(frames=[]))
    with pytest.raises(DatasetFormatError, match=rf"meta_expressions\.json: video '{vid}' lists no frames"):
        MevisSource(split)
    meta = bench / "ref_ytvos" / "meta_expressions" / "valid" / "meta_expressions.json"
    vid = next(iter(json.loads(meta.read_text())["videos"]))
    edit_json(meta, lambda d: d["videos"][vid].update(frames=[]))
    with pytest.raises(DatasetFormatError, match=rf"video '{vid}' lists no frames"):
        RefYTVOSSource(bench / "ref_ytvos", "valid")


def test_unknown_anno_id(bench):
    split = bench / "mevis" / "train"
    meta = json.loads((split / "meta_expressions.json").read_text())
    vid = next(iter(meta["videos"]))
    exp = next(iter(meta["videos"][vid]["expressions"]))
    edit_json(split / "meta_expressions.json",
              lambda d: d["videos"][vid]["expressions"][exp].update(anno_id=[987654]))
    with pytest.raises(DatasetFormatError, match=rf"anno_id '987654' of video '{vid}' expression '{exp}' not found"):
        MevisSource(split)


def test_unknown_object_id(bench):
    meta = bench / "ref_ytvos" / "meta_expressions" / "train" / "meta_expressions.json"
    vid = next(iter(json.loads(meta.read_text())["videos"]))
    edit_json(meta, lambda d: d["videos"][vid]["expressions"]["0"].update(obj_id="42"))
    with pytest.raises(DatasetFormatError, match=rf"meta\.json: obj_id '42' of video '{vid}' expression '0' not found"):
        RefYTVOSSource(bench / "ref_ytvos", "train")


def test_unknown_refcoco_ann_id(bench):
    refs_path = bench / "refcoco" / "refcoco" / "refs(unc).p"
    refs = pickle.loads(refs_path.read_bytes())
    refs[0]["ann_id"] = 999999
    refs_path.write_bytes(pickle.dumps(refs, protocol=2))
    with pytest.raises(DatasetFormatError, match=rf"instances\.json: ann_id 999999 of ref {refs[0]['ref_id']} not found"):
        RefCOCOSource(bench / "refcoco", "refcoco", split=None)


def test_ref_davis_needs_four_expressions_per_object(bench):
    meta = bench / "ref_davis" / "meta_expressions" / "valid" / "meta_expressions.json"
    vid = next(iter(json.loads(meta.read_text())["videos"]))
    edit_json(meta, lambda d: d["videos"][vid]["expressions"].pop("0"))
    with pytest.raises(DatasetFormatError, match=rf"video '{vid}' has \d+ expressions, not four per object"):
        RefDAVISSource(bench / "ref_davis")
