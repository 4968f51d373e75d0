"""`run.py`'s body end to end on the tiny benchmark and a TEST-size bundle: every paradigm trains
and is scored, results.json and the MLflow run hold what users look for."""

import json
import math
from pathlib import Path

import mlflow
import pytest
from mlflow.entities import LoggedModelStatus

from rvosflow.config import compose, resolve
from rvosflow.console import summary
from rvosflow.metrics.records import flat_scores, read_records
from rvosflow.train import run


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def saved_expressions(tiny_benchmark) -> list:
    from rvosflow.data.formats import MevisSource

    return MevisSource(tiny_benchmark / "mevis" / "valid_u").expressions


def tiny_overrides(tiny_benchmark, bundle_dir, uri, *extra):
    return [
        f"data.root={tiny_benchmark / 'mevis'}", "data.height=32", "data.max_width=32", "data.num_frames=9",
        "data.batch_size=2", "data.val_limit=4", f"model.path={bundle_dir}", "text.max_length=16",
        "trainer.max_steps=4", "trainer.val_check_interval=2", "trainer.log_every_n_steps=1",
        "trainer.enable_progress_bar=false", f"logger.tracking_uri={uri}", "num_overlays=2",
        "data.val_batch_size=3", "latent_cache_dir=null", "text_cache_dir=null", "logger.system_metrics_interval=0.5",
        *extra,
    ]


@pytest.mark.parametrize("paradigm", [None, "noise2mask", "onestep_mask", "onestep_velocity", "video2mask"])
def test_every_paradigm_trains_and_scores(tiny_benchmark, test_bundle_dir, tracking_uri, tmp_path, paradigm):
    extra = [f"+paradigm={paradigm}"] if paradigm else []
    if paradigm in ("noise2mask", "video2mask"):  # a one-step paradigm cannot take solver.steps (an error if typed)
        extra.append("solver.steps=2")
    cfg = compose(tiny_overrides(tiny_benchmark, test_bundle_dir, tracking_uri, *extra))
    results = run(cfg, tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["JF"] == pytest.approx(results["JF"])
    assert 0 <= results["J"] <= 100 and 0 <= results["F"] <= 100
    assert results["JF"] == pytest.approx((results["J"] + results["F"]) / 2)
    assert saved["config"]["paradigm"]["name"] == (paradigm or "video2mask")
    # per expression kind, from the benchmark's expression_kinds.json
    assert set(saved["per_kind"]) <= {"colour", "multi-object"} and "colour" in saved["per_kind"]
    assert sum(k["n"] for k in saved["per_kind"].values()) == len(saved_expressions(tiny_benchmark))
    for k in saved["per_kind"].values():
        assert k["JF"] == pytest.approx((k["J"] + k["F"]) / 2) and 0 <= k["JF"] <= 100
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()


def test_mlflow_run_holds_params_metrics_overlays_and_results(tiny_benchmark, test_bundle_dir, tracking_uri, tmp_path):
    cfg = compose(tiny_overrides(tiny_benchmark, test_bundle_dir, tracking_uri, "+paradigm=video2mask", "bbs.p=0.25",
                                 "trajectory_steps=2"))
    results = run(cfg, tmp_path)
    cfg = resolve(cfg)
    client = mlflow.MlflowClient(tracking_uri)
    r = client.get_run(results["mlflow_run_id"])
    assert r.data.params["paradigm.name"] == "video2mask" and r.data.params["bbs.p"] == "0.25"
    assert r.data.params["spa.enabled"] == "False" and r.data.params["wi.enabled"] == "True"
    # params once, as the flat config (Lightning used to log the module's hparams again as run_config/...)
    assert not [k for k in r.data.params if k.startswith("run_config")]
    for key in ("train/loss", "val/J", "val/F", "val/JF", "val/JF/colour", "final/JF", "final/J", "final/JF/colour"):
        assert key in r.data.metrics, key
    # one unit, percent, and the reported score is its own metric
    assert r.data.metrics["final/JF"] == pytest.approx(results["JF"])
    assert r.data.metrics["final/J"] == pytest.approx(results["J"])
    assert r.data.tags["paradigm"] == "video2mask" and r.data.tags["data.tier"] == "default"
    assert client.get_experiment(r.info.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    assert r.data.tags["mlflow.runName"] == "video2mask-p0.25-s0" and "partial_eval" not in r.data.tags
    artifacts = [a.path for a in client.list_artifacts(r.info.run_id)]
    assert "results.json" in artifacts and "config.yaml" in artifacts
    # per-expression records (issue 25): the sidecar beside results.json, the same file and an MLflow
    # table in the run; they give back the reported J&F, and TC and the slices come from them
    assert {"results.per_expression.csv", "per_expression.json"} <= set(artifacts)
    records = read_records(results["per_expression"])
    assert [r.key for r in records] == sorted((e.video_id, e.exp_id) for e in saved_expressions(tiny_benchmark))
    flat = flat_scores(records)
    assert 100 * flat["JF"] == pytest.approx(results["JF"], rel=1e-6)  # results: float32, as Lightning logs it
    assert results["TC"] == pytest.approx(100 * flat["TC"]) and r.data.metrics["final/TC"] == pytest.approx(results["TC"])
    assert list(results["slices"]) == ["length", "size", "absent"]
    slice_metrics = {k for k in r.data.metrics if k.startswith("final/slice/")}
    assert {k.split("/")[2] for k in slice_metrics} == {"length", "size", "absent"}
    sizes = {f"final/slice/size/{label.replace('<', 'lt').replace('>=', 'ge').replace('%', 'pct')}/JF"
             for label in results["slices"]["size"]}  # bin labels made MLflow-safe: <1% -> lt1pct
    assert "final/slice/absent/present/JF" in slice_metrics and sizes <= slice_metrics
    overlays = [a.path for a in client.list_artifacts(r.info.run_id, "overlays")]
    assert overlays == ["overlays/final.png", "overlays/val_step000002.png", "overlays/val_step000004.png"]
    assert "trajectory/final.png" in [a.path for a in client.list_artifacts(r.info.run_id, "trajectory")]
    # ... and the same pictures as MLflow images by key and step (the run's charts, with a step slider)
    images = {a.path.split("+timestamp")[0] for a in client.list_artifacts(r.info.run_id, "images")}
    assert images == {f"images/{key}+step+{step}" for key, step in (
        ("val~overlays", 2), ("val~overlays", 4), ("final~overlays", 4),
        ("val~trajectory", 2), ("val~trajectory", 4), ("final~trajectory", 4))}
    # One step convention, the optimizer steps done: in-training validations (val_limit expressions)
    # at steps 2 and 4, the final score apart at the last step, the training curves every
    # log_every_n_steps (1 here); no `epoch` metric.
    steps = {k: [m.step for m in client.get_metric_history(r.info.run_id, k)] for k in
             ("val/JF", "final/JF", "train/loss", "train/lr", "train/grad_norm")}
    assert steps == {"val/JF": [2, 4], "final/JF": [4], "train/loss": [1, 2, 3, 4], "train/lr": [1, 2, 3, 4],
                     "train/grad_norm": [1, 2, 3, 4]}
    assert all(0 <= m.value <= 100 for m in client.get_metric_history(r.info.run_id, "val/JF"))
    assert "epoch" not in r.data.metrics
    # the tiny preset's cosine schedule, as each optimizer step used it; gradient norms before clipping
    lrs = [m.value for m in client.get_metric_history(r.info.run_id, "train/lr")]
    assert lrs == pytest.approx([cfg.optim.lr * (1 + math.cos(math.pi * k / 4)) / 2 for k in range(4)])
    assert all(m.value > 0 for m in client.get_metric_history(r.info.run_id, "train/grad_norm"))
    # MLflow's system metrics, sampled while the run fits and scores
    assert "system/cpu_utilization_percentage" in r.data.metrics and "system/system_memory_usage_megabytes" in r.data.metrics
    assert results["mlflow_url"] == (f"http://127.0.0.1:5000/#/experiments/{r.info.experiment_id}/runs/{r.info.run_id}"
                                     "?workflowType=machine_learning")
    # Data sets: the training split and the scored one, with digests, sizes and their context
    inputs = {d.dataset.name: d for d in r.inputs.dataset_inputs}
    assert set(inputs) == {"mevis/train", "mevis/valid_u"}
    assert [t.value for t in inputs["mevis/train"].tags] == ["training"]
    assert [t.value for t in inputs["mevis/valid_u"].tags] == ["evaluation"]
    valid = inputs["mevis/valid_u"].dataset
    assert json.loads(valid.profile)["expressions"] == len(saved_expressions(tiny_benchmark))
    assert json.loads(valid.source)["uri"] == str(tiny_benchmark / "mevis" / "valid_u")
    # The logged model: last.ckpt as an output of the run, its final scores linked to it and to the data set
    (model,) = client.search_logged_models([r.info.experiment_id], filter_string=f"source_run_id = '{r.info.run_id}'")
    assert model.status == LoggedModelStatus.READY and model.name == "video2mask-p0_25-s0"
    assert [o.model_id for o in r.outputs.model_outputs] == [model.model_id]
    files = mlflow.artifacts.download_artifacts(f"{model.artifact_location}", dst_path=str(tmp_path / "model"))
    assert sorted(p.name for p in Path(files).iterdir()) == ["files.json", "last.ckpt"]
    assert (Path(files) / "last.ckpt").read_bytes() == (tmp_path / "checkpoints" / "last.ckpt").read_bytes()
    linked = {m.key: m for m in model.metrics}
    assert linked["final/JF"].value == pytest.approx(results["JF"]) and linked["final/JF"].step == 4
    assert (linked["final/JF"].dataset_name, linked["final/JF"].dataset_digest) == ("mevis/valid_u", valid.digest)
    # every final score the same way (TC and the slices too): at the last step, linked to the data set and the model
    finals = [k for k in r.data.metrics if k.startswith("final/")]
    assert "final/TC" in finals and "final/slice/absent/present/JF" in finals and set(finals) <= set(linked)
    assert {(linked[k].step, linked[k].dataset_digest) for k in finals} == {(4, valid.digest)}


def test_two_runs_get_distinct_names_and_a_partial_score_says_so(tiny_benchmark, test_bundle_dir, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    base = tiny_overrides(tiny_benchmark, test_bundle_dir, uri, "trainer.max_steps=1", "trajectory_steps=0")
    first = run(compose(base), tmp_path / "a")
    second = run(compose([*base, "data.eval_videos=1"]), tmp_path / "b")
    client = mlflow.MlflowClient(uri)
    names = [client.get_run(r["mlflow_run_id"]).info.run_name for r in (first, second)]
    assert names == ["video2mask-p0.5-spa-dvi-s0", "video2mask-p0.5-spa-dvi-s0-2"]
    assert client.get_run(second["mlflow_run_id"]).data.tags["partial_eval"] == "data.eval_videos=1"
    assert "[first 1 videos only]" in summary(second) and "MLflow:" in summary(second)


def test_the_model_without_its_weights_and_the_release_export_and_a_one_batch_score(tiny_benchmark, test_bundle_dir,
                                                                                   tracking_uri, tmp_path):
    # logger.upload_weights=false (the 1.3B preset's): the logged model lists the files, their bytes
    # stay on disk; logger.model_files adds the release layout's export. trainer.limit_val_batches=1
    # (the smoke profile's) scores one batch: the run says so, as an int 1 is one batch, not all.
    cfg = compose(tiny_overrides(tiny_benchmark, test_bundle_dir, tracking_uri, "trainer.max_steps=1", "trajectory_steps=0",
                                 "logger.upload_weights=false", "logger.model_files=[checkpoint,release]",
                                 "trainer.limit_val_batches=1", "data.val_batch_size=1"))
    results = run(cfg, tmp_path)
    client = mlflow.MlflowClient(tracking_uri)
    r = client.get_run(results["mlflow_run_id"])
    assert r.data.tags["partial_eval"] == "trainer.limit_val_batches=1"
    (model,) = client.search_logged_models([r.info.experiment_id], filter_string=f"source_run_id = '{r.info.run_id}'")
    assert model.tags["weights"] == "on disk"
    files = Path(mlflow.artifacts.download_artifacts(model.artifact_location, dst_path=str(tmp_path / "model")))
    assert [p.name for p in files.iterdir()] == ["files.json"]
    listed = json.loads((files / "files.json").read_text())
    assert set(listed) == {"last.ckpt", "mevis_ckpt.pth"}
    assert listed["mevis_ckpt.pth"]["path"] == str(tmp_path / "release" / "mevis_ckpt.pth")
    assert listed["last.ckpt"]["bytes"] == (tmp_path / "checkpoints" / "last.ckpt").stat().st_size
    assert not listed["last.ckpt"]["uploaded"]


def test_validate_mode_reproduces_the_trained_score(tiny_benchmark, test_bundle_dir, tracking_uri, tmp_path):
    base = tiny_overrides(tiny_benchmark, test_bundle_dir, tracking_uri, "+paradigm=video2mask", "dvi.enabled=true")
    trained = run(compose(base), tmp_path / "train")
    ckpt = tmp_path / "train" / "checkpoints" / "last.ckpt"
    again = run(compose(base + ["mode=validate", f"ckpt_path={ckpt}"]), tmp_path / "validate")
    assert again["JF"] == pytest.approx(trained["JF"], abs=1e-6)


def test_a_checkpoint_is_scored_as_what_it_was_trained(tiny_benchmark, test_bundle_dir, tracking_uri, tmp_path):
    # The cases: `mode=validate ckpt_path=<noise2mask ckpt>` without +paradigm scored it
    # as video2mask (and recorded video2mask); init_from of an incompatible checkpoint was silent.
    from rvosflow.errors import ConfigError

    base = tiny_overrides(tiny_benchmark, test_bundle_dir, tracking_uri)
    trained = run(compose([*base, "+paradigm=noise2mask", "solver.steps=2"]), tmp_path / "train")
    ckpt = trained["checkpoint"]
    again = run(compose([*base, "mode=validate", f"ckpt_path={ckpt}"]), tmp_path / "validate")
    assert again["config"]["paradigm"]["name"] == "noise2mask"
    assert again["config"]["dvi"]["enabled"] is False and again["config"]["solver"]["steps"] == 2
    assert again["JF"] == pytest.approx(trained["JF"], abs=1e-6)
    saved = json.loads((tmp_path / "validate" / "results.json").read_text())
    assert saved["config"]["paradigm"]["name"] == "noise2mask"

    with pytest.raises(ConfigError, match=r"paradigm.name: .*'noise2mask'.*'onestep_mask'"):
        run(compose([*base, "+paradigm=onestep_mask", "mode=validate", f"ckpt_path={ckpt}"]), tmp_path / "x")
    with pytest.raises(ConfigError, match=r"init_from: .*paradigm.name='noise2mask' there, 'video2mask' here.*dvi"):
        run(compose([*base, f"init_from={ckpt}"]), tmp_path / "y")


def test_a_copied_project_logs_into_its_own_artifact_folder(tmp_path):
    # The case: after `cp -a`, the copy wrote its artifacts into the original's
    # mlartifacts (mlflow.db stores an absolute artifact location per experiment).
    import shutil
    from urllib.parse import urlparse

    from rvosflow.tracking import make_logger

    def log_one(project):
        cfg = compose([f"logger.tracking_uri=sqlite:///{project / 'mlflow.db'}"])
        logger = make_logger(cfg)
        logger.experiment.log_text(logger.run_id, "hello", "note.txt")
        logger.finalize("success")
        return mlflow.MlflowClient(cfg.logger.tracking_uri).get_run(logger.run_id)

    original = tmp_path / "original"
    original.mkdir()
    first = log_one(original)
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    second = log_one(copy)
    assert Path(urlparse(second.info.artifact_uri).path).is_relative_to(copy / "mlartifacts")
    assert (Path(urlparse(second.info.artifact_uri).path) / "note.txt").is_file()
    assert not list((original / "mlartifacts").rglob(f"*{second.info.run_id}*"))
    # the copy's earlier run now reads its artifacts from the copy, the original is untouched
    client = mlflow.MlflowClient(f"sqlite:///{copy / 'mlflow.db'}")
    moved = client.get_run(first.info.run_id).info.artifact_uri
    assert Path(urlparse(moved).path).is_relative_to(copy / "mlartifacts")
    assert [a.path for a in client.list_artifacts(first.info.run_id)] == ["note.txt"]
    assert first.info.artifact_uri.startswith((original / "mlartifacts").as_uri())
