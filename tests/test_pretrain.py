"""Pretraining of the tiny bundle: caching, errors, and a few-step run on TEST size."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from rvosflow.data.formats import DatasetFormatError
from rvosflow.models.loader import load_wan_bundle
from rvosflow.pretrain import REPORT_NAME, SAMPLE_NAME, PretrainConfig, auto_threads, busy_cores, main, pretrain


@pytest.fixture(scope="session")
def pretrain_data(request, tmp_path_factory):
    """The data engineer's ``tiny_benchmark`` when provided, else a small benchmark written here."""
    try:
        return request.getfixturevalue("tiny_benchmark")  # root Path (mevis/, ref_ytvos/, ...)
    except pytest.FixtureLookupError:
        from rvosflow.data.synthetic import SyntheticConfig, write_benchmark

        out = tmp_path_factory.mktemp("bench") / "synthetic"
        write_benchmark(out, SyntheticConfig(train_videos=3, valid_u_videos=2, valid_videos=1), progress=False)
        return out


def test_cached_bundle_returns_at_once(test_bundle_dir, tmp_path):
    out = tmp_path / "wan"
    shutil.copytree(test_bundle_dir, out)
    (out / REPORT_NAME).write_text("{}")
    # the data path does not exist: a cached bundle must not even look at it
    assert pretrain(PretrainConfig(data=str(tmp_path / "no-data"), out=str(out), arch="test")) == out
    assert main(["--data", str(tmp_path / "no-data"), "--out", str(out)]) == 0


def test_missing_data_fails_clearly(tmp_path):
    with pytest.raises(DatasetFormatError, match=r"expected a MeViS-layout split \(run `make data`"):
        pretrain(PretrainConfig(data=str(tmp_path / "no-data"), out=str(tmp_path / "wan"), arch="test"))
    assert not (tmp_path / "wan").exists()


@pytest.mark.slow
def test_few_step_pretrain_makes_loadable_bundle(pretrain_data, tmp_path):
    out = tmp_path / "wan"
    cfg = PretrainConfig(data=str(pretrain_data), out=str(out), arch="test", vae_steps=2,
                         vae_batch=1, vae_mask_batch=2, t2v_steps=3, t2v_batch=2, max_text_length=16, log_every=1,
                         eval_max_expressions=2, eval_max_videos=1, sample_steps=2, train_max_videos=2,
                         progress=False)
    assert pretrain(cfg) == out
    b = load_wan_bundle(out)
    assert b.transformer.config.num_layers == 1 and b.scheduler.config.shift == 3.0
    rep = json.loads((out / REPORT_NAME).read_text())
    assert rep["vae"]["steps"] == 2 and rep["t2v"]["steps"] == 3 and len(rep["t2v"]["curve"]) == 3
    assert 0.0 <= rep["vae"]["valid_u"]["mask_JF"] <= 1.0 and rep["vae"]["valid_u"]["expressions"] == 2
    assert len(b.vae.config.latents_std) == b.vae.config.z_dim and min(b.vae.config.latents_std) > 0
    assert (out / SAMPLE_NAME).stat().st_size > 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".wan")]  # temp dir swapped in
    # a second run is cached; --force retrains into the same place
    before = (out / REPORT_NAME).stat().st_mtime_ns
    assert pretrain(cfg) == out and (out / REPORT_NAME).stat().st_mtime_ns == before


def test_auto_threads_counts_a_busy_core_now():
    """The free-core count reads current CPU use, not the minute-lagging load average."""
    n = os.cpu_count() or 1
    assert 1 <= auto_threads() <= n
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        assert busy_cores(0.5) >= 0.8  # the spinner alone keeps one core busy
    finally:
        spinner.kill()
        spinner.wait()
