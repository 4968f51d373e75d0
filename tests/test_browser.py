"""The MLflow UI as a researcher sees it (slow: a sweep, `mlflow ui` and headless Chromium driven
by Playwright): the sweep's parent run lists its children and its description holds the table and
the figure; a child run has its data sets, its logged model, its training curves, the overlays as
images by step, system metrics charts, and its artifacts; the model's files can be downloaded.
Needs Debian's `chromium` package; screenshots land in the test's tmp folder (`docs/ui/` holds a set)."""

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from rvosflow import sweep

pytestmark = pytest.mark.slow

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium package")
@pytest.mark.skipif(importlib.util.find_spec("playwright") is None, reason="needs playwright (the dev extra)")
def test_a_sweep_renders_in_the_mlflow_ui(tiny_benchmark, test_bundle_dir, tmp_path):
    from check_mlflow_ui import PAGES, check

    overrides = [
        f"data.root={tiny_benchmark / 'mevis'}", "data.height=32", "data.max_width=32", "data.num_frames=9",
        "data.batch_size=2", "data.val_limit=3", f"model.path={test_bundle_dir}", "text.max_length=16",
        "trainer.max_steps=4", "trainer.val_check_interval=2", "trainer.log_every_n_steps=1",
        "trainer.enable_progress_bar=false", "latent_cache_dir=null", "text_cache_dir=null", "trajectory_steps=2",
        "logger.system_metrics_interval=0.5",  # a few samples in a run of seconds
    ]
    rows = [{"id": "e", "label": "+ BBS", "overrides": ["+paradigm=video2mask", "bbs.p=0.5"], "paper": {"JF": 57.9}},
            {"id": "b", "label": "onestep mask", "overrides": ["+paradigm=onestep_mask"], "paper": {"JF": 38.9}}]
    f = tmp_path / "ui.yaml"
    f.write_text(yaml.safe_dump({"kind": "grid", "name": "ui", "title": "UI check", "rows": rows,
                                 "profiles": {"test": {"seeds": [0], "overrides": overrides}}}))
    db = tmp_path / "mlflow.db"
    assert sweep.main(["--profile", "test", "--storage", f"sqlite:///{tmp_path / 'sweeps.db'}", "--tracking-uri",
                       f"sqlite:///{db}", "--out", str(tmp_path / "results"), "--runs-dir", str(tmp_path / "runs"),
                       "--threads", "1", str(f)]) == 0
    shots = tmp_path / "ui"
    assert check(db, shots, "ui-test") == []
    assert all((shots / f"{name}.png").stat().st_size > 10_000 for name in PAGES)
