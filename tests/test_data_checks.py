"""Issue 22, rule 6: the data checks at setup match the promise. An RLE's runs sum to H*W, a split
holds at least one expression, a JPEG (or PNG) is complete: each is found by the setup check with
the rest, in one line naming the file and the entry, before any model is loaded. And every cache
(latent, text) treats an entry it cannot read back as a miss, computed again and rewritten."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from settings import tiny_run

from rvosflow.caches import LatentCache, TextCache, TextCacheMiss
from rvosflow.config import compose, resolve
from rvosflow.data.check import find_problems
from rvosflow.data.datamodules import from_config
from rvosflow.data.formats import (
    DatasetFormatError,
    MevisSource,
    RefCOCOSource,
    RefYTVOSSource,
)
from rvosflow.data.formats.base import rle_encode, rle_string_totals
from rvosflow.errors import ConfigError, report
from rvosflow.train import run

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def datamodule(cfg):
    """The DataModule a run of ``cfg`` builds (frame sides floored to 16)."""
    return from_config(resolve(cfg).data, 16)


@pytest.fixture
def bench(tiny_benchmark, tmp_path):
    """A private copy of the tiny benchmark (32x32 frames) to corrupt."""
    return shutil.copytree(tiny_benchmark, tmp_path / "b")


def overrides(bench, bundle_dir, tmp_path, *extra):
    return tiny_run(bench, bundle_dir, f"sqlite:///{tmp_path / 'mlflow.db'}", *extra)


def fails_before_any_work(bench, bundle_dir, tmp_path, capsys, *extra) -> str:
    """run() refuses the data with one line, before a run folder, an MLflow run or a model exists."""
    with pytest.raises(DatasetFormatError) as err:
        run(compose(overrides(bench, bundle_dir, tmp_path, *extra)), tmp_path / "run")
    assert not (tmp_path / "run").exists() and not (tmp_path / "mlflow.db").exists()
    capsys.readouterr()
    assert report(err.value) == 2
    line = capsys.readouterr().err
    assert line.startswith("error: data: expected every split to hold expressions") and line.count("\n") == 1, line
    return str(err.value)


def reference_counts(s: str) -> list[int] | None:
    """pycocotools' rleFrString (maskApi.c) read literally, one character at a time, in exact
    integers; None where it is not RLE counts (as rle_string_totals defines them)."""
    counts, p = [], 0
    while p < len(s):
        x = k = 0
        more = True
        while more:
            if p == len(s) or not 48 <= ord(s[p]) <= 111:
                return None
            c = ord(s[p]) - 48
            x |= (c & 0x1F) << 5 * k
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x -= 1 << 5 * k
        if k > 6:
            return None
        if len(counts) > 2:
            x += counts[-2]
        if x < 0:
            return None
        counts.append(x)
    return counts


def compress(counts: list[int]) -> str:
    """pycocotools' rleToString for any list of counts (negative ones too, to build bad input)."""
    out = []
    for i, x in enumerate(counts):
        if i > 2:
            x -= counts[i - 2]
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = x != -1 if c & 0x10 else x != 0
            out.append(chr(48 + (c | 0x20 if more else c)))
    return "".join(out)


def first_rle(split: Path):
    """(mask_dict, anno_id, frame index) of the first non-null RLE of a MeViS split."""
    masks = json.loads((split / "mask_dict.json").read_text())
    anno = next(a for a, rles in masks.items() if any(rles))
    return masks, anno, next(i for i, r in enumerate(masks[anno]) if r)


def frame_name(split: Path, anno: str, t: int) -> tuple[str, str]:
    src = MevisSource(split)
    expr = next(e for e in src.expressions if anno in src._annos[(e.video_id, e.exp_id)])
    return expr.video_id, expr.frame_names[t]


def mask_of(h, w):
    m = np.zeros((h, w), bool)
    m[4:20, 6:30] = True
    return m


# ----------------------------------------------------------------------------- RLE runs sum to H*W
def test_the_decoder_reads_what_pycocotools_writes_and_reads():
    rng = np.random.default_rng(0)
    shapes = [tuple(rng.integers(1, 70, 2)) for _ in range(300)] + [(720, 1280), (1, 1)]
    masks = [rng.random(s) < rng.random() for s in shapes]
    strings = [mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))["counts"].decode() for m in masks]
    assert rle_string_totals(strings).tolist() == [h * w for h, w in shapes]
    # Random strings of RLE characters, decoded together: the same sums as the literal reading, and
    # a negative code exactly where it says "not RLE".
    randoms = ["".join(chr(48 + v) for v in rng.integers(0, 64, rng.integers(0, 14))) for _ in range(5000)]
    randoms += ["garbage!!", "é1", "", "P", "ooooooo0", compress([5, 10, 3, -1, 2])]
    for s, total in zip(randoms, rle_string_totals(randoms).tolist()):
        ref = reference_counts(s)
        assert (total < 0) if ref is None else total == sum(ref), (s, total, ref)
    # pycocotools agrees: what sums to T decodes at T pixels and is refused at T - 1.
    decodable = [s for s, t in zip(randoms, rle_string_totals(randoms).tolist()) if 1 < t < 100_000][:300]
    assert len(decodable) == 300
    for s in decodable:
        total = sum(reference_counts(s))
        decoded = mask_utils.decode({"size": [1, total], "counts": s.encode()})
        assert decoded.sum() == mask_utils.area({"size": [1, total], "counts": s.encode()})
        with pytest.raises(ValueError):
            mask_utils.decode({"size": [1, total - 1], "counts": s.encode()})


@pytest.mark.parametrize("counts,total", [
    ("i8f0Z1", 345),  # the string: valid syntax, decoded silently to another mask before
    (rle_encode(mask_of(32, 33))["counts"], 32 * 33),  # a mask one column wider
    (rle_encode(mask_of(32, 31))["counts"], 32 * 31),  # one column narrower
    (compress([0, 1000]), 1000),
])
def test_rle_runs_that_do_not_sum_to_the_frame_are_found_at_setup(bench, counts, total):
    split = bench / "mevis" / "valid_u"
    masks, anno, t = first_rle(split)
    masks[anno][t]["counts"] = counts  # size stays [32, 32]
    (split / "mask_dict.json").write_text(json.dumps(masks))
    vid, frame = frame_name(split, anno, t)
    line = (f"{split / 'mask_dict.json'}: anno_id '{anno}' frame '{frame}' (video '{vid}'): "
            f"expected RLE runs summing to 1024 (H*W of [32, 32]), found {total}")
    assert find_problems([MevisSource(split)]) == [line]
    src = MevisSource(split)  # and when loading (rvosflow.evaluate reads ground truth this way)
    expr = next(e for e in src.expressions if anno in src._annos[(e.video_id, e.exp_id)])
    with pytest.raises(DatasetFormatError) as err:
        src.load_target(expr)
    assert str(err.value) == line


@pytest.mark.parametrize("counts,reason", [
    ("garbage!!", "a character outside '0'..'o'"),
    ("hello world", "a character outside '0'..'o'"),
    ("PPP", "its last count cut short"),
    (compress([0, 1024])[:-1] + "P", "its last count cut short"),
    ("0" + "P" * 6 + "0", "a count of more than 6 characters"),
    (compress([10, 5, 999, -1, 11]), "a negative run"),
])
def test_counts_that_are_not_rle_are_found_at_setup(bench, counts, reason):
    # Before: pycocotools' "Invalid RLE mask representation" after the model loaded (or, for a
    # negative run, a run of 4e9 pixels).
    split = bench / "mevis" / "valid_u"
    masks, anno, t = first_rle(split)
    masks[anno][t]["counts"] = counts
    (split / "mask_dict.json").write_text(json.dumps(masks))
    vid, frame = frame_name(split, anno, t)
    assert find_problems([MevisSource(split)]) == [
        f"{split / 'mask_dict.json'}: anno_id '{anno}' frame '{frame}' (video '{vid}'): "
        f"expected compressed COCO RLE counts, found {counts[:40]!r}, not RLE ({reason})"]


@pytest.mark.parametrize("segmentation,found", [
    ({"size": [32, 32], "counts": [100, 24, 800]}, "expected RLE runs summing to 1024 (H*W of [32, 32]), found 924"),
    ({"size": [32, 32], "counts": [1000, -10, 34]}, "expected RLE counts as run lengths (integers >= 0), found -10"),
    ({"size": [32, 32], "counts": rle_encode(mask_of(32, 31))["counts"]},
     "expected RLE runs summing to 1024 (H*W of [32, 32]), found 992"),
    ({"size": [32, 32], "counts": "not an RLE"},
     "expected compressed COCO RLE counts, found 'not an RLE', not RLE (a character outside '0'..'o')"),
])
def test_refcoco_rle_segmentations_are_checked_the_same_way(bench, segmentation, found):
    inst = bench / "refcoco" / "refcoco" / "instances.json"
    src = RefCOCOSource(bench / "refcoco", "refcoco")
    ann_id, image = src.expressions[0].obj_ids[0], src.expressions[0].video_id
    data = json.loads(inst.read_text())
    next(a for a in data["annotations"] if a["id"] == ann_id)["segmentation"] = segmentation
    inst.write_text(json.dumps(data))
    assert find_problems([RefCOCOSource(bench / "refcoco", "refcoco")]) == [f"{inst}: annotation {ann_id} (image {image}): {found}"]


# ----------------------------------------------------------------------------- a split holds an expression
def empty(meta: Path, keep_videos: bool = False):
    """No expression left: ``{"videos": {}}``, or every video kept with no expressions."""
    data = json.loads(meta.read_text())
    videos = {v: {**r, "expressions": {}} for v, r in data["videos"].items()} if keep_videos else {}
    meta.write_text(json.dumps({"videos": videos}))


@pytest.mark.parametrize("data,emptied,mode,extra", [
    ("synthetic", "mevis/train/meta_expressions.json", "train", []),
    ("synthetic", "mevis/valid_u/meta_expressions.json", "train", []),
    ("synthetic", "mevis/valid_u/meta_expressions.json", "validate", []),
    ("synthetic", "mevis/valid/meta_expressions.json", "predict", ["data.predict_split=valid"]),
    ("synthetic_ytvos", "ref_ytvos/meta_expressions/train/meta_expressions.json", "train", []),
    ("synthetic_ytvos", "ref_ytvos/meta_expressions/valid/meta_expressions.json", "predict", []),
    ("synthetic_davis", "ref_davis/meta_expressions/valid/meta_expressions.json", "validate", []),
    ("synthetic_mixed", "mevis/valid_u/meta_expressions.json", "train", []),
])
def test_an_empty_split_is_named_at_setup_in_every_format(bench, data, emptied, mode, extra):
    fmt = emptied.split("/")[0]
    cfg = compose([f"data={data}", f"data.root={bench / fmt}", f"data.image_root={bench / 'refcoco'}", *extra]
                  if data == "synthetic_mixed" else [f"data={data}", f"data.root={bench / fmt}", *extra])
    assert find_problems(datamodule(cfg).sources_read(mode)) == []
    empty(bench / emptied, keep_videos=emptied.startswith("ref_ytvos"))  # both shapes of "none"
    problems = find_problems(datamodule(cfg).sources_read(mode))
    assert problems == [f"{bench / emptied}: expected at least one expression, found none"]


def test_a_refcoco_split_without_sentences_names_the_splits_the_file_holds(bench):
    refs_path = bench / "refcoco" / "refcoco" / "refs(unc).p"
    refs = pickle.loads(refs_path.read_bytes())  # the tiny benchmark's refs are all train: one made testB
    refs_path.write_bytes(pickle.dumps([{**r, "split": "testB"} if i == 0 else {**r, "split": "train"}
                                        for i, r in enumerate(refs)], protocol=2))
    for data in ("synthetic_refcoco", "synthetic_mixed"):  # the val split; the mixed run's image part
        split = "val" if data == "synthetic_refcoco" else "train"
        cfg = compose([f"data={data}", f"data.root={bench / ('refcoco' if split == 'val' else 'mevis')}",
                       *([f"data.image_root={bench / 'refcoco'}", "data.image_split=val"] if split == "train" else [])])
        assert find_problems(datamodule(cfg).sources_read("train")) == [
            f"{refs_path}: expected at least one referring sentence in split 'val', found none "
            "(the file's splits: testB, train)"]


def test_an_empty_valid_u_fails_before_training(bench, test_bundle_dir, tmp_path, capsys):
    # The case. Before: trained, then IndexError: list index out of range.
    meta = bench / "mevis" / "valid_u" / "meta_expressions.json"
    meta.write_text('{"videos": {}}')
    msg = fails_before_any_work(bench, test_bundle_dir, tmp_path, capsys)
    assert msg.endswith(f"found 1 problem(s): {meta}: expected at least one expression, found none")


def test_a_training_split_smaller_than_a_batch_fails_before_any_work(bench, test_bundle_dir, tmp_path):
    # Before: "Trainer.fit stopped: No training batches", then the untrained model scored, exit 0.
    meta = bench / "mevis" / "train" / "meta_expressions.json"
    data = json.loads(meta.read_text())
    vid = sorted(data["videos"])[0]
    one = dict(list(data["videos"][vid]["expressions"].items())[:1])
    meta.write_text(json.dumps({"videos": {vid: {**data["videos"][vid], "expressions": one}}}))
    with pytest.raises(ConfigError) as err:
        run(compose(overrides(bench, test_bundle_dir, tmp_path)), tmp_path / "run")  # data.batch_size=2
    assert str(err.value) == (f"data.batch_size: expected at most 1, the expressions in data.train_split='train' "
                              f"({bench / 'mevis'}), got 2: no full batch, nothing would be trained")
    assert not (tmp_path / "run").exists() and not (tmp_path / "mlflow.db").exists()
    run_cfg = compose(overrides(bench, test_bundle_dir, tmp_path, "data.batch_size=1"))
    assert find_problems(datamodule(run_cfg).sources_read("train")) == []  # one batch of one: fine


# ----------------------------------------------------------------------------- a JPEG (PNG) is complete
def cut(path: Path, n: int) -> None:
    path.write_bytes(path.read_bytes()[:-n])


@pytest.mark.parametrize("missing", [1, 2, 100, "half"])
def test_a_jpeg_cut_short_is_found_at_setup(bench, missing):
    # Before: PIL's "image file is truncated" 20-25 s later, after the model loaded.
    split = bench / "mevis" / "train"
    vid = sorted(json.loads((split / "meta_expressions.json").read_text())["videos"])[0]
    jpg = sorted((split / "JPEGImages" / vid).glob("*.jpg"))[4]
    size = jpg.stat().st_size
    cut(jpg, size // 2 if missing == "half" else missing)
    (problem,) = find_problems([MevisSource(split)])
    assert problem.startswith(f"{jpg}: expected a complete frame image, found a JPEG cut short "
                              "(no end-of-image marker FF D9 in its last ")
    with pytest.raises(DatasetFormatError, match="truncated"):  # what loading it would say, late
        MevisSource(split).load_frames(vid)


@pytest.mark.parametrize("tail", [b"\0" * 1000, b"\0", b"trailer data after the image"])
def test_padding_or_a_trailer_after_the_end_marker_is_allowed(bench, tail):
    # What PIL and libjpeg read past is no problem: the check must not be stricter than the loader.
    split = bench / "mevis" / "train"
    vid = sorted(json.loads((split / "meta_expressions.json").read_text())["videos"])[0]
    jpg = sorted((split / "JPEGImages" / vid).glob("*.jpg"))[4]
    before = MevisSource(split).load_frames(vid)
    jpg.write_bytes(jpg.read_bytes() + tail)
    assert find_problems([MevisSource(split)]) == []
    assert np.array_equal(MevisSource(split).load_frames(vid), before)


def test_a_png_annotation_or_a_coco_image_cut_short_is_found_at_setup(bench):
    src = RefYTVOSSource(bench / "ref_ytvos", "train")
    e = src.expressions[0]
    png = bench / "ref_ytvos" / "train" / "Annotations" / e.video_id / f"{e.frame_names[3]}.png"
    cut(png, 12)  # the IEND chunk
    coco = RefCOCOSource(bench / "refcoco", "refcoco")
    jpg = coco.frame_paths(coco.expressions[0].video_id)[0]
    cut(jpg, jpg.stat().st_size // 3)
    (a,) = find_problems([RefYTVOSSource(bench / "ref_ytvos", "train")])
    assert a.startswith(f"{png}: expected a complete palette annotation image, found a PNG cut short (no IEND chunk in its last ")
    (b,) = find_problems([RefCOCOSource(bench / "refcoco", "refcoco")])
    assert b.startswith(f"{jpg}: expected a complete frame image, found a JPEG cut short")


# ----------------------------------------------------------------------------- all together, before any work
def test_every_kind_is_reported_together_before_any_work(bench, test_bundle_dir, tmp_path, capsys):
    train, valid = bench / "mevis" / "train", bench / "mevis" / "valid_u"
    vid = sorted(json.loads((train / "meta_expressions.json").read_text())["videos"])[0]
    jpg = sorted((train / "JPEGImages" / vid).glob("*.jpg"))[0]
    cut(jpg, 300)
    masks, anno, t = first_rle(valid)
    masks[anno][t]["counts"] = "i8f0Z1"
    masks[anno][t + 1]["counts"] = "garbage!!"
    (valid / "mask_dict.json").write_text(json.dumps(masks))
    msg = fails_before_any_work(bench, test_bundle_dir, tmp_path, capsys)
    assert "found 3 problem(s): " in msg
    assert f"{jpg}: expected a complete frame image, found a JPEG cut short" in msg
    assert "expected RLE runs summing to 1024 (H*W of [32, 32]), found 345" in msg
    assert "found 'garbage!!', not RLE" in msg


def test_run_py_exits_2_with_the_line_before_loading_the_model(bench, test_bundle_dir, tmp_path):
    # The bundle's DiT weights are zeroed (same size): reaching the model load would fail otherwise.
    bundle = shutil.copytree(test_bundle_dir, tmp_path / "bundle")
    for weights in (bundle / "transformer").glob("*.safetensors"):
        weights.write_bytes(b"\0" * weights.stat().st_size)
    valid = bench / "mevis" / "valid_u"
    masks, anno, t = first_rle(valid)
    masks[anno][t]["counts"] = "i8f0Z1"
    (valid / "mask_dict.json").write_text(json.dumps(masks))
    proc = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "run.py"), *overrides(bench, bundle, tmp_path), f"hydra.run.dir={tmp_path}/run"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    vid, frame = frame_name(valid, anno, t)
    assert proc.stderr == (
        "error: data: expected every split to hold expressions and every file it references complete and at its "
        f"video's size, found 1 problem(s): {valid / 'mask_dict.json'}: anno_id '{anno}' frame '{frame}' (video '{vid}'): "
        "expected RLE runs summing to 1024 (H*W of [32, 32]), found 345\n")
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "run" / "checkpoints").exists()


# ----------------------------------------------------------------------------- caches heal unreadable entries
def write_torn(path: Path, kind: str) -> None:
    """An entry that cannot be read back as what the cache wrote."""
    if kind == "truncated":
        path.write_bytes(path.read_bytes()[:-40])
    elif kind == "zero bytes":
        path.write_bytes(b"")
    elif kind == "garbage":
        path.write_bytes(os.urandom(path.stat().st_size))
    elif kind == "zeros":  # a file whose blocks were never written (a crash before the data reached the disk)
        path.write_bytes(b"\0" * path.stat().st_size)
    else:  # another structure, readable by torch.load
        torch.save({"dict": torch.ones(2)} if kind == "a dict" else torch.ones(3, 2) if kind == "a tensor"
                   else ["a", "b"] if kind == "a list of strings" else [], path)


TORN = ["truncated", "zero bytes", "garbage", "zeros", "a dict", "a tensor", "a list of strings", "an empty list"]


@pytest.mark.parametrize("kind", TORN)
def test_the_latent_cache_recomputes_and_rewrites_an_unreadable_entry(tmp_path, kind):
    calls = []

    def compute(positions):
        calls.append(list(positions))
        return [(torch.full((2,), 7.0), torch.ones(1)) for _ in positions]

    LatentCache(tmp_path).get_many(["k"], compute)
    (entry,) = tmp_path.glob("*.pt")
    write_torn(entry, kind)
    (got,) = LatentCache(tmp_path).get_many(["k"], compute)  # a fresh process: nothing in memory
    assert calls == [[0], [0]]
    assert [t.tolist() for t in got] == [[7.0, 7.0], [1.0]]
    (again,) = LatentCache(tmp_path).get_many(["k"], compute)  # rewritten: read back, not computed
    assert calls == [[0], [0]] and [t.tolist() for t in again] == [[7.0, 7.0], [1.0]]


@pytest.mark.parametrize("kind", [*TORN, "another caption's entry"])
def test_the_text_cache_counts_an_unreadable_entry_as_missing_and_rewrites_it(tmp_path, test_bundle, kind):
    caption, other = "the red circle", "the blue square"
    TextCache(tmp_path, 16).fill([caption, other], test_bundle.text_encoder, test_bundle.tokenizer)
    expected = TextCache(tmp_path, 16).embeddings([caption])
    path = TextCache(tmp_path, 16)._path(caption)
    if kind == "another caption's entry":
        shutil.copyfile(TextCache(tmp_path, 16)._path(other), path)
    else:
        write_torn(path, kind)
    cache = TextCache(tmp_path, 16)
    assert cache.missing([caption, other]) == [caption]  # what `ensure` asks before loading an encoder
    with pytest.raises(TextCacheMiss, match="no embedding for caption 'the red circle' and no text encoder"):
        cache.embeddings([caption])  # no encoder loaded: the one-line miss, not torch's error
    assert cache.fill([caption, other], test_bundle.text_encoder, test_bundle.tokenizer) == 1
    fresh = TextCache(tmp_path, 16)
    assert fresh.missing([caption]) == []
    assert torch.equal(fresh.embeddings([caption]), expected)


def test_ensure_loads_the_text_encoder_for_a_torn_entry(tiny_benchmark, test_bundle_dir, tmp_path, capsys):
    from rvosflow.text_cache import cache_dir, main

    args = ["--device", "cpu", *overrides(tiny_benchmark, test_bundle_dir, tmp_path,
                                          f"text_cache_dir={tmp_path / 'text'}", "data.eval_videos=1")]
    assert main(args) == 0
    n = int(capsys.readouterr().out.split()[0])
    directory = Path(cache_dir(compose(args[2:])))
    torn = sorted(directory.glob("*.pt"))[0]
    torn.write_bytes(torn.read_bytes()[:100])
    assert main(args) == 0  # one caption unreadable: the encoder is loaded for it alone
    assert f"{n} captions, 1 encoded, {n - 1} already cached" in capsys.readouterr().out
    assert main(args) == 0
    assert f"{n} captions, 0 encoded" in capsys.readouterr().out

