"""rvosflow.evaluate: the official MeViS / Ref-YTVOS (per expression) and Ref-DAVIS17 (DAVIS per
object, per annotator set) aggregations, missing predictions scored 0 and reported, zips."""

from __future__ import annotations

import json
import shutil
import zipfile

import numpy as np
import pytest
import torch

from rvosflow.evaluate import compare, db_statistics, evaluate, main, merged_labels, open_source, score_davis_video
from rvosflow.metrics import JandF
from rvosflow.predict import write_masks


def write_gt_predictions(source, out, corrupt=None):
    for e in source.expressions:
        m = source.load_target(e)
        if corrupt is not None:
            m = corrupt(e, m)
        write_masks(out, e.video_id, e.exp_id, e.frame_names, m)


def shift(e, m):
    return np.roll(m, 2, axis=2)  # a wrong-but-overlapping prediction


def shifted_predictions(src, pred_dir):
    """Write ``shift``-ed predictions for every expression of ``src``; return the JandF metric
    fed the same masks (with their kinds), the reference the evaluator must agree with."""
    write_gt_predictions(src, pred_dir, shift)
    metric = JandF()
    for e in src.expressions:
        gt = src.load_target(e)
        metric.update(torch.as_tensor(shift(e, gt)), torch.as_tensor(gt), kinds=[e.kind])
    return metric


def test_mevis_perfect_predictions_score_100(tiny_benchmark, tmp_path):
    src = open_source("mevis", tiny_benchmark / "mevis", "valid_u")
    write_gt_predictions(src, tmp_path / "p")
    r = evaluate("mevis", tiny_benchmark / "mevis", "valid_u", tmp_path / "p", tmp_path / "s.json")
    assert r["JF"] == pytest.approx(100) and r["J"] == pytest.approx(100) and not r["missing"]
    assert r["expressions"] == len(src) and json.loads((tmp_path / "s.json").read_text())["JF"] == pytest.approx(100)
    assert "submission" not in r  # valid_u is scored locally, not zipped


def test_mevis_aggregation_matches_per_expression_means_and_missing_scores_zero(tiny_benchmark, tmp_path):
    src = open_source("mevis", tiny_benchmark / "mevis", "valid_u")
    metric = shifted_predictions(src, tmp_path / "p")
    ref = {k: 100 * float(v) for k, v in metric.compute().items()}
    r = evaluate("mevis", tiny_benchmark / "mevis", "valid_u", tmp_path / "p")
    assert r["J"] == pytest.approx(ref["J"]) and r["F"] == pytest.approx(ref["F"]) and r["JF"] == pytest.approx(ref["JF"])
    assert 0 < r["JF"] < 100
    # Remove one expression and one frame of another: both score 0 and are reported.
    e0, e1 = src.expressions[0], src.expressions[1]
    shutil.rmtree(tmp_path / "p" / e0.video_id / e0.exp_id)
    (tmp_path / "p" / e1.video_id / e1.exp_id / f"{e1.frame_names[3]}.png").unlink()
    r2 = evaluate("mevis", tiny_benchmark / "mevis", "valid_u", tmp_path / "p")
    assert {(m["video"], m["exp_id"]) for m in r2["missing"]} == {(e0.video_id, e0.exp_id), (e1.video_id, e1.exp_id)}
    assert r2["per_expression"][f"{e0.video_id}/{e0.exp_id}"]["JF"] == 0
    n = len(src)
    expect = (r["JF"] * n - r["per_expression"][f"{e0.video_id}/{e0.exp_id}"]["JF"]
              - r["per_expression"][f"{e1.video_id}/{e1.exp_id}"]["JF"]) / n
    assert r2["JF"] == pytest.approx(expect)


def test_wrong_resolution_is_refused(tiny_benchmark, tmp_path):
    src = open_source("mevis", tiny_benchmark / "mevis", "valid_u")
    e = src.expressions[0]
    write_masks(tmp_path / "p", e.video_id, e.exp_id, e.frame_names, np.zeros((len(e.frame_names), 8, 8), bool))
    with pytest.raises(ValueError, match="original resolution"):
        evaluate("mevis", tiny_benchmark / "mevis", "valid_u", tmp_path / "p")


def test_ref_ytvos_valid_is_zipped_in_the_server_layout(tiny_benchmark, tmp_path):
    src = open_source("ref_ytvos", tiny_benchmark / "ref_ytvos", "valid")
    write_gt_predictions(src, tmp_path / "p")
    e = src.expressions[-1]
    shutil.rmtree(tmp_path / "p" / e.video_id / e.exp_id)
    rc = main(["--benchmark", "ref_ytvos", "--root", str(tiny_benchmark / "ref_ytvos"), "--split", "valid",
               "--predictions", str(tmp_path / "p"), "--out", str(tmp_path / "ytvos.json")])
    assert rc == 0
    r = json.loads((tmp_path / "ytvos.json").read_text())
    z = zipfile.ZipFile(r["submission"]["zip"])
    names = z.namelist()
    first = src.expressions[0]
    assert f"Annotations/{first.video_id}/{first.exp_id}/{first.frame_names[0]}.png" in names
    assert all(n.startswith("Annotations/") and n.count("/") == 3 for n in names)
    assert len(names) == sum(len(x.frame_names) for x in src.expressions[:-1])
    assert r["submission"]["missing"][0]["exp_id"] == e.exp_id
    # The synthetic valid split has masks, so it is also scored locally (the missing one at 0).
    assert r["JF"] == pytest.approx(100 * (len(src) - 1) / len(src))


def test_ref_davis_perfect_and_per_set(tiny_benchmark, tmp_path):
    src = open_source("ref_davis", tiny_benchmark / "ref_davis", "valid")
    write_gt_predictions(src, tmp_path / "p")
    for task in ("unsupervised", "semi-supervised"):
        r = evaluate("ref_davis", tiny_benchmark / "ref_davis", "valid", tmp_path / "p", davis_task=task)
        assert set(r["sets"]) == {"annot1_first_frame", "annot1_full_video", "annot2_first_frame", "annot2_full_video"}
        for s in r["sets"].values():
            assert s["JF"] == pytest.approx(100) and s["objects"] > 0
        assert r["JF"] == pytest.approx(100) and not r["missing"]


def test_ref_davis_missing_expression_is_reported_and_the_mean_is_over_sets(tiny_benchmark, tmp_path):
    src = open_source("ref_davis", tiny_benchmark / "ref_davis", "valid")
    write_gt_predictions(src, tmp_path / "p", shift)
    e = [x for x in src.expressions if x.annotator == 2][0]
    shutil.rmtree(tmp_path / "p" / e.video_id / e.exp_id)
    r = evaluate("ref_davis", tiny_benchmark / "ref_davis", "valid", tmp_path / "p")
    assert r["missing"] == [{"set": "annot2_first_frame", "video": e.video_id, "exp_id": e.exp_id,
                             "missing_frames": len(e.frame_names), "frames": len(e.frame_names)}]
    sets = r["sets"]
    assert r["J"] == pytest.approx(np.mean([s["J"] for s in sets.values()]))
    assert r["JF"] == pytest.approx((r["J"] + r["F"]) / 2)
    assert sets["annot2_first_frame"]["JF"] < sets["annot1_first_frame"]["JF"]


def test_davis_video_scoring_matches_by_hungarian_or_by_id():
    gt = np.zeros((4, 16, 16), np.uint8)
    gt[:, 2:6, 2:6] = 1
    gt[:, 9:14, 9:14] = 2
    swapped = np.where(gt == 1, 2, np.where(gt == 2, 1, 0)).astype(np.uint8)
    un = score_davis_video(gt, swapped, "unsupervised", "x")
    assert all(j.mean() == 1 and f.mean() == 1 for j, f in un)  # matching ignores label ids
    semi = score_davis_video(gt, swapped, "semi-supervised", "x")
    assert len(semi) == 2 and len(semi[0][0]) == 2  # first and last frames dropped
    assert all(j.mean() == 0 for j, _ in semi)
    one = score_davis_video(gt, (gt == 1).astype(np.uint8), "unsupervised", "x")
    assert sorted(j.mean() for j, _ in one) == [0.0, 1.0]  # a missing object is zero-padded
    void = gt.copy()
    void[:, 0, :] = 255
    assert all(j.mean() == 1 for j, _ in score_davis_video(void, gt.copy(), "unsupervised", "x"))


def test_merged_labels_first_object_wins_and_db_statistics():
    a = np.zeros((1, 4, 4), bool)
    a[0, :2] = True
    b = np.zeros((1, 4, 4), bool)
    b[0, 1:3] = True
    lab = merged_labels([a, b, None], (1, 4, 4))
    assert lab[0, 0, 0] == 1 and lab[0, 1, 0] == 1 and lab[0, 2, 0] == 2 and lab[0, 3, 0] == 0
    M, R, D = db_statistics(np.array([1.0, 0.9, 0.8, 0.4, 0.3, 0.2, 0.1, 0.0]))
    assert M == pytest.approx(0.4625) and R == pytest.approx(0.375)
    # 8 frames: ids = round(linspace(1, 8, 5)) - 1 = [0, 2, 3, 5, 7]: first bin [0:3], last [5:8]
    assert D == pytest.approx(np.mean([1.0, 0.9, 0.8]) - np.mean([0.2, 0.1, 0.0]))


def test_videos_subset_scores_only_the_first_videos(tiny_benchmark, tmp_path):
    src = open_source("ref_davis", tiny_benchmark / "ref_davis", "valid")
    first = src.video_ids()[0]
    for e in src.expressions:
        if e.video_id == first:
            write_masks(tmp_path / "p", e.video_id, e.exp_id, e.frame_names, src.load_target(e))
    r = evaluate("ref_davis", tiny_benchmark / "ref_davis", "valid", tmp_path / "p", videos=1)
    assert r["videos"] == 1 and r["subset"] and not r["missing"] and r["JF"] == pytest.approx(100)
    assert evaluate("ref_davis", tiny_benchmark / "ref_davis", "valid", tmp_path / "p")["missing"]
    with pytest.raises(ValueError, match="--videos: expected a positive number"):
        evaluate("ref_davis", tiny_benchmark / "ref_davis", "valid", tmp_path / "p", videos=0)


def test_per_kind_scores_agree_between_evaluate_and_the_metric(tiny_benchmark, tmp_path):
    """Both report J&F per expression kind (expression_kinds.json), with the same values."""
    src = open_source("mevis", tiny_benchmark / "mevis", "valid_u")
    metric = shifted_predictions(src, tmp_path / "p")
    from rvosflow.metrics import by_kind

    ref = by_kind(metric.compute())
    r = evaluate("mevis", tiny_benchmark / "mevis", "valid_u", tmp_path / "p")
    assert set(r["per_kind"]) == set(ref) == {e.kind for e in src.expressions}
    for kind, scores in ref.items():
        assert r["per_kind"][kind]["n"] == scores["n"] == sum(e.kind == kind for e in src.expressions)
        for m in ("J", "F", "JF"):
            assert r["per_kind"][kind][m] == pytest.approx(scores[m])
    assert sum(s["n"] for s in r["per_kind"].values()) == r["expressions"]
    with pytest.raises(ValueError, match="unknown expression kind"):
        metric.update(torch.zeros(1, 2, 2, dtype=torch.bool), torch.zeros(1, 2, 2, dtype=torch.bool), kinds=["shape"])


def test_soft_prediction_pngs_are_an_error_with_count_and_first_files(tiny_benchmark, tmp_path, capsys):
    # The case: soft PNG values (1-100) were scored as object without a word.
    from PIL import Image

    src = open_source("mevis", tiny_benchmark / "mevis", "valid_u")
    write_gt_predictions(src, tmp_path / "p")
    soft = []
    for e in src.expressions:
        for n in e.frame_names:
            path = tmp_path / "p" / e.video_id / e.exp_id / f"{n}.png"
            mask = np.asarray(Image.open(path)) > 0
            if mask.any() and len(soft) < 2:  # object = 100: a soft PNG
                Image.fromarray(np.where(mask, 100, 0).astype(np.uint8), mode="L").save(path)
                soft.append(path)
    assert len(soft) == 2
    with pytest.raises(ValueError, match=rf"expected binary PNGs \(0/255 or 0/1\), found 2 of \d+ .*{soft[0].name}"):
        evaluate("mevis", tiny_benchmark / "mevis", "valid_u", tmp_path / "p")
    rc = main(["--benchmark", "mevis", "--root", str(tiny_benchmark / "mevis"), "--split", "valid_u",
               "--predictions", str(tmp_path / "p"), "--out", str(tmp_path / "s.json")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: --predictions:") and len(err.strip().splitlines()) == 1
    # 0/1 masks are binary too
    for path in soft:
        Image.fromarray((np.asarray(Image.open(path)) > 0).astype(np.uint8), mode="L").save(path)
    assert evaluate("mevis", tiny_benchmark / "mevis", "valid_u", tmp_path / "p")["JF"] == pytest.approx(100)


# ----------------------------------------------------------------------------- temporal consistency,
# per-expression records, slices, --compare


def hand_made_mevis(root):
    """A MeViS split by hand: one 4-frame 8x8 video, one expression whose prediction scores per-frame
    J = 1, 1/2, 0 and, on the last frame (target absent, nothing predicted), 1 by DAVIS semantics.
    TC = (|1/2 - 1| + |0 - 1/2| + |1 - 0|) / 3 = 2/3; J = 2.5/4."""
    from rvosflow.data.formats.mevis import write_mevis
    from rvosflow.data.schema import Expression, Video

    gt = np.zeros((4, 8, 8), bool)
    pred = np.zeros_like(gt)
    gt[0, 2:4, 2:4] = pred[0, 2:4, 2:4] = True
    gt[1, 2:4, 2:4] = True
    pred[1, 2:4, 2] = True
    gt[2, 2:4, 2:4] = True
    pred[2, 5:7, 5:7] = True
    video = Video("vid0", np.full((4, 8, 8, 3), 128, np.uint8), {1: gt},
                  [Expression("0", "the square", [1], kind="motion")])
    write_mevis(root / "valid_u", [video])
    return pred, video


def test_evaluate_prints_and_writes_temporal_consistency_on_a_hand_made_case(tmp_path, capsys):
    pred, video = hand_made_mevis(tmp_path / "mevis")
    write_masks(tmp_path / "p", "vid0", "0", video.frame_names, pred)
    rc = main(["--benchmark", "mevis", "--root", str(tmp_path / "mevis"), "--split", "valid_u",
               "--predictions", str(tmp_path / "p"), "--out", str(tmp_path / "s.json"), "--slices", "absent,length"])
    out = capsys.readouterr().out
    assert rc == 0
    first = out.splitlines()[0]
    assert first.startswith("mevis/valid_u: J&F ") and "J 62.50" in first and "TC 66.67" in first
    assert "lower is better" in first
    assert any(line.split()[:1] == ["motion"] and "TC 66.67" in line for line in out.splitlines())
    r = json.loads((tmp_path / "s.json").read_text())
    assert r["TC"] == pytest.approx(200 / 3) and r["TC_expressions"] == 1
    assert r["per_kind"]["motion"]["TC"] == pytest.approx(200 / 3) and r["per_expression"]["vid0/0"]["TC"] == pytest.approx(200 / 3)
    # the absent-target frame: predicted empty, so J = F = 1 there; the present frames score J 1.5/3
    assert r["slices"]["absent"]["absent"] == {"J": 100.0, "F": 100.0, "JF": 100.0, "T": None, "n": 1,
                                               "frames": 1, "pred_empty": 1.0}
    assert r["slices"]["absent"]["present"]["J"] == pytest.approx(50.0) and list(r["slices"]["length"]) == ["2-16"]
    assert "absent absent" in out and "100.0% predicted empty" in out
    # the per-expression sidecar beside --out
    from rvosflow.metrics.records import read_records

    assert r["per_expression_file"] == str(tmp_path / "s.per_expression.csv")
    (rec,) = read_records(tmp_path / "s.per_expression.csv")
    assert rec.key == ("vid0", "0") and rec.kind == "motion" and rec.J == 0.625 and rec.TC == pytest.approx(2 / 3)
    assert rec.empty_frames == rec.both_empty_frames == 1 and rec.target_area == 4 / 64


def test_records_aggregate_to_the_same_scores_as_the_metric(tiny_benchmark, tmp_path):
    from rvosflow.metrics.records import flat_scores, read_records

    src = open_source("mevis", tiny_benchmark / "mevis", "valid_u")
    metric = shifted_predictions(src, tmp_path / "p")
    r = evaluate("mevis", tiny_benchmark / "mevis", "valid_u", tmp_path / "p", tmp_path / "s.json")
    records = read_records(r["per_expression_file"])
    assert [x.key for x in records] == [(e.video_id, e.exp_id) for e in src.expressions]
    ref = {k: float(v) for k, v in metric.compute().items()}
    flat = flat_scores(records)
    assert all(flat[k] == v for k, v in ref.items())  # exact: the sidecar round trip loses nothing
    assert r["JF"] == 100 * ref["JF"] and r["TC"] is not None and r["TC"] > 0
    assert sum(s["n"] for s in evaluate("mevis", tiny_benchmark / "mevis", "valid_u", tmp_path / "p",
                                        slices=["size"])["slices"]["size"].values()) == len(src)


def test_ref_davis_reports_temporal_consistency(tiny_benchmark, tmp_path):
    src = open_source("ref_davis", tiny_benchmark / "ref_davis", "valid")
    write_gt_predictions(src, tmp_path / "p")
    r = evaluate("ref_davis", tiny_benchmark / "ref_davis", "valid", tmp_path / "p")
    assert r["TC"] == 0.0 and all(s["TC"] == 0.0 for s in r["sets"].values())  # perfect: J = 1 on every frame
    write_gt_predictions(src, tmp_path / "q", shift)
    r = evaluate("ref_davis", tiny_benchmark / "ref_davis", "valid", tmp_path / "q")
    assert r["TC"] == pytest.approx(np.mean([s["TC"] for s in r["sets"].values()])) and r["TC"] > 0
    with pytest.raises(ValueError, match="--slices: expected a per-expression benchmark"):
        evaluate("ref_davis", tiny_benchmark / "ref_davis", "valid", tmp_path / "q", slices=["length"])


def test_compare_two_prediction_folders_or_their_per_expression_files(tiny_benchmark, tmp_path, capsys):
    src = open_source("mevis", tiny_benchmark / "mevis", "valid_u")
    write_gt_predictions(src, tmp_path / "good")
    write_gt_predictions(src, tmp_path / "shifted", shift)
    split = ["--benchmark", "mevis", "--root", str(tiny_benchmark / "mevis"), "--split", "valid_u"]
    rc = main(["--compare", str(tmp_path / "good"), str(tmp_path / "shifted"), *split, "--out", str(tmp_path / "c.json")])
    out = capsys.readouterr().out
    r = json.loads((tmp_path / "c.json").read_text())
    d = r["delta_JF"]
    # every expression is better with the ground truth: every resample's mean difference is > 0
    assert rc == 0 and d["significant"] and 0 < d["low"] <= d["delta"] <= d["high"]
    assert d["delta"] == pytest.approx(r["run_scores"]["JF"] - r["reference_scores"]["JF"])
    assert d["n_expressions"] == len(src) and d["seed"] == 25 and d["n_resamples"] == 10_000
    assert "significant (the CI excludes 0)" in out and f"{d['delta']:+.2f} points" in out
    # the same from the per-expression files that scoring wrote
    for name in ("good", "shifted"):
        evaluate("mevis", tiny_benchmark / "mevis", "valid_u", tmp_path / name, tmp_path / f"{name}.json")
    files = compare(tmp_path / "good.per_expression.csv", tmp_path / "shifted.per_expression.csv")
    assert files["delta_JF"] == d
    for name in ("good", "shifted"):  # two run folders: the records their closing scores wrote
        (tmp_path / f"run-{name}").mkdir()
        (tmp_path / f"run-{name}" / "results.json").write_text("{}")
        shutil.copy(tmp_path / f"{name}.per_expression.csv", tmp_path / f"run-{name}" / "results.per_expression.csv")
    assert compare(tmp_path / "run-good", tmp_path / "run-shifted")["delta_JF"] == d
    same = compare(tmp_path / "shifted.per_expression.csv", tmp_path / "shifted", "mevis", tiny_benchmark / "mevis",
                   "valid_u", n_resamples=200)
    assert (same["delta_JF"]["low"], same["delta_JF"]["high"]) == (0.0, 0.0) and not same["delta_JF"]["significant"]


def test_compare_and_scoring_errors_are_one_line(tiny_benchmark, tmp_path, capsys):
    src = open_source("mevis", tiny_benchmark / "mevis", "valid_u")
    write_gt_predictions(src, tmp_path / "p")
    evaluate("mevis", tiny_benchmark / "mevis", "valid_u", tmp_path / "p", tmp_path / "all.json")
    evaluate("mevis", tiny_benchmark / "mevis", "valid_u", tmp_path / "p", tmp_path / "one.json", videos=1)
    first = src.video_ids()[1]
    cases = [
        (["--compare", str(tmp_path / "one.per_expression.csv"), str(tmp_path / "all.per_expression.csv")],
         f"error: {tmp_path / 'one.per_expression.csv'}: expected the expressions of {tmp_path / 'all.per_expression.csv'}, "
         f"found that it lacks"),
        (["--compare", str(tmp_path / "p"), str(tmp_path / "all.per_expression.csv")],
         f"error: --compare: expected --benchmark, --root, --split to score the predictions folder {tmp_path / 'p'}, found none"),
        (["--compare", str(tmp_path / "nothing"), str(tmp_path / "all.per_expression.csv")],
         "error: --compare: expected a per-expression CSV file or a predictions folder, found nothing at"),
        (["--compare", str(tmp_path / "all.json"), str(tmp_path / "all.per_expression.csv")],
         f"error: {tmp_path / 'all.json'}: expected the header video_id,exp_id,kind"),
        (["--benchmark", "mevis", "--root", str(tiny_benchmark / "mevis"), "--split", "valid_u",
          "--predictions", str(tmp_path / "p")], "error: --out: expected a value (needed to score predictions), found none"),
        (["--benchmark", "mevis", "--root", str(tiny_benchmark / "mevis"), "--split", "valid_u", "--predictions",
          str(tmp_path / "p"), "--out", str(tmp_path / "x.json"), "--slices", "length,kinds"],
         "error: --slices: expected slice names among length, size, absent, found 'kinds'"),
    ]
    errs = []
    for argv, message in cases:
        assert main(argv) == 2, argv
        errs.append(capsys.readouterr().err)
        assert errs[-1].startswith(message) and len(errs[-1].strip().splitlines()) == 1, (argv, errs[-1])
    lacking = [e for e in src.expressions if e.video_id != src.video_ids()[0]]
    assert f"lacks {len(lacking)} of the {len(src)} expressions ({first}/{lacking[0].exp_id}, " in errs[0]
