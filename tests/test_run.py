"""`run.py`'s body end to end on the tiny benchmark and a TEST-size bundle: every paradigm trains
and is scored, results.json and the MLflow run hold what users look for."""

import json

import mlflow
import pytest

from rvosflow.config import compose
from rvosflow.train import run


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def tiny_overrides(tiny_benchmark, bundle_dir, uri, *extra):
    return [
        f"data.root={tiny_benchmark / 'mevis'}", "data.height=32", "data.max_width=32", "data.num_frames=9",
        "data.batch_size=2", "data.val_limit=4", f"model.path={bundle_dir}", "model.text_max_length=16",
        "trainer.max_steps=4", "trainer.val_check_interval=2", "trainer.log_every_n_steps=1",
        "trainer.enable_progress_bar=false", f"logger.tracking_uri={uri}", "num_overlays=2",
        "data.val_batch_size=3", "latent_cache_dir=null", "text_cache_dir=null", *extra,
    ]


@pytest.mark.parametrize("paradigm", [None, "noise2mask", "onestep_mask", "onestep_velocity", "video2mask"])
def test_every_paradigm_trains_and_scores(tiny_benchmark, test_bundle_dir, tracking_uri, tmp_path, paradigm):
    extra = [f"+paradigm={paradigm}", "solver.steps=2"] if paradigm else []
    cfg = compose(tiny_overrides(tiny_benchmark, test_bundle_dir, tracking_uri, *extra))
    results = run(cfg, tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["JF"] == pytest.approx(results["JF"])
    assert 0 <= results["J"] <= 100 and 0 <= results["F"] <= 100
    assert results["JF"] == pytest.approx((results["J"] + results["F"]) / 2)
    assert saved["config"]["paradigm"]["name"] == (paradigm or "video2mask")
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()


def test_mlflow_run_holds_params_metrics_overlays_and_results(tiny_benchmark, test_bundle_dir, tracking_uri, tmp_path):
    cfg = compose(tiny_overrides(tiny_benchmark, test_bundle_dir, tracking_uri, "+paradigm=video2mask", "bbs.p=0.25"))
    results = run(cfg, tmp_path)
    client = mlflow.MlflowClient(tracking_uri)
    r = client.get_run(results["mlflow_run_id"])
    assert r.data.params["paradigm.name"] == "video2mask" and r.data.params["bbs.p"] == "0.25"
    assert r.data.params["spa.enabled"] == "False" and r.data.params["wi.enabled"] == "True"
    for key in ("train/loss", "val/J", "val/F", "val/JF"):
        assert key in r.data.metrics, key
    assert r.data.metrics["val/JF"] == pytest.approx(results["JF"] / 100)
    artifacts = [a.path for a in client.list_artifacts(r.info.run_id)]
    assert "results.json" in artifacts and "config.yaml" in artifacts
    overlays = [a.path for a in client.list_artifacts(r.info.run_id, "overlays")]
    assert overlays and all(p.endswith(".png") for p in overlays)
    # The final score covers the whole split, the in-training validation only val_limit expressions.
    history = client.get_metric_history(r.info.run_id, "val/JF")
    assert len(history) >= 2


def test_validate_mode_reproduces_the_trained_score(tiny_benchmark, test_bundle_dir, tracking_uri, tmp_path):
    base = tiny_overrides(tiny_benchmark, test_bundle_dir, tracking_uri, "+paradigm=video2mask", "dvi.enabled=true")
    trained = run(compose(base), tmp_path / "train")
    ckpt = tmp_path / "train" / "checkpoints" / "last.ckpt"
    again = run(compose(base + ["mode=validate", f"ckpt_path={ckpt}"]), tmp_path / "validate")
    assert again["JF"] == pytest.approx(trained["JF"], abs=1e-6)
