"""The four real formats: round trip from the generator, cache, atomicity and bad input."""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import time

import numpy as np
import pytest

from rvosflow.data.formats import (
    DatasetFormatError,
    MevisSource,
    RefCOCOSource,
    RefDAVISSource,
    RefYTVOSSource,
    load_refs,
)
from rvosflow.data.formats.refcoco import decode_segmentation, mask_to_polygons
from rvosflow.data.synthetic import generate_split, write_benchmark


@pytest.fixture(scope="module")
def splits(tiny_synthetic_cfg):
    return {s: {v.video_id: v for v in generate_split(s, tiny_synthetic_cfg)} for s in ("train", "valid_u", "valid")}


def _close(a: np.ndarray, b: np.ndarray) -> None:
    assert a.shape == b.shape and a.dtype == np.uint8
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 8  # JPEG is lossy (and the frames are noisy)


def test_layout(tiny_benchmark):
    r = tiny_benchmark
    for p in ("manifest.json", "mevis/train/meta_expressions.json", "mevis/valid/mask_dict.json",
              "mevis/valid_u/captions.json", "mevis/train/JPEGImages/train_0000/00000.jpg",
              "ref_ytvos/train/Annotations/train_0000/00000.png", "ref_ytvos/meta_expressions/valid/meta_expressions.json",
              "ref_davis/valid/Annotations", "ref_davis/meta_expressions/valid/meta_expressions.json",
              "refcoco/refcoco/refs(unc).p", "refcoco/refcoco/instances.json",
              "refcoco/images/train2014/COCO_train2014_000000000001.jpg"):
        assert (r / p).exists(), p
    assert not list(r.parent.glob(".*tmp*")), "temporary directory left behind"


@pytest.mark.parametrize("split", ["train", "valid_u", "valid"])
def test_mevis_round_trip(tiny_benchmark, splits, split):
    src = MevisSource(tiny_benchmark / "mevis" / split)
    assert src.has_masks
    videos = splits[split]
    assert len(src.expressions) == sum(len(v.expressions) for v in videos.values())
    annos = json.loads((tiny_benchmark / "mevis" / split / "meta_expressions.json").read_text())["videos"]
    all_annos = [tuple(e["obj_id"]) + (vid,) for vid, r in annos.items() for e in r["expressions"].values()]
    assert all_annos  # anno ids: unique per (video, object)
    per_pair = {}
    for vid, r in annos.items():
        for e in r["expressions"].values():
            for o, a in zip(e["obj_id"], e["anno_id"]):
                per_pair.setdefault(a, set()).add((vid, o))
    assert all(len(s) == 1 for s in per_pair.values())
    for e in src.expressions:
        v = videos[e.video_id]
        ge = next(x for x in v.expressions if x.exp_id == e.exp_id)
        assert e.text == ge.text and list(e.obj_ids) == ge.obj_ids
        assert np.array_equal(src.load_target(e), v.target(ge.obj_ids))
    vid = next(iter(videos))
    _close(src.load_frames(vid), videos[vid].frames)
    assert np.array_equal(src.load_target(src.expressions[0], [0, 2]), src.load_target(src.expressions[0])[[0, 2]])
    assert src.captions()[vid] == videos[vid].caption


def test_mevis_without_mask_dict(tiny_benchmark, tmp_path):
    d = tmp_path / "valid"
    shutil.copytree(tiny_benchmark / "mevis" / "valid", d)
    (d / "mask_dict.json").unlink()
    src = MevisSource(d)
    assert not src.has_masks and src.expressions
    assert src.load_frames(src.expressions[0].video_id).ndim == 4
    with pytest.raises(DatasetFormatError):
        src.load_target(src.expressions[0])


@pytest.mark.parametrize("split", ["train", "valid"])
def test_ytvos_round_trip(tiny_benchmark, splits, split):
    src = RefYTVOSSource(tiny_benchmark / "ref_ytvos", split)
    assert src.has_masks
    videos = splits[split]
    expected = [(v.video_id, e) for v in videos.values() for e in v.expressions if len(e.obj_ids) == 1]
    assert len(src.expressions) == len(expected)
    for e in src.expressions:
        v = videos[e.video_id]
        ge = next(x for x in v.expressions if x.exp_id == e.exp_id)
        assert e.text == ge.text and list(e.obj_ids) == ge.obj_ids and e.annotator is None
        assert np.array_equal(src.load_target(e), v.target(ge.obj_ids))
    e = src.expressions[0]
    _close(src.load_frames(e.video_id, [1]), videos[e.video_id].frames[[1]])
    meta = json.loads((tiny_benchmark / "ref_ytvos/meta_expressions" / split / "meta_expressions.json").read_text())
    assert all(isinstance(x["obj_id"], str) for r in meta["videos"].values() for x in r["expressions"].values())


def test_ytvos_without_annotations(tiny_benchmark, tmp_path):
    root = tmp_path / "ytvos"
    shutil.copytree(tiny_benchmark / "ref_ytvos", root)
    shutil.rmtree(root / "valid" / "Annotations")
    src = RefYTVOSSource(root, "valid")
    assert not src.has_masks and src.expressions


def test_davis_round_trip_and_annotator_sets(tiny_benchmark, splits):
    src = RefDAVISSource(tiny_benchmark / "ref_davis")
    videos = splits["valid_u"]
    meta = json.loads((tiny_benchmark / "ref_davis/meta_expressions/valid/meta_expressions.json").read_text())["videos"]
    for vid, rec in meta.items():
        keys = list(rec["expressions"])
        assert keys == [str(i) for i in range(len(keys))]
        n_obj = len(videos[vid].masks)
        assert len(keys) == 4 * n_obj
        # ReferFormer: expression i belongs to object i // 4 (increasing obj_id) and set i % 4
        for i, k in enumerate(keys):
            assert int(rec["expressions"][k]["obj_id"]) == sorted(videos[vid].masks)[i // 4]
    for a in range(4):
        per_set = src.annotator_set(a)
        assert len(per_set) == sum(len(videos[vid].masks) for vid in meta)
        for e in per_set:
            assert int(e.exp_id) % 4 == a
    for e in src.expressions:
        assert np.array_equal(src.load_target(e), videos[e.video_id].target(list(e.obj_ids)))
        # the texts are correct single-object expressions of that video
        from rvosflow.data.synthetic import resolve_expression
        assert resolve_expression(e.text, videos[e.video_id]) == set(e.obj_ids)


def test_refcoco_round_trip(tiny_benchmark, splits):
    root = tiny_benchmark / "refcoco"
    refs = load_refs(root / "refcoco" / "refs(unc).p")
    assert {"ref_id", "ann_id", "image_id", "split", "sentences", "sent_ids", "category_id", "file_name"} <= set(refs[0])
    inst = json.loads((root / "refcoco" / "instances.json").read_text())
    assert any(isinstance(a["segmentation"], list) for a in inst["annotations"])
    train = list(splits["train"].values())
    n = 0
    for split in ("train", "val", "testA", "testB"):
        src = RefCOCOSource(root, "refcoco", split)
        for e in src.expressions:
            v = train[int(e.video_id) - 1]
            t = v.frames.shape[0] // 2
            target = src.load_target(e)
            assert target.shape == (1, *v.frames.shape[1:3])
            # the object whose mask this is, in the generator's frame
            matches = [k for k, m in v.masks.items() if np.array_equal(m[t], target[0])]
            assert len(matches) == 1
            from rvosflow.data.synthetic import resolve_expression
            assert resolve_expression(e.text, v) == set(matches)
            n += 1
        if src.expressions:
            e = src.expressions[0]
            _close(src.load_frames(e.video_id), train[int(e.video_id) - 1].frames[[v.frames.shape[0] // 2]])
    assert n > 0
    assert len(RefCOCOSource(root, "refcoco", None).expressions) == n


def test_polygons_exact():
    rng = np.random.default_rng(0)
    for _ in range(20):
        m = rng.random((17, 23)) < 0.4
        assert np.array_equal(decode_segmentation(mask_to_polygons(m), 17, 23, "t"), m)


def test_cache_and_rewrite(tiny_benchmark, tiny_synthetic_cfg):
    manifest = tiny_benchmark / "manifest.json"
    probe = tiny_benchmark / "mevis" / "train" / "meta_expressions.json"
    before = (manifest.stat().st_mtime_ns, probe.stat().st_mtime_ns)
    t0 = time.perf_counter()
    assert write_benchmark(tiny_benchmark, tiny_synthetic_cfg, progress=False) == tiny_benchmark
    assert time.perf_counter() - t0 < 0.5
    assert (manifest.stat().st_mtime_ns, probe.stat().st_mtime_ns) == before


def test_changed_config_rewrites_atomically(tmp_path, tiny_synthetic_cfg):
    import dataclasses
    cfg = dataclasses.replace(tiny_synthetic_cfg, train_videos=2, valid_u_videos=1, valid_videos=1, frames=5)
    out = write_benchmark(tmp_path / "b", cfg, progress=False)
    (out / "stale.txt").write_text("x")
    cfg2 = dataclasses.replace(cfg, seed=3)
    write_benchmark(out, cfg2, progress=False)
    assert not (out / "stale.txt").exists()
    assert json.loads((out / "manifest.json").read_text())["config"]["seed"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


# ------------------------------------------------------------------------------ bad input


@pytest.fixture()
def mevis_copy(tiny_benchmark, tmp_path):
    d = tmp_path / "train"
    shutil.copytree(tiny_benchmark / "mevis" / "train", d)
    return d


def test_missing_root_and_file(tmp_path, mevis_copy):
    with pytest.raises(DatasetFormatError, match="nope"):
        MevisSource(tmp_path / "nope")
    (mevis_copy / "meta_expressions.json").unlink()
    with pytest.raises(DatasetFormatError, match="meta_expressions.json"):
        MevisSource(mevis_copy)
    with pytest.raises(DatasetFormatError, match="meta_expressions.json"):
        RefYTVOSSource(tmp_path, "train")


def test_malformed_json(mevis_copy):
    (mevis_copy / "mask_dict.json").write_text("{not json")
    with pytest.raises(DatasetFormatError, match="mask_dict.json"):
        MevisSource(mevis_copy)


def test_unknown_anno_id(mevis_copy):
    p = mevis_copy / "meta_expressions.json"
    meta = json.loads(p.read_text())
    vid = next(iter(meta["videos"]))
    exp = meta["videos"][vid]["expressions"]["0"]
    exp["anno_id"] = [9999] * len(exp["obj_id"])
    p.write_text(json.dumps(meta))
    with pytest.raises(DatasetFormatError, match=rf"mask_dict.json: anno_id '9999' of video '{vid}' expression '0' not found"):
        MevisSource(mevis_copy)


def test_missing_frame_and_rle_size(mevis_copy):
    src = MevisSource(mevis_copy)
    e = src.expressions[0]
    frame = mevis_copy / "JPEGImages" / e.video_id / "00003.jpg"
    frame.unlink()
    with pytest.raises(DatasetFormatError, match="00003.jpg"):
        src.load_frames(e.video_id)
    p = mevis_copy / "mask_dict.json"
    md = json.loads(p.read_text())
    for rles in md.values():
        for r in rles:
            if r is not None:
                r["size"] = [7, 7]
    p.write_text(json.dumps(md))
    with pytest.raises(DatasetFormatError, match="RLE size"):
        MevisSource(mevis_copy).load_target(e)


def test_unknown_obj_id_ytvos(tiny_benchmark, tmp_path):
    root = tmp_path / "y"
    shutil.copytree(tiny_benchmark / "ref_ytvos", root)
    p = root / "meta_expressions" / "train" / "meta_expressions.json"
    meta = json.loads(p.read_text())
    vid = next(iter(meta["videos"]))
    first = next(iter(meta["videos"][vid]["expressions"]))
    meta["videos"][vid]["expressions"][first]["obj_id"] = "42"
    p.write_text(json.dumps(meta))
    with pytest.raises(DatasetFormatError, match=r"meta.json: obj_id '42'"):
        RefYTVOSSource(root, "train")


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_refs_pickle_with_code_is_refused(tiny_benchmark, tmp_path):
    root = tmp_path / "rc"
    shutil.copytree(tiny_benchmark / "refcoco", root)
    p = root / "refcoco" / "refs(unc).p"
    p.write_bytes(pickle.dumps([{"ref_id": 1, "x": _Evil()}]))
    with pytest.raises(DatasetFormatError, match=r"refs\(unc\)\.p.*refuses to load global"):
        RefCOCOSource(root)
    p.write_bytes(b"garbage")
    with pytest.raises(DatasetFormatError, match=r"refs\(unc\)\.p"):
        load_refs(p)
    assert io  # (imported for parity with readers that take file objects)


def test_davis_needs_four_per_object(tiny_benchmark, tmp_path):
    root = tmp_path / "d"
    shutil.copytree(tiny_benchmark / "ref_davis", root)
    p = root / "meta_expressions" / "valid" / "meta_expressions.json"
    meta = json.loads(p.read_text())
    vid = next(iter(meta["videos"]))
    meta["videos"][vid]["expressions"].pop("0")
    p.write_text(json.dumps(meta))
    with pytest.raises(DatasetFormatError, match="four per object"):
        RefDAVISSource(root)


def test_expression_kinds_live_beside_the_real_files_and_every_reader_sees_them(tiny_benchmark, splits):
    r = tiny_benchmark
    for meta in ("mevis/valid_u/meta_expressions.json", "ref_ytvos/meta_expressions/train/meta_expressions.json",
                 "ref_davis/meta_expressions/valid/meta_expressions.json"):
        assert "kind" not in (r / meta).read_text()  # the real-format files stay exactly real
        assert (r / meta).with_name("expression_kinds.json").exists()
    mevis = MevisSource(r / "mevis" / "valid_u")
    want = {(v.video_id, e.exp_id): e.kind for v in splits["valid_u"].values() for e in v.expressions}
    assert {(e.video_id, e.exp_id): e.kind for e in mevis.expressions} == want
    for source in (RefYTVOSSource(r / "ref_ytvos", "train"), RefDAVISSource(r / "ref_davis", "valid")):
        assert source.expressions and all(e.kind in ("colour", "multi-object") for e in source.expressions)


def test_a_kinds_sidecar_with_an_unknown_kind_is_refused(tiny_benchmark, tmp_path):
    split = tmp_path / "valid_u"
    shutil.copytree(tiny_benchmark / "mevis" / "valid_u", split)
    kinds = json.loads((split / "expression_kinds.json").read_text())
    vid = next(iter(kinds))
    kinds[vid]["0"] = "colur"
    (split / "expression_kinds.json").write_text(json.dumps(kinds))
    with pytest.raises(DatasetFormatError, match="expression_kinds.json.*colur"):
        MevisSource(split)
