"""Per-expression records, REM's temporal consistency, the sidecar file and the slices."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from rvosflow.data.schema import EXPRESSION_KINDS
from rvosflow.metrics import JandF, by_kind
from rvosflow.metrics.functional import boundary_f, jaccard, temporal_consistency
from rvosflow.metrics.records import (
    COLUMNS,
    ExpressionRecord,
    RecordsFileError,
    expression_record,
    flat_scores,
    read_records,
    record_from_frames,
    sidecar_path,
    write_records,
)
from rvosflow.metrics.slices import LENGTH_BINS, SIZE_BINS, SLICES, check_slices, slice_scores


def same(a: ExpressionRecord, b: ExpressionRecord) -> bool:
    """Field-by-field equality with NaN equal to NaN."""
    for f in dataclasses.fields(ExpressionRecord):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, float) and math.isnan(x):
            if not (isinstance(y, float) and math.isnan(y)):
                return False
        elif x != y or type(x) is not type(y):
            return False
    return True


def hand_made():
    """4 frames of 8x8: J = 1, 1/2, 0, then both empty (J = 1 by DAVIS semantics)."""
    gt = np.zeros((4, 8, 8), bool)
    pred = np.zeros_like(gt)
    gt[0, 2:4, 2:4] = pred[0, 2:4, 2:4] = True  # identical: J = 1
    gt[1, 2:4, 2:4] = True
    pred[1, 2:4, 2] = True  # 2 of the 4 pixels: J = 2/4
    gt[2, 2:4, 2:4] = True
    pred[2, 5:7, 5:7] = True  # disjoint: J = 0
    return pred, gt  # frame 3: both empty


# --------------------------------------------------------------------------- temporal consistency


def test_temporal_consistency_is_the_mean_absolute_change_of_consecutive_ious():
    assert temporal_consistency([1.0, 0.5, 0.0, 1.0]) == pytest.approx(2 / 3, abs=1e-15)  # (.5 + .5 + 1) / 3
    assert temporal_consistency(torch.tensor([0.25, 0.25, 0.25], dtype=torch.float64)) == 0.0
    assert temporal_consistency(np.array([0.2, 0.9])) == pytest.approx(0.7)
    assert math.isnan(temporal_consistency([0.7]))  # one frame: no consecutive pair


# --------------------------------------------------------------------------- the record


def test_record_of_a_hand_made_expression():
    pred, gt = hand_made()
    r = expression_record(pred, gt, "v1", "3", "motion")
    assert jaccard(pred, gt).tolist() == [1.0, 0.5, 0.0, 1.0]
    assert r.video_id == "v1" and r.exp_id == "3" and r.kind == "motion" and r.key == ("v1", "3")
    assert r.frames == 4 and r.J == 2.5 / 4 and r.TC == pytest.approx(2 / 3, abs=1e-15)
    assert r.F == float(boundary_f(pred, gt).mean()) and r.JF == (r.J + r.F) / 2
    assert r.target_area == 4 / 64  # over the three frames where the target is visible
    assert (r.empty_frames, r.pred_empty_frames, r.both_empty_frames) == (1, 1, 1)
    assert r.empty_J == 1.0 and r.empty_F == 1.0
    # the record keeps the per-expression means JandF adds up
    m = JandF()
    m.update(torch.from_numpy(pred), torch.from_numpy(gt))
    assert float(m.compute()["J"]) == r.J and float(m.compute()["F"]) == r.F


def test_record_edge_cases():
    z = np.zeros((1, 6, 6), bool)
    one = expression_record(z, z)  # one frame, nothing anywhere
    assert one.J == one.F == 1.0 and math.isnan(one.TC) and math.isnan(one.target_area)
    assert (one.empty_frames, one.pred_empty_frames, one.both_empty_frames) == (1, 1, 1)
    gt = np.ones((3, 6, 6), bool)
    # an expression without prediction, recorded as the scorers count it: 0 on every frame
    missing = record_from_frames("v", "0", "", np.zeros(3), np.zeros(3), gt, np.zeros(3, bool))
    assert missing.J == missing.F == missing.TC == 0.0 and missing.target_area == 1.0
    assert missing.empty_frames == 0 and math.isnan(missing.empty_J) and missing.pred_empty_frames == 0
    with pytest.raises(ValueError, match="unknown expression kind"):
        expression_record(gt, gt, kind="shape")
    with pytest.raises(ValueError, match="differ"):
        expression_record(gt, gt[:2])
    with pytest.raises(ValueError, match="per-frame lengths differ"):
        record_from_frames("v", "0", "", np.zeros(3), np.zeros(2), gt, np.ones(3, bool))


def _blobs(rng, t, h=24, w=40):
    yy, xx = np.mgrid[:h, :w]
    out = np.zeros((t, h, w), bool)
    for i in range(t):
        for _ in range(rng.integers(0, 3)):
            cy, cx, ry, rx = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(1, h / 2), rng.uniform(1, w / 2)
            out[i] |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    return out


def test_aggregates_from_records_equal_jandf_exactly():
    rng = np.random.default_rng(4)
    metric, records = JandF(), []
    kinds = [EXPRESSION_KINDS[i % 3] for i in range(10)] + [""]  # three kinds and one unknown
    for i, kind in enumerate(kinds):
        t = int(rng.integers(1, 9))
        pred, gt = _blobs(rng, t), _blobs(rng, t)
        metric.update(torch.from_numpy(pred), torch.from_numpy(gt), kinds=[kind])
        records.append(expression_record(pred, gt, f"v{i // 3}", str(i), kind))
    ref = {k: float(v) for k, v in metric.compute().items()}
    got = flat_scores(records)
    for key, value in ref.items():
        assert got[key] == value, key  # bit for bit, not approximately
    assert got["n"] == 11 and sum(got[f"n/{k}"] for k in EXPRESSION_KINDS if f"n/{k}" in got) == 10
    with_tc = [r.TC for r in records if r.frames > 1]
    assert got["n_TC"] == len(with_tc) and got["TC"] == pytest.approx(np.mean(with_tc), abs=1e-15)
    colour = [r.TC for r in records if r.kind == "colour" and r.frames > 1]
    assert got["TC/colour"] == pytest.approx(np.mean(colour), abs=1e-15)
    shown = by_kind(got)
    assert set(shown) == set(by_kind(metric.compute())) and shown["colour"]["TC"] == pytest.approx(100 * got["TC/colour"])
    with pytest.raises(ValueError, match="no expressions"):
        flat_scores([])


# --------------------------------------------------------------------------- the sidecar file


def test_sidecar_round_trip_is_exact_and_atomic(tmp_path):
    rng = np.random.default_rng(1)
    records = [expression_record(_blobs(rng, t), _blobs(rng, t), "vid,with comma", f"e{t}", k)
               for t, k in ((1, "colour"), (3, ""), (5, "temporal"))]
    path = sidecar_path(tmp_path / "run" / "results.json")
    assert path == tmp_path / "run" / "results.per_expression.csv"
    write_records(records, path)
    assert path.read_text().splitlines()[0] == ",".join(COLUMNS)
    back = read_records(path)
    assert len(back) == 3 and all(same(a, b) for a, b in zip(records, back))
    write_records(records[:1], path)  # overwrite: the new content, no temporary file left behind
    assert len(read_records(path)) == 1 and sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_bad_sidecar_files_are_one_line_errors(tmp_path):
    good = tmp_path / "good.csv"
    write_records([expression_record(np.ones((2, 4, 4)), np.ones((2, 4, 4)), "v", "0")], good)
    lines = good.read_text().splitlines()
    cases = {
        "header.csv": ["video_id,exp_id,J,F", "v,0,1,1"],
        "value.csv": [lines[0], lines[1].replace(",2,", ",two,")],
        "fields.csv": [lines[0], lines[1] + ",9"],
        "twice.csv": [lines[0], lines[1], lines[1]],
        "kind.csv": [lines[0], lines[1].replace("v,0,", "v,0,shape")],
    }
    expect = {"header.csv": "expected the header video_id,exp_id,kind", "value.csv": "line 2: expected a record",
              "fields.csv": "line 2: expected 13 fields, found 14",
              "twice.csv": "line 3: expected each .* once, found v/0 again \\(first on line 2\\)",
              "kind.csv": "unknown expression kind 'shape'"}
    for name, content in cases.items():
        (tmp_path / name).write_text("\n".join(content) + "\n")
        with pytest.raises(RecordsFileError, match=expect[name]) as err:
            read_records(tmp_path / name)
        assert str(err.value).startswith(str(tmp_path / name)) and "\n" not in str(err.value)
    with pytest.raises(RecordsFileError, match="expected a per-expression CSV file, found nothing"):
        read_records(tmp_path / "absent.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(RecordsFileError, match="found an empty file"):
        read_records(tmp_path / "empty.csv")


# --------------------------------------------------------------------------- slices


def rec(frames=17, J=0.5, F=0.5, TC=0.1, area=0.03, empty=0, pred_empty=0, both=0, eJ=math.nan, eF=math.nan, **kw):
    return ExpressionRecord(kw.get("video_id", "v"), kw.get("exp_id", "0"), kw.get("kind", ""), frames, J, F, TC,
                            area, empty, pred_empty, both, eJ, eF)


def test_slices_by_length_and_size():
    records = [rec(frames=1, J=1.0, F=0.8, TC=math.nan, area=0.005), rec(frames=17, J=0.4, F=0.6, TC=0.2, area=0.02),
               rec(frames=20, J=0.6, F=0.8, TC=0.1, area=0.2), rec(frames=300, J=0.0, F=0.0, TC=0.0, area=math.nan)]
    s = slice_scores(records, ["length", "size"])
    assert list(s) == ["length", "size"]
    assert list(s["length"]) == ["1", "17-32", ">128"]  # empty bins left out, order kept
    assert s["length"]["1"] == {"J": 100.0, "F": 80.0, "JF": 90.0, "T": None, "n": 1}  # no TC for one frame
    b = s["length"]["17-32"]
    assert b["n"] == 2 and b["J"] == pytest.approx(50) and b["F"] == pytest.approx(70) and b["JF"] == pytest.approx(60)
    assert b["T"] == pytest.approx(15)
    assert list(s["size"]) == ["<1%", "1-5%", ">=15%", "never visible"]
    assert s["size"]["never visible"]["n"] == 1 and s["size"][">=15%"]["JF"] == pytest.approx(70)
    # the bins cover every length and size
    assert LENGTH_BINS[0][1] == 1 and all(a[2] + 1 == b[1] for a, b in zip(LENGTH_BINS, LENGTH_BINS[1:]))
    assert SIZE_BINS[0][1] == 0 and all(a[2] == b[1] for a, b in zip(SIZE_BINS, SIZE_BINS[1:]))


def test_absent_slice_scores_the_empty_ground_truth_frames():
    # expression a: 4 frames, 2 absent (one predicted empty: J = F = 1 there, the other 0), J = .5 overall
    a = rec(frames=4, J=0.5, F=0.5, empty=2, pred_empty=1, both=1, eJ=0.5, eF=0.5)
    # expression b: 2 frames, 1 absent and predicted empty, the present frame scores J .2 F .4
    b = rec(frames=2, J=0.6, F=0.7, empty=1, pred_empty=1, both=1, eJ=1.0, eF=1.0)
    c = rec(frames=3, J=0.9, F=0.9)  # never absent, nothing predicted empty
    s = slice_scores([a, b, c], ["absent"])["absent"]
    assert s["absent"]["n"] == 2 and s["absent"]["frames"] == 3 and s["absent"]["pred_empty"] == pytest.approx(2 / 3)
    assert s["absent"]["J"] == pytest.approx(75) and s["absent"]["JF"] == pytest.approx(75) and s["absent"]["T"] is None
    # present frames: a's two frames score (0.5*4 - 0.5*2) / 2 = 0.5, b's one 0.2 (J) / 0.4 (F), c's 0.9
    p = s["present"]
    assert p["n"] == 3 and p["frames"] == 2 + 1 + 3 and p["pred_empty"] == 0.0
    assert p["J"] == pytest.approx(100 * (0.5 + 0.2 + 0.9) / 3) and p["F"] == pytest.approx(100 * (0.5 + 0.4 + 0.9) / 3)
    assert list(slice_scores([c], ["absent"])["absent"]) == ["present"]


def test_absent_slice_from_real_masks():
    pred, gt = hand_made()
    s = slice_scores([expression_record(pred, gt)], SLICES)
    assert s["absent"]["absent"] == {"J": 100.0, "F": 100.0, "JF": 100.0, "T": None, "n": 1, "frames": 1, "pred_empty": 1.0}
    assert s["absent"]["present"]["J"] == pytest.approx(100 * 1.5 / 3) and s["absent"]["present"]["frames"] == 3
    assert list(s["length"]) == ["2-16"] and list(s["size"]) == ["5-15%"]  # 4/64 = 6.25 %


def test_slice_names_are_checked():
    assert check_slices(["size", "length"]) == ("size", "length")
    with pytest.raises(ValueError, match="evaluation.slices: expected slice names among length, size, absent, found 'kind'"):
        check_slices(["length", "kind"], setting="evaluation.slices")
