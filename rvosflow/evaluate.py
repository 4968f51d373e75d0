"""Score prediction PNGs locally as the official scripts do, and write server submissions.

    python -m rvosflow.evaluate --benchmark {mevis,ref_ytvos,ref_davis} --root DIR --split NAME \\
        --predictions DIR --out FILE.json [--zip FILE.zip] [--davis-task unsupervised|semi-supervised] \\
        [--slices length,size,absent]
    python -m rvosflow.evaluate --compare RUN REFERENCE [--benchmark B --root DIR --split NAME] \\
        [--resamples N] [--bootstrap-seed S] [--out FILE.json]

Predictions are ``<predictions>/<video>/<exp_id>/<frame>.png`` (non-zero = object), as written by
``python run.py mode=predict``. Measures are in percent.

Beside J, F and J&F (overall, per expression kind, per Ref-DAVIS annotator set) it reports **TC**,
REM's temporal consistency: per expression (Ref-DAVIS: per matched object) the mean absolute
change of the per-frame IoU between consecutive frames, then the mean over expressions with two
frames or more; lower is better (:func:`rvosflow.metrics.functional.temporal_consistency`).
MeViS / Ref-YTVOS also write every expression's record to ``<out stem>.per_expression.csv``
(:mod:`rvosflow.metrics.records`) and, with ``--slices``, scores by video length, target size and
absent target (:mod:`rvosflow.metrics.slices`). ``--compare RUN REFERENCE`` takes two such CSV
files, two run folders (``outputs/...``, their ``results.per_expression.csv``), or two
prediction folders scored here on the same split, and prints RUN's J&F minus
REFERENCE's with a paired-bootstrap 95% CI (:mod:`rvosflow.metrics.bootstrap`).

* **MeViS** (``train``/``valid_u``, any split with ``mask_dict.json``) and **Ref-YouTube-VOS**
  (splits with ``Annotations``), as MeViS's ``eval_mevis.py``: per expression, the ground truth is
  the union of its objects, J and F are the means over *all* frames of the video (DAVIS
  ``db_eval_iou`` / ``db_eval_boundary`` semantics, :func:`rvosflow.metrics.functional.jaccard_and_boundary_f`);
  J and F are the means over expressions and J&F = (J + F) / 2. An expression whose video folder
  (the official script's check) or any frame PNG is missing scores J = F = 0 and is listed under
  ``missing``.
* **Ref-DAVIS17**, as ReferFormer (``inference_davis.py`` + ``eval_davis.py``, i.e. the
  ``davis2017-evaluation`` package run per annotator set): for each of the four annotator sets the
  video's expressions of that set (one per object, in object order) are merged into one label map
  per frame (label k = k-th object; where masks overlap the first object wins, as ReferFormer's
  argmax over binary scores), then scored with DAVIS's ``--task unsupervised`` (ReferFormer's
  default): ground-truth objects are ids 1..max of the first annotation frame of the layout's
  ``Annotations`` (255 = void, excluded), predicted objects 1..max label (zero-padded up to the ground-truth count), matched
  one-to-one by the Hungarian algorithm on (mean J + mean F) / 2 over all frames; per matched
  object, M = mean over frames, R (recall) = fraction of frames > 0.5, D (decay) = mean of the
  first quarter minus the last (``db_statistics``); J-Mean and F-Mean are means over all objects of
  all videos, J&F-Mean = (J-Mean + F-Mean) / 2. ``--davis-task semi-supervised`` instead drops the
  first and last frames and pairs objects by id (DAVIS 2017 semi-supervised). Reported: each set
  and the mean of the four. A missing expression leaves its object's label absent (an empty mask,
  as the official script would read it) and is listed under ``missing``.
* ``--split valid`` of MeViS / Ref-YouTube-VOS (server-scored) also writes the submission zip:
  ``Annotations/<video>/<exp_id>/<frame>.png`` for every expression of the split.
"""

from __future__ import annotations

import json
import math
import sys
import zipfile
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment

from rvosflow import atomic
from rvosflow.data.formats import MevisSource, RefDAVISSource, RefYTVOSSource
from rvosflow.data.formats.base import first_videos, read_index_png, stack_frames
from rvosflow.data.formats.davis import ANNOTATOR_SETS
from rvosflow.errors import ArgumentParser, EvaluationError, cli, positive_int
from rvosflow.metrics import by_kind
from rvosflow.metrics.bootstrap import DEFAULT_RESAMPLES, DEFAULT_SEED, paired_bootstrap
from rvosflow.metrics.functional import jaccard_and_boundary_f, temporal_consistency
from rvosflow.metrics.records import (
    ExpressionRecord,
    expression_record,
    flat_scores,
    read_records,
    record_from_frames,
    sidecar_path,
    write_records,
)
from rvosflow.metrics.slices import SLICES, check_slices, slice_scores
from rvosflow.predict import is_binary, read_mask, read_png_values

BENCHMARKS = ("mevis", "ref_ytvos", "ref_davis")
DAVIS_TASKS = ("unsupervised", "semi-supervised")


def open_source(benchmark: str, root: str | Path, split: str):
    root = Path(root)
    if benchmark == "mevis":
        return MevisSource(root / split)
    if benchmark == "ref_ytvos":
        return RefYTVOSSource(root, split)
    if benchmark == "ref_davis":
        return RefDAVISSource(root, split)
    raise EvaluationError(f"--benchmark: unknown {benchmark!r}; allowed: {', '.join(BENCHMARKS)}")


def load_prediction(pred_dir: Path, video_id: str, exp_id: str, frame_names) -> tuple[np.ndarray | None, list[str]]:
    """bool [T, H, W] or None, and the missing frame names (all of them when the folder is absent)."""
    d = Path(pred_dir) / video_id / exp_id
    if not d.is_dir():
        return None, list(frame_names)
    missing = [n for n in frame_names if not (d / f"{n}.png").is_file()]
    if missing:
        return None, missing
    paths = [d / f"{n}.png" for n in frame_names]
    return stack_frames([read_mask(p) for p in paths], paths), []


def check_binary(source, pred_dir: Path) -> None:
    """Every prediction PNG the split reads must be a mask (0/255 or 0/1): a soft or mixed PNG
    would be scored as object wherever it is non-zero, without a word."""
    bad = []
    seen = set()
    for e in source.expressions:
        d = Path(pred_dir) / e.video_id / e.exp_id
        for n in e.frame_names:
            p = d / f"{n}.png"
            if p not in seen and p.is_file():
                seen.add(p)
                if not is_binary(read_png_values(p)):
                    bad.append(p)
    if bad:
        raise EvaluationError(f"--predictions: expected binary PNGs (0/255 or 0/1), found {len(bad)} of {len(seen)} "
                         f"with other values, first: {', '.join(str(p) for p in bad[:3])}")


def _check_shape(pred: np.ndarray, gt: np.ndarray, where: str) -> None:
    if pred.shape != gt.shape:
        raise EvaluationError(f"{where}: prediction of shape {pred.shape[1:]} for ground truth {gt.shape[1:]} "
                              "(predictions must be at the original resolution)")


# ----------------------------------------------------------------------------- MeViS / Ref-YTVOS


def _pct(x: float) -> float | None:
    """A fraction as percent; None for NaN (no value), which JSON cannot hold."""
    return None if math.isnan(x) else 100 * x


def _nan_mean_pct(values) -> float | None:
    """Mean of the non-NaN fractions, in percent; None when there are none."""
    kept = [v for v in values if not math.isnan(v)]
    return 100 * float(np.mean(kept)) if kept else None


def expression_records(source, pred_dir: Path) -> tuple[list[ExpressionRecord], list[dict]]:
    """One record per expression of ``source`` (:func:`rvosflow.metrics.records.expression_record`),
    in the split's order, and the expressions without (complete) predictions: those are recorded
    as the official script scores them, J = F = 0 on every frame."""
    records, missing = [], []
    for e in source.expressions:
        pred, absent = load_prediction(pred_dir, e.video_id, e.exp_id, e.frame_names)
        gt = source.load_target(e)
        if pred is None:
            missing.append({"video": e.video_id, "exp_id": e.exp_id, "missing_frames": len(absent),
                            "frames": len(e.frame_names)})
            zeros = np.zeros(len(e.frame_names))
            records.append(record_from_frames(e.video_id, e.exp_id, e.kind, zeros, zeros, gt, zeros.astype(bool)))
        else:
            _check_shape(pred, gt, f"{pred_dir / e.video_id / e.exp_id}")
            records.append(expression_record(pred, gt, e.video_id, e.exp_id, e.kind))
    return records, missing


def summarize_records(records: list[ExpressionRecord], missing: list[dict] | None = None,
                      slices=()) -> dict:
    """The MeViS aggregates of records, in percent: J and F = means over expressions, J&F = their
    mean, TC (REM's temporal consistency, lower is better) = mean over expressions of two frames
    or more; per kind; per expression; and the named ``slices``."""
    per_expression = {}
    for r in records:
        entry = {"J": 100 * r.J, "F": 100 * r.F, "JF": 100 * r.JF, "TC": _pct(r.TC)}
        if r.kind:
            entry["kind"] = r.kind
        per_expression[f"{r.video_id}/{r.exp_id}"] = entry
    if records:
        flat = flat_scores(records)
        out = {"J": 100 * flat["J"], "F": 100 * flat["F"], "JF": 100 * flat["JF"], "TC": _pct(flat["TC"]),
               "TC_expressions": flat["n_TC"], "per_kind": by_kind(flat)}
    else:  # a split without expressions scores 0, as it always did
        out = {"J": 0.0, "F": 0.0, "JF": 0.0, "TC": None, "TC_expressions": 0, "per_kind": {}}
    out.update({"expressions": len(records), "missing": list(missing or []), "per_expression": per_expression})
    if slices:
        out["slices"] = slice_scores(records, slices)
    return out


def write_submission(source, pred_dir: Path, zip_path: Path) -> dict:
    """``Annotations/<video>/<exp_id>/<frame>.png`` for every expression; missing ones reported."""
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    missing, written = [], 0
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as z:
        for e in source.expressions:
            d = Path(pred_dir) / e.video_id / e.exp_id
            absent = [n for n in e.frame_names if not (d / f"{n}.png").is_file()]
            if absent:
                missing.append({"video": e.video_id, "exp_id": e.exp_id, "missing_frames": len(absent),
                                "frames": len(e.frame_names)})
            for n in e.frame_names:
                if (d / f"{n}.png").is_file():
                    z.write(d / f"{n}.png", f"Annotations/{e.video_id}/{e.exp_id}/{n}.png")
                    written += 1
    return {"zip": str(zip_path), "pngs": written, "missing": missing}


# ----------------------------------------------------------------------------- Ref-DAVIS17


def db_statistics(per_frame: np.ndarray) -> tuple[float, float, float]:
    """davis2017-evaluation ``utils.db_statistics``: mean, recall (> 0.5) and decay (4 bins)."""
    per_frame = np.asarray(per_frame, dtype=np.float64)
    M = float(np.nanmean(per_frame))
    R = float(np.nanmean(per_frame > 0.5))
    ids = (np.round(np.linspace(1, len(per_frame), 5) + 1e-10) - 1).astype(int)
    bins = [per_frame[ids[i]: ids[i + 1] + 1] for i in range(4)]
    with np.errstate(all="ignore"):
        D = float(np.nanmean(bins[0]) - np.nanmean(bins[3])) if len(bins[0]) and len(bins[3]) else float("nan")
    return M, R, D


def merged_labels(masks: list[np.ndarray | None], shape) -> np.ndarray:
    """ReferFormer's per-annotator label map: label k for the k-th object's mask, first wins."""
    out = np.zeros(shape, dtype=np.uint8)
    for k in range(len(masks), 0, -1):
        if masks[k - 1] is not None:
            out[masks[k - 1]] = k
    return out


def _pairwise_jf(gt: np.ndarray, res: np.ndarray, void: np.ndarray):
    """gt [G, T, H, W], res [R, T, H, W] (void zeroed in both, as db_eval_* do) -> J, F [R, G, T]."""
    G, T = gt.shape[:2]
    R = res.shape[0]
    gt, res = gt & ~void[None], res & ~void[None]
    p = np.repeat(res[:, None], G, axis=1).reshape(R * G * T, *gt.shape[2:])
    g = np.repeat(gt[None], R, axis=0).reshape(R * G * T, *gt.shape[2:])
    j, f = jaccard_and_boundary_f(p, g)
    return j.double().numpy().reshape(R, G, T), f.double().numpy().reshape(R, G, T)


def score_davis_video(gt_ids: np.ndarray, labels: np.ndarray, task: str, where: str):
    """Per ground-truth object (J, F) per-frame arrays for one video, DAVIS 2017 style."""
    gt_ids = gt_ids.copy()
    void = gt_ids == 255
    gt_ids[void] = 0
    if task == "semi-supervised":
        gt_ids, labels, void = gt_ids[1:-1], labels[1:-1], void[1:-1]
        if len(gt_ids) == 0:
            raise EvaluationError(f"{where}: semi-supervised scoring needs more than two frames")
    # davis2017 DAVIS.get_all_masks: objects 1..max of the first annotation frame (of the frames kept).
    n_gt = int(gt_ids[0].max())
    n_res = int(labels.max())
    gt = np.stack([gt_ids == k for k in range(1, n_gt + 1)]) if n_gt else np.zeros((0, *gt_ids.shape), bool)
    res = np.stack([labels == k for k in range(1, n_res + 1)]) if n_res else np.zeros((0, *labels.shape), bool)
    if n_res < n_gt:  # the official zero padding
        res = np.concatenate([res, np.zeros((n_gt - n_res, *labels.shape), bool)])
    if n_gt == 0:
        return []
    if task == "semi-supervised":
        if n_res > n_gt:
            raise EvaluationError(f"{where}: predicted label {n_res} exceeds the {n_gt} objects of the first frame")
        j, f = _pairwise_jf(gt, res, void)  # [R, G, T]; pairs by id on the diagonal
        return [(j[i, i], f[i, i]) for i in range(n_gt)]
    if res.shape[0] > 20:
        raise EvaluationError(f"{where}: more than 20 predicted objects (the official limit)")
    j, f = _pairwise_jf(gt, res, void)
    rows, cols = linear_sum_assignment(-(j.mean(axis=2) + f.mean(axis=2)) / 2)
    return [(j[r, c], f[r, c]) for r, c in zip(rows, cols)]


def score_ref_davis(source, pred_dir: Path, task: str = "unsupervised") -> dict:

    if task not in DAVIS_TASKS:
        raise EvaluationError(f"--davis-task: unknown {task!r}; allowed: {', '.join(DAVIS_TASKS)}")
    ann_dir = source.root / source.split / "Annotations"
    sets, missing = {}, []
    gt_cache: dict[str, np.ndarray] = {}
    for a, set_name in enumerate(ANNOTATOR_SETS):
        stats = {k: [] for k in ("JM", "JR", "JD", "FM", "FR", "FD")}
        tcs = []  # per matched object, over the frames scored (NaN for a single frame)
        per_object = {}
        for vid in source.video_ids():
            exprs = [e for e in source.expressions if e.video_id == vid and e.annotator == a]
            if not exprs:
                continue
            names = list(exprs[0].frame_names)
            if vid not in gt_cache:
                paths = [ann_dir / vid / f"{n}.png" for n in names]
                gt_cache[vid] = stack_frames([read_index_png(p) for p in paths], paths)
            gt_ids = gt_cache[vid]
            masks = []
            for e in exprs:
                pred, absent = load_prediction(pred_dir, vid, e.exp_id, names)
                if pred is None:
                    missing.append({"set": set_name, "video": vid, "exp_id": e.exp_id, "missing_frames": len(absent),
                                    "frames": len(names)})
                elif pred.shape != gt_ids.shape:
                    raise EvaluationError(f"{pred_dir / vid / e.exp_id}: prediction of shape {pred.shape[1:]} for "
                                     f"ground truth {gt_ids.shape[1:]} (predictions must be at the original resolution)")
                masks.append(pred)
            labels = merged_labels(masks, gt_ids.shape)
            for i, (j, f) in enumerate(score_davis_video(gt_ids, labels, task, f"{pred_dir / vid} ({set_name})")):
                jm, jr, jd = db_statistics(j)
                fm, fr, fd = db_statistics(f)
                for k, v in zip(("JM", "JR", "JD", "FM", "FR", "FD"), (jm, jr, jd, fm, fr, fd)):
                    stats[k].append(v)
                tcs.append(temporal_consistency(j))
                per_object[f"{vid}_{i + 1}"] = {"J": 100 * jm, "F": 100 * fm, "TC": _pct(tcs[-1])}
        mean = {k: 100 * float(np.mean(v)) if v else 0.0 for k, v in stats.items()}
        sets[set_name] = {
            "JF": (mean["JM"] + mean["FM"]) / 2, "J": mean["JM"], "F": mean["FM"], "TC": _nan_mean_pct(tcs),
            "J_recall": mean["JR"], "J_decay": mean["JD"], "F_recall": mean["FR"], "F_decay": mean["FD"],
            "objects": len(stats["JM"]), "per_object": per_object,
        }
    J = float(np.mean([s["J"] for s in sets.values()]))
    F = float(np.mean([s["F"] for s in sets.values()]))
    set_tcs = [s["TC"] for s in sets.values() if s["TC"] is not None]
    TC = float(np.mean(set_tcs)) if set_tcs else None  # the mean of the four sets, as J and F
    return {"J": J, "F": F, "JF": (J + F) / 2, "TC": TC, "task": task, "sets": sets, "missing": missing}


# ----------------------------------------------------------------------------- entry


def _slice_names(benchmark: str, slices) -> tuple[str, ...]:
    if isinstance(slices, str):  # the CLI's comma-separated list
        slices = [x.strip() for x in slices.split(",") if x.strip()]
    names = check_slices(slices or (), setting="--slices")
    if names and benchmark == "ref_davis":
        raise EvaluationError("--slices: expected a per-expression benchmark (mevis, ref_ytvos), found ref_davis "
                              "(scored per object and annotator set)")
    return names


def _write_json(result: dict, out) -> None:
    atomic.write_text(out, json.dumps(result, indent=2))


def evaluate(benchmark: str, root, split: str, predictions, out=None, zip_path=None,
             davis_task: str = "unsupervised", videos: int | None = None, slices=()) -> dict:
    """Score (where the split has masks) and/or zip (``valid`` of MeViS / Ref-YTVOS); write ``out``.
    ``videos``: only the split's first N videos (as ``data.eval_videos``); None = the whole split.
    ``slices``: names from :data:`rvosflow.metrics.slices.SLICES` (or one comma-separated string).
    MeViS / Ref-YTVOS with ``out``: the per-expression records also go to the sidecar
    :func:`~rvosflow.metrics.records.sidecar_path` (``<out stem>.per_expression.csv``)."""
    slices = _slice_names(benchmark, slices)
    source = first_videos(open_source(benchmark, root, split), videos, setting="--videos")
    pred_dir = Path(predictions)
    if not pred_dir.is_dir():
        raise EvaluationError(f"--predictions: expected a folder of <video>/<exp_id>/<frame>.png, found no folder at {pred_dir}")
    check_binary(source, pred_dir)
    result: dict = {"benchmark": benchmark, "root": str(root), "split": split, "predictions": str(pred_dir),
                     "videos": len(source.video_ids()), "subset": videos is not None}
    if benchmark == "ref_davis":
        result.update(score_ref_davis(source, pred_dir, davis_task))
    else:
        if source.has_masks:
            records, missing = expression_records(source, pred_dir)
            result.update(summarize_records(records, missing, slices))
            if out:
                result["per_expression_file"] = str(write_records(records, sidecar_path(out)))
        if split == "valid" or not source.has_masks:
            if zip_path is None:
                zip_path = Path(out).with_suffix(".zip") if out else pred_dir.parent / f"{benchmark}_{split}_submission.zip"
            result["submission"] = write_submission(source, pred_dir, Path(zip_path))
            result.setdefault("missing", result["submission"]["missing"])
    if out:
        _write_json(result, out)
    return result


# ----------------------------------------------------------------------------- --compare


def load_run(path, benchmark=None, root=None, split=None, videos: int | None = None) -> tuple[list[ExpressionRecord], int]:
    """A scored run's records and how many of its expressions had no prediction (0 for a file):
    ``path`` is a per-expression CSV (:func:`~rvosflow.metrics.records.read_records`), a run's
    folder (its ``results.per_expression.csv``) or a predictions folder, scored here on
    ``benchmark``/``root``/``split``."""
    p = Path(path)
    if p.is_file():
        return read_records(p), 0
    if (p / "results.json").is_file():  # a run's folder: the records its closing score wrote
        sidecar = sidecar_path(p / "results.json")
        if not sidecar.is_file():
            raise EvaluationError(f"--compare: expected {sidecar} (the per-expression scores of the run in {p}), "
                                  "found none: the run was not scored")
        return read_records(sidecar), 0
    if not p.is_dir():
        raise EvaluationError(f"--compare: expected a per-expression CSV file or a predictions folder, found nothing at {p}")
    lacking = [opt for opt, v in (("--benchmark", benchmark), ("--root", root), ("--split", split)) if v is None]
    if lacking:
        raise EvaluationError(f"--compare: expected {', '.join(lacking)} to score the predictions folder {p}, found none")
    if benchmark == "ref_davis":
        raise EvaluationError("--compare: expected a per-expression benchmark (mevis, ref_ytvos), found ref_davis "
                              "(scored per object and annotator set)")
    source = first_videos(open_source(benchmark, root, split), videos, setting="--videos")
    if not source.has_masks:
        raise EvaluationError(f"--split: expected a split with ground-truth masks to score {p}, found {split} without")
    check_binary(source, p)
    records, missing = expression_records(source, p)
    return records, len(missing)


def compare(run, reference, benchmark=None, root=None, split=None, videos: int | None = None,
            n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED, out=None) -> dict:
    """``run`` against ``reference`` (each a per-expression CSV or a predictions folder): both
    J&F, and the delta run − reference in J&F points with its paired-bootstrap 95% CI
    (:func:`rvosflow.metrics.bootstrap.paired_bootstrap`); written to ``out`` when given."""
    runs = {name: load_run(path, benchmark, root, split, videos)
            for name, path in (("run", run), ("reference", reference))}
    delta = paired_bootstrap(runs["run"][0], runs["reference"][0], n_resamples=n_resamples, seed=seed,
                             row_name=str(run), reference_name=str(reference))
    result = {"run": str(run), "reference": str(reference)}
    for name, (records, missing) in runs.items():
        scores = summarize_records(records)
        result[name + "_scores"] = {**{k: scores[k] for k in ("JF", "J", "F", "TC")}, "missing": missing}
    result["delta_JF"] = delta.as_dict()
    if out:
        _write_json(result, out)
    return result


# ----------------------------------------------------------------------------- the command line


def main(argv=None) -> int:
    """The CLI; bad input is one line, exit 2 (:func:`rvosflow.errors.cli`)."""
    return cli(_main, argv)


def _fmt(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


def _scores_line(s: dict) -> str:
    line = f"J&F {s['JF']:.2f}  J {s['J']:.2f}  F {s['F']:.2f}"
    return line + (f"  TC {_fmt(s['TC'])}" if "TC" in s else "")


def _print_scores(args, r: dict) -> None:
    if "JF" in r:
        print(f"{args.benchmark}/{args.split}: {_scores_line(r)}   (TC: REM's temporal consistency, "
              "mean |IoU change| between consecutive frames, lower is better)")
    for kind, s in r.get("per_kind", {}).items():
        print(f"  {kind:20s} {_scores_line(s)}  ({s['n']} expressions)")
    for name, s in r.get("sets", {}).items():
        print(f"  {name:20s} {_scores_line(s)}  ({s['objects']} objects)")
    for slice_name, bins in r.get("slices", {}).items():
        for label, s in bins.items():
            extra = f", {s['frames']} frames, {100 * s['pred_empty']:.1f}% predicted empty" if "frames" in s else ""
            print(f"  {slice_name + ' ' + label:20s} {_scores_line({**s, 'TC': s['T']})}  ({s['n']} expressions{extra})")
    if "submission" in r:
        print(f"submission: {r['submission']['zip']} ({r['submission']['pngs']} PNGs)")
    if r.get("missing"):
        print(f"WARNING: {len(r['missing'])} expressions without (complete) predictions, scored 0: "
              + ", ".join(f"{m['video']}/{m['exp_id']}" for m in r["missing"][:10])
              + (" ..." if len(r["missing"]) > 10 else ""), file=sys.stderr)
    if "per_expression_file" in r:
        print(f"per expression: {r['per_expression_file']}")
    print(f"-> {args.out}")


def _print_comparison(r: dict) -> None:
    d = r["delta_JF"]
    for name in ("run", "reference"):
        s = r[name + "_scores"]
        print(f"{name:9s} {r[name]}: {_scores_line(s)}")
        if s["missing"]:
            print(f"WARNING: {r[name]}: {s['missing']} expressions without (complete) predictions, scored 0",
                  file=sys.stderr)
    verdict = "significant (the CI excludes 0)" if d["significant"] else "not significant (the CI contains 0)"
    seeds = "" if d["n_seeds"] == d["n_ref_seeds"] == 1 else f", {d['n_seeds']} vs {d['n_ref_seeds']} seeds"
    print(f"delta J&F (run - reference): {d['delta']:+.2f} points, {100 * d['confidence']:.0f}% CI "
          f"[{d['low']:+.2f}, {d['high']:+.2f}]: {verdict}; paired bootstrap over {d['n_expressions']} expressions"
          f"{seeds}, {d['n_resamples']} resamples, seed {d['seed']}")


def _main(argv=None) -> int:
    ap = ArgumentParser(prog="python -m rvosflow.evaluate", description=__doc__.split("\n\n")[0])
    ap.add_argument("--benchmark", choices=BENCHMARKS)
    ap.add_argument("--root", help="the benchmark root (MeViS: the folder holding the splits)")
    ap.add_argument("--split", help="e.g. valid_u, train, valid")
    ap.add_argument("--predictions", help="<video>/<exp_id>/<frame>.png folder")
    ap.add_argument("--out", help="JSON file for the scores (the per-expression CSV goes beside it)")
    ap.add_argument("--zip", default=None, help="submission zip (valid splits; default: --out with .zip)")
    ap.add_argument("--videos", type=positive_int, default=None, help="score only the split's first N videos (quick runs)")
    ap.add_argument("--davis-task", default="unsupervised", choices=DAVIS_TASKS,
                    help="Ref-DAVIS: ReferFormer's default 'unsupervised' (Hungarian-matched, all frames)")
    ap.add_argument("--slices", default="", help=f"comma-separated slices to score as well: {','.join(SLICES)}")
    ap.add_argument("--compare", nargs=2, metavar=("RUN", "REFERENCE"),
                    help="delta in J&F of RUN against REFERENCE with a paired-bootstrap 95%% CI; each a "
                         "per-expression CSV or a predictions folder (scored on --benchmark/--root/--split)")
    ap.add_argument("--resamples", type=positive_int, default=DEFAULT_RESAMPLES, help="--compare: bootstrap resamples")
    ap.add_argument("--bootstrap-seed", type=int, default=DEFAULT_SEED, help="--compare: the bootstrap's seed")
    args = ap.parse_args(argv)
    if args.compare:
        r = compare(*args.compare, benchmark=args.benchmark, root=args.root, split=args.split, videos=args.videos,
                    n_resamples=args.resamples, seed=args.bootstrap_seed, out=args.out)
        _print_comparison(r)
        if args.out:
            print(f"-> {args.out}")
        return 0
    for opt in ("benchmark", "root", "split", "predictions", "out"):
        if getattr(args, opt) is None:
            raise EvaluationError(f"--{opt}: expected a value (needed to score predictions), found none")
    r = evaluate(args.benchmark, args.root, args.split, args.predictions, args.out, args.zip, args.davis_task,
                 args.videos, args.slices)
    _print_scores(args, r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
