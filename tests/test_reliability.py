"""Issue 22's rules: every numeric setting finite and in range, Lightning's arguments, the tracking
URI and the Optuna storage checked before any work, YAML errors named; a checkpoint compared with
what was typed; SIGTERM/SIGINT exit 143/130 after a checkpoint the printed command resumes from;
MLflow states that tell the truth; nothing finished overwritten."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch

from rvosflow import config
from rvosflow.config import compose, resolve
from rvosflow.errors import ConfigError, SpecError
from rvosflow.paths import PROJECT_ROOT
from rvosflow.train import run
from test_run import tiny_overrides


def run_py(cwd: Path, *overrides: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(PROJECT_ROOT / "run.py"), *overrides], capture_output=True, text=True,
                          timeout=600, cwd=cwd, **kw)


# ----------------------------------------------------------------------------- 1. finite, in range, checked first

@pytest.mark.parametrize("overrides,line", [
    (["solver.shift=inf"], "solver.shift: expected a number > 0, got inf"),
    (["solver.shift=0"], "solver.shift: expected a number > 0, got 0"),
    (["bbs.p=nan"], "bbs.p: expected a number in [0, 1], got nan"),
    (["+paradigm=onestep_mask", "paradigm.timestep=nan"], "paradigm.timestep: expected a number in [0, 1000], got nan"),
    (["optim.lr=inf"], "optim.lr: expected a number >= 0, got inf"),
    (["solver.sigma_min=1"], "solver.sigma_min: expected a number in (0, 1), got 1"),
    (["seed=99999999999"], "seed: expected an integer in [0, 4294967295], got 99999999999"),
    (["trainer.precision=bogus"], "trainer.precision: expected one of 64, 32, 16, transformer-engine"),
    (["trainer.accelerator=bogus"], "trainer.accelerator: expected one of auto, cpu, cuda, gpu, mps, tpu, got 'bogus'"),
    (["trainer.strategy=bogus"], "trainer.strategy: expected one of auto, ddp, "),
    (["trainer.val_check_interval=0"], "trainer.val_check_interval: expected"),
    (["logger.tracking_uri=bogus://x"], "logger.tracking_uri: expected sqlite:///<path>, http(s)://host:port"),
    (["logger.tracking_uri=sqlite://relative.db"], "logger.tracking_uri: expected sqlite:///<absolute path>"),
])
def test_bad_numbers_and_names_are_refused_before_any_work(overrides, line):
    with pytest.raises(ConfigError) as err:
        resolve(compose(overrides))
    assert str(err.value).startswith(line) and "\n" not in str(err.value)


def test_shift_inf_through_run_py_is_one_line_and_no_mlflow_run(tmp_path):
    """The bar: `run.py $T solver.shift=inf` exits 2 with one line naming solver.shift, no MLflow run."""
    proc = run_py(tmp_path, "solver.shift=inf", "trainer.max_steps=2", f"hydra.run.dir={tmp_path / 'run'}",
                  f"logger.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: solver.shift: expected a number > 0, got inf") and proc.stderr.count("\n") == 1
    assert not (tmp_path / "mlflow.db").exists()


def test_broken_yaml_in_a_preset_names_the_file_and_line(tmp_path, monkeypatch):
    import shutil

    configs = shutil.copytree(PROJECT_ROOT / "configs", tmp_path / "configs")
    (configs / "experiment" / "broken.yaml").write_text("trainer:\n  max_steps: [1, 2\nfoo: : bar\n")
    monkeypatch.setattr(config, "CONFIG_DIR", configs)
    with pytest.raises(ConfigError, match=rf"^{configs / 'experiment' / 'broken.yaml'}: expected YAML, found a syntax error at line 3"):
        compose(["+experiment=broken"])


def test_broken_yaml_in_a_sweep_file_names_the_file_and_line(tmp_path):
    from rvosflow.sweep import load_spec

    f = tmp_path / "s.yaml"
    f.write_text("kind: grid\nrows:\n  - id: a\n    overrides: [x\n")
    with pytest.raises(SpecError, match=rf"^{f}: expected YAML, found a syntax error at line 5"):
        load_spec(f)


def test_a_storage_url_optuna_cannot_open_is_one_line_before_any_work(tmp_path, capsys):
    from rvosflow import sweep

    t0 = time.monotonic()
    assert sweep.main([str(PROJECT_ROOT / "sweeps" / "table2.yaml"), "--profile", "smoke", "--storage", "bogus://x"]) == 2
    assert capsys.readouterr().err.startswith("error: --storage: expected a database URL Optuna can open")
    assert time.monotonic() - t0 < 10  # before the models, the study and the rows


def test_evaluate_refuses_zero_videos_in_one_line(capsys):
    from rvosflow.evaluate import main

    assert main(["--benchmark", "mevis", "--root", "x", "--split", "valid_u", "--predictions", "p", "--out", "o.json",
                 "--videos", "0"]) == 2
    assert capsys.readouterr().err.startswith("error: python -m rvosflow.evaluate: argument --videos: expected an integer >= 1")


def test_lr_zero_runs_with_a_warning_and_a_tag(tiny_benchmark, test_bundle_dir, tmp_path, caplog):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    results = run(compose(tiny_overrides(tiny_benchmark, test_bundle_dir, uri, "optim.lr=0", "trainer.max_steps=1",
                                         "trajectory_steps=0", "num_overlays=0")), tmp_path / "run")
    tag = mlflow.MlflowClient(uri).get_run(results["mlflow_run_id"]).data.tags["rvosflow.warning"]
    assert tag.startswith("optim.lr=0: the weights never change") and "optim.lr=0" in caplog.text


# ----------------------------------------------------------------------------- 2. what was typed

def test_a_typed_value_that_equals_the_default_still_contradicts_the_checkpoint(tiny_benchmark, test_bundle_dir, tmp_path):
    """The issue's case: video2mask is the default, so `+paradigm=video2mask` against a noise2mask
    checkpoint used to pass unnoticed."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    base = tiny_overrides(tiny_benchmark, test_bundle_dir, uri, "trainer.max_steps=1", "trajectory_steps=0")
    trained = run(compose([*base, "+paradigm=noise2mask"]), tmp_path / "train")
    with pytest.raises(ConfigError, match=r"^paradigm.name: the checkpoint .* was trained with 'noise2mask', the command line says 'video2mask'"):
        resolve(compose([*base, "mode=validate", f"ckpt_path={trained['checkpoint']}", "+paradigm=video2mask"]))
    with pytest.raises(ConfigError, match=r"^bbs.p: the checkpoint .* was trained with 0.0, the command line says 0.5"):
        resolve(compose([*base, "mode=validate", f"ckpt_path={trained['checkpoint']}", "bbs.p=0.5"]))
    resolve(compose([*base, "mode=validate", f"ckpt_path={trained['checkpoint']}"]))  # untyped: the checkpoint's


# ----------------------------------------------------------------------------- 3. signals

def _until(predicate, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("the condition was not met in time")
        time.sleep(0.2)


@pytest.mark.parametrize("signum,code", [(signal.SIGTERM, 143),
                                         pytest.param(signal.SIGINT, 130, marks=pytest.mark.slow)])
def test_a_signal_stops_after_a_checkpoint_and_the_printed_command_resumes(tiny_benchmark, test_bundle_dir, tmp_path,
                                                                           signum, code):
    run_dir = tmp_path / "run"
    overrides = tiny_overrides(tiny_benchmark, test_bundle_dir, f"sqlite:///{tmp_path / 'mlflow.db'}",
                               "trainer.max_steps=200", "trainer.val_check_interval=2", "data.val_limit=1",
                               "num_overlays=0", "trajectory_steps=0")
    proc = subprocess.Popen([sys.executable, str(PROJECT_ROOT / "run.py"), *overrides, f"hydra.run.dir={run_dir}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    _until(lambda: (run_dir / "checkpoints" / "last.ckpt").exists() or proc.poll() is not None)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == code, err[-2000:]
    last = out.strip().splitlines()[-1]
    assert last.startswith(f"stopped by {signal.Signals(signum).name}; resume with: python run.py "), out[-1000:]
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    assert saved["global_step"] > 0 and not (run_dir / "results.json").exists()
    runs = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").search_runs(["1"])
    assert [r.info.status for r in runs] == ["KILLED"]
    # the printed command goes on from that step (shorter here: 2 more steps)
    command = last.split("resume with: ", 1)[1].split()[2:]
    command = [c if not c.startswith("trainer.max_steps=") else f"trainer.max_steps={saved['global_step'] + 2}" for c in command]
    again = run_py(tmp_path, *command)
    assert again.returncode == 0, again.stderr[-2000:]
    resumed = json.loads((run_dir / "results.json").read_text())
    assert torch.load(resumed["checkpoint"], weights_only=False, map_location="cpu")["global_step"] == saved["global_step"] + 2


def test_checkpoints_every_n_steps(tiny_benchmark, test_bundle_dir, tmp_path):
    from lightning.pytorch.callbacks import Callback

    seen = []

    class Watch(Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
            seen.append(torch.load(ckpt, weights_only=False)["global_step"] if ckpt.exists() else None)

    run(compose(tiny_overrides(tiny_benchmark, test_bundle_dir, f"sqlite:///{tmp_path / 'mlflow.db'}",
                               "trainer.max_steps=5", "trainer.val_check_interval=100", "checkpoint.every_n_steps=2",
                               "num_overlays=0", "trajectory_steps=0")), tmp_path / "run", callbacks=[Watch()])
    assert seen == [None, 2, 2, 4, 4]  # written at steps 2 and 4 (then at the end), never torn


# ----------------------------------------------------------------------------- 4. MLflow states

def test_a_run_is_finished_only_once_its_results_are_written(tiny_benchmark, test_bundle_dir, tmp_path):
    from lightning.pytorch.callbacks import Callback

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    class DiesWhenScoring(Callback):
        def on_validation_start(self, trainer, module):
            if module.metric_prefix == "final":
                raise RuntimeError("killed during the final scoring")

    with pytest.raises(RuntimeError, match="final scoring"):
        run(compose(tiny_overrides(tiny_benchmark, test_bundle_dir, uri, "trainer.max_steps=2", "trajectory_steps=0")),
            tmp_path / "run", callbacks=[DiesWhenScoring()])
    (r,) = mlflow.MlflowClient(uri).search_runs(["1"])
    assert r.info.status == "FAILED"  # Lightning's logger had marked it FINISHED at the end of fit


def test_a_sigkilled_run_is_found_and_marked_killed_by_the_next(tiny_benchmark, test_bundle_dir, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    overrides = tiny_overrides(tiny_benchmark, test_bundle_dir, uri, "trainer.max_steps=500", "num_overlays=0")
    proc = subprocess.Popen([sys.executable, str(PROJECT_ROOT / "run.py"), *overrides, f"hydra.run.dir={tmp_path / 'a'}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
    client = mlflow.MlflowClient(uri)
    _until(lambda: (tmp_path / "mlflow.db").exists() and client.get_experiment_by_name("rvosflow") is not None
           and client.search_runs(["1"]))
    proc.kill()
    proc.wait()
    assert client.search_runs(["1"])[0].info.status == "RUNNING"  # nothing could say otherwise
    run(compose(tiny_overrides(tiny_benchmark, test_bundle_dir, uri, "trainer.max_steps=1", "trajectory_steps=0",
                               "num_overlays=0")), tmp_path / "b")
    states = {r.info.run_id: r for r in client.search_runs(["1"])}
    killed = [r for r in states.values() if r.info.status == "KILLED"]
    assert len(killed) == 1 and "process died" in killed[0].data.tags["rvosflow.error"]


def test_a_dead_runs_heartbeat_on_another_host_goes_stale(tmp_path):
    from rvosflow.tracking import HEARTBEAT_TAG, HOST_TAG, PID_TAG, STALE_S, client, reap_dead_runs

    c = client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = c.create_experiment("e")
    now = time.time()
    fresh = c.create_run(exp, tags={HOST_TAG: "elsewhere", PID_TAG: "1", HEARTBEAT_TAG: f"{now - 10:.0f}"}).info.run_id
    stale = c.create_run(exp, tags={HOST_TAG: "elsewhere", PID_TAG: "1", HEARTBEAT_TAG: f"{now - STALE_S - 1:.0f}"}).info.run_id
    foreign = c.create_run(exp).info.run_id  # not ours: left alone
    assert reap_dead_runs(c, exp, now) == [stale]
    assert [c.get_run(r).info.status for r in (fresh, stale, foreign)] == ["RUNNING", "KILLED", "RUNNING"]


def test_a_signal_during_the_stores_set_up_waits_for_it(tmp_path, monkeypatch):
    """Found by the SIGTERM bar: a SIGTERM while the first run creates mlflow.db's tables left a
    store no later run could open (a traceback, exit 1). Now the set-up finishes, then the run stops."""
    import os

    from rvosflow import signals, tracking

    made, real_client = [], mlflow.MlflowClient

    def slow_client(uri):
        os.kill(os.getpid(), signal.SIGTERM)  # arrives in the middle of the set-up
        made.append(real_client(uri))
        return made[-1]

    signals.install()
    monkeypatch.setattr(tracking.mlflow, "MlflowClient", slow_client)
    try:
        with pytest.raises(signals.Stopped) as stop:
            tracking.client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signals.reset()
    assert stop.value.exit_code == 143 and made and made[0].search_experiments()  # the store is complete


@pytest.mark.parametrize("state,line", [
    ("half", "expected a complete MLflow store, found one whose table set-up was interrupted (move the file away and rerun)"),
    ("old", "expected a store at this MLflow's schema, found an older one (back it up, then run: mlflow db upgrade {uri})"),
])
def test_a_store_mlflow_cannot_open_is_one_line(tiny_benchmark, test_bundle_dir, tmp_path, state, line):
    """``half``: the store the SIGTERM above used to leave, as read off such a file: MLflow's
    migration stopped inside a batch alter (revision c3d9e7f1a2b4, the alter's temporary table
    still there, the later migrations' tables absent). ``old``: a store of an earlier MLflow."""
    import sqlite3

    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    mlflow.MlflowClient(uri).search_experiments()
    with sqlite3.connect(db) as con:
        con.execute("UPDATE alembic_version SET version_num = 'c3d9e7f1a2b4'")
        if state == "half":
            con.execute("CREATE TABLE _alembic_tmp_trace_info (request_id VARCHAR(50))")
            for table in ("job_locks", "scheduler_leases", "sql_trace_rollup_rebuild_queue", "sql_assessment_daily_rollups",
                          "sql_span_cost_daily_rollups", "sql_trace_metric_daily_rollups"):
                con.execute(f"DROP TABLE IF EXISTS {table}")
    out = run_py(tmp_path, *tiny_overrides(tiny_benchmark, test_bundle_dir, uri, "trainer.max_steps=1"),
                 f"hydra.run.dir={tmp_path / 'r'}")
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.strip().splitlines()[-1] == f"error: logger.tracking_uri: {db}: " + line.format(uri=uri)


# ----------------------------------------------------------------------------- 5. nothing finished overwritten

def test_a_finished_run_folder_is_never_rewritten(tiny_benchmark, test_bundle_dir, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    overrides = tiny_overrides(tiny_benchmark, test_bundle_dir, uri, "trainer.max_steps=1", "trajectory_steps=0",
                               "num_overlays=0")
    first = run_py(tmp_path, *overrides, f"hydra.run.dir={tmp_path / 'run'}")
    assert first.returncode == 0, first.stderr[-2000:]
    results, hydra_cfg = (tmp_path / "run" / "results.json").read_text(), (tmp_path / "run" / ".hydra" / "config.yaml").read_text()
    again = run_py(tmp_path, *overrides, "seed=1", f"hydra.run.dir={tmp_path / 'run'}")
    assert again.returncode == 2 and again.stderr.startswith(f"error: hydra.run.dir: {tmp_path / 'run'} holds a finished run")
    assert (tmp_path / "run" / "results.json").read_text() == results
    assert (tmp_path / "run" / ".hydra" / "config.yaml").read_text() == hydra_cfg  # refused before Hydra wrote it
    with pytest.raises(ConfigError, match="holds a finished run"):
        run(compose(overrides), tmp_path / "run")
    replaced = run(compose([*overrides, "overwrite=true"]), tmp_path / "run")
    assert json.loads((tmp_path / "run" / "results.json").read_text())["mlflow_run_id"] == replaced["mlflow_run_id"]


def test_predictions_never_delete_what_rvosflow_did_not_write(tiny_benchmark, test_bundle_dir, tmp_path):
    """The issue's case: predict.overwrite=true into a folder of ground-truth PNGs deleted all of them."""
    import shutil

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    base = tiny_overrides(tiny_benchmark, test_bundle_dir, uri, "mode=predict", "data.eval_videos=1", "trajectory_steps=0")
    truth = shutil.copytree(tiny_benchmark / "ref_ytvos" / "train" / "Annotations", tmp_path / "truth")
    pngs = sorted(truth.rglob("*.png"))
    with pytest.raises(ConfigError, match=rf"predict.out_dir: {truth} holds {len(pngs)} file\(s\) rvosflow did not write"):
        run(compose([*base, f"predict.out_dir={truth}", "predict.overwrite=true"]), tmp_path / "p0")
    assert sorted(truth.rglob("*.png")) == pngs
    out = tmp_path / "preds"
    first = run(compose([*base, f"predict.out_dir={out}"]), tmp_path / "p1")
    written = sorted(p for p in out.rglob("*.png"))
    assert len(written) == first["frames"] and json.loads((out / ".rvosflow-predictions.json").read_text())["files"]
    with pytest.raises(ConfigError, match="an earlier prediction .*predict.overwrite=true"):
        run(compose([*base, f"predict.out_dir={out}"]), tmp_path / "p2")
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="1 file\\(s\\) rvosflow did not write"):
        run(compose([*base, f"predict.out_dir={out}", "predict.overwrite=true"]), tmp_path / "p3")
    (out / "notes.txt").unlink()
    run(compose([*base, f"predict.out_dir={out}", "predict.overwrite=true"]), tmp_path / "p4")
    assert sorted(p for p in out.rglob("*.png")) == written


def test_another_studys_table_is_written_beside_it(tmp_path, capsys):
    from rvosflow.sweep.report import table_stem

    assert table_stem(tmp_path, "table2-smoke", "table2-smoke", "a" * 32) == "table2-smoke"
    assert table_stem(tmp_path, "table2-smoke", "table2-smoke", "a" * 32) == "table2-smoke"
    assert table_stem(tmp_path, "table2-smoke", "mine", "b" * 32) == "table2-smoke." + "b" * 8
    assert "belong to another study" in capsys.readouterr().out
