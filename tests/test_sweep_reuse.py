"""Rows that differ only in what acts at inference share one trained model (rvosflow.sweep.reuse):
the key, the groups, one training and N scorings equal to separate ``mode=validate`` runs, resume
(a finished training is never trained again, a killed one is), two workers; and stopping a sweep on
SIGTERM / SIGINT with the interrupted trial queued again (rvosflow.signals in the sweep)."""

from __future__ import annotations

import json
import os
import signal
import time

import pandas as pd
import pytest
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from test_sweep import children, cli, driver, env, study_trials, tiny, wait_for, write_sweep  # noqa: F401  (env: fixture)

from rvosflow import signals, sweep, tables
from rvosflow.config import compose, resolve
from rvosflow.errors import SpecError
from rvosflow.paths import PROJECT_ROOT
from rvosflow.sweep import reuse, worker
from rvosflow.train import run

SOLVER_STEPS = PROJECT_ROOT / "sweeps" / "solver_steps.yaml"
STEPS_ROWS = [{"id": "n1", "label": "N=1", "overrides": ["solver.steps=1"]},
              {"id": "n3", "label": "N=3", "overrides": ["solver.steps=3"]}]


def key_of(*overrides) -> str:
    return reuse.row_training(resolve(compose(list(overrides)))).key


def training_runs(env, name="t-test"):
    return [k for k in children(env, name)[1] if k.data.tags.get(reuse.ROLE_TAG) == "training"]


def scoring_runs(env, name="t-test"):
    return [k for k in children(env, name)[1] if k.data.tags.get(reuse.ROLE_TAG) != "training"]


# ------------------------------------------------------------------------------ keys and groups

def test_rows_differing_only_at_inference_train_the_same_model():
    base = key_of()
    for inference in ("solver.steps=5", "solver.shift=1.0", "solver.round_timesteps=false", "model.mask_rule=antialias",
                      "window_frames=5", "ema.enabled=true", "model.vae_decoder_path=/some/tuned/decoder"):
        assert key_of(inference) == base, inference
    assert key_of("solver.steps=1") == base  # typed or not, the same setting
    for training in ("bbs.p=0.25", "spa.enabled=false", "optim.lr=1e-3", "trainer.max_steps=7", "data.height=32",
                     "text.clean=whitespace", "data.size_multiple=32", "solver.sigma_min=0.01", "ema.decay=0.99"):
        assert key_of(training) != base, training  # acts at training, or is no axis: never shared
    assert key_of("seed=3") == base  # the seed is the key's second part (Group.fingerprint)
    assert reuse.row_training(resolve(compose(["mode=validate"]))) is None  # scores, trains nothing


def test_groups_label_rows_and_train_an_ema_when_any_row_scores_one(tmp_path):
    rows = [{"id": "a", "overrides": ["solver.steps=1"]}, {"id": "b", "overrides": ["solver.steps=2", "ema.enabled=true"]},
            {"id": "c", "overrides": ["bbs.p=0.25"]}]
    spec = sweep.load_spec(write_sweep(tmp_path / "g.yaml", ["trainer.max_steps=3"], rows=rows), "test")
    sweep.compose_rows(spec, [])
    (ab, c) = reuse.groups(spec)
    assert ab.rows == ("a", "b") and ab.shared and c.rows == ("c",) and not c.shared
    assert ab.overrides == ("trainer.max_steps=3", "solver.steps=1", "ema.enabled=true")
    assert reuse.shared_group(spec, "b") == ab and reuse.shared_group(spec, "c") is None
    assert reuse.model_labels(spec) == {"a": "M1", "b": "M1", "c": "M2"}
    assert ab.fingerprint(0) != ab.fingerprint(1)
    # the row's scoring types every inference-only setting, so the checkpoint's never leak in
    assert "solver.steps=2" in spec.row("b").training.inference and "ema.enabled=true" in spec.row("b").training.inference
    assert "ema.enabled=false" in spec.row("a").training.inference


def test_solver_steps_sweep_trains_one_model_per_seed_in_every_profile():
    for profile, seeds in (("default", [0, 1, 2]), ("smoke", [0]), ("gpu", [0])):
        spec = sweep.load_spec(SOLVER_STEPS, profile)
        sweep.compose_rows(spec, [])
        assert spec.seeds == seeds and len(spec.rows) == 10
        assert {(r.settings["solver.steps"], r.settings["solver.shift"]) for r in spec.rows} == {
            (n, s) for n in (1, 2, 3, 5, 10) for s in (1.0, 3.0)}
        (group,) = reuse.groups(spec)  # default: 3 trainings (one per seed), 30 scorings
        assert group.shared and len(group.rows) == 10
        assert all(r.settings["bbs.p"] == 0.5 and r.settings["spa.enabled"] and r.settings["dvi.enabled"]
                   for r in spec.rows)  # the final model
    assert "model=wan2.1_t2v_1.3b" in sweep.load_spec(SOLVER_STEPS, "gpu").overrides


def test_a_figure_axis_the_rows_do_not_vary_is_refused(tmp_path):
    f = write_sweep(tmp_path / "f.yaml", [], rows=STEPS_ROWS, figure={"x": "bbs.p"})
    with pytest.raises(SpecError, match=r"figure\.x: expected an axis the rows vary \(solver\.steps\), got 'bbs\.p'"):
        sweep.compose_rows(sweep.load_spec(f, "test"), [])


def test_override_reads_back_as_the_same_value():
    for key, value in (("logger.run_name", "1"), ("logger.run_name", "it's"), ("window_frames", None),
                       ("ema.enabled", False), ("solver.shift", 3.0), ("ckpt_path", "/a b/last.ckpt")):
        cfg = compose([reuse.override(key, value)])
        node = cfg
        for part in key.split("."):
            node = node[part]
        assert node == value and type(node) is type(value)


# ------------------------------------------------------------------------------ one training, N scorings

def test_two_rows_differing_in_solver_steps_train_once_and_score_twice(tiny_benchmark, test_bundle_dir, tmp_path, env, capsys):
    base = tiny(tiny_benchmark, test_bundle_dir, max_steps=2)
    f = write_sweep(tmp_path / "t.yaml", base, rows=STEPS_ROWS, seeds=[0])
    assert sweep.main(cli(f, env)) == 0
    trials = study_trials(env)
    assert sorted(t.params["row"] for t in trials if t.state.name == "COMPLETE") == ["n1", "n3"] and len(trials) == 2
    (training,) = training_runs(env)  # trained once ...
    assert training.info.status == "FINISHED" and training.data.tags["rows"] == "n1,n3"
    (record,) = [json.loads(p.read_text()) for p in env["runs"].glob("study-*/models/*/trained.json")]
    assert record["mlflow_run_id"] == training.info.run_id and len(list(env["runs"].glob("study-*/models/*/attempt-*"))) == 1
    scorings = {k.data.tags["row"]: k for k in scoring_runs(env)}  # ... scored twice, each naming the training
    assert set(scorings) == {"n1", "n3"}
    for row, k in scorings.items():
        assert k.info.status == "FINISHED" and k.data.tags[reuse.TRAINED_BY_TAG] == training.info.run_id
        assert k.data.params["mode"] == "validate" and k.data.params["ckpt_path"] == record["checkpoint"]
        assert k.data.params["solver.steps"] == row[1:] and k.data.tags[reuse.MODEL_TAG] == "M1"
        assert k.data.metrics["infer/seconds_per_video"] > 0
    by_row = {t.params["row"]: t for t in trials}
    assert {t.user_attrs["checkpoint"] for t in trials} == {record["checkpoint"]}
    # The two scores are those of two separate `mode=validate` runs on that checkpoint.
    for row, steps in (("n1", 1), ("n3", 3)):
        alone = run(compose([*base, "mode=validate", f"ckpt_path={record['checkpoint']}", f"solver.steps={steps}",
                             f"logger.tracking_uri={env['uri']}"]), tmp_path / f"validate-{row}")
        assert alone["JF"] == by_row[row].value and alone["J"] == by_row[row].user_attrs["J"]
    md = (env["out"] / "t-test.md").read_text()
    assert "| Model" in md and md.count("| M1 ") == 2 and "Inference s/video" in md and tables.SHARED_MODELS_NOTE[:40] in md
    assert "train model M1 seed 0 once for rows n1, n3" in capsys.readouterr().out
    # A re-run trains nothing and scores nothing again.
    stamp = next(env["runs"].glob("study-*/models/*/trained.json")).stat().st_mtime_ns
    assert sweep.main(cli(f, env)) == 0
    assert len(study_trials(env)) == 2 and len(training_runs(env)) == 1 and len(scoring_runs(env)) == 2
    assert next(env["runs"].glob("study-*/models/*/trained.json")).stat().st_mtime_ns == stamp


def test_a_failed_shared_training_fails_its_rows_once_and_retry_failed_trains_it_again(tiny_benchmark, test_bundle_dir,
                                                                                       tmp_path, env):
    rows = [{"id": r["id"], "overrides": [*r["overrides"], "optim.lr=1e30"]} for r in STEPS_ROWS]  # diverges
    f = write_sweep(tmp_path / "t.yaml", tiny(tiny_benchmark, test_bundle_dir, max_steps=2), rows=rows, seeds=[0])
    assert sweep.main(cli(f, env)) == 1
    trials = study_trials(env)
    assert [t.state.name for t in trials] == ["FAIL", "FAIL"]
    assert all("failed to train" in t.user_attrs["error"] and "FloatingPointError" in t.user_attrs["error"] for t in trials)
    assert len(training_runs(env)) == 1  # tried once, not once per row
    assert sweep.main(cli(f, env, "--retry-failed")) == 1
    assert len(training_runs(env)) == 2 and len(list(env["runs"].glob("study-*/models/*/attempt-*"))) == 2


# ------------------------------------------------------------------------------ stopping on a signal

class SignalDuringScoring(Callback):
    """Sends ``signum`` to this process at the first batch of the ``at``-th final scoring (trainer.validate)."""

    def __init__(self, signum, at=1):
        self.signum, self.at, self.seen, self.sent = signum, at, 0, False

    def on_validation_epoch_start(self, trainer, module):
        if trainer.state.fn == TrainerFn.VALIDATING:
            self.seen += 1

    def on_validation_batch_start(self, trainer, module, batch, batch_idx, dataloader_idx=0):
        if trainer.state.fn == TrainerFn.VALIDATING and self.seen == self.at and not self.sent:
            self.sent = True
            os.kill(os.getpid(), self.signum)


class SignalDuringTraining(Callback):
    """Sends ``signum`` to this process at the first training batch."""

    def __init__(self, signum):
        self.signum, self.sent = signum, False

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if not self.sent:
            self.sent = True
            os.kill(os.getpid(), self.signum)


def with_callback(real_run, callback):
    return lambda cfg, run_dir, callbacks=None, tags=None: real_run(cfg, run_dir, callbacks=[*(callbacks or []), callback],
                                                                    tags=tags)


@pytest.fixture
def own_signal_handlers():
    saved = {s: signal.getsignal(s) for s in signals.SIGNALS}
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)


@pytest.mark.parametrize("signum, code, rows", [(signal.SIGTERM, 143, STEPS_ROWS), (signal.SIGINT, 130, STEPS_ROWS[:1])],
                         ids=["sigterm-scoring-a-shared-model", "sigint-scoring-after-training"])
def test_a_signal_during_the_final_scoring_stops_the_sweep_and_requeues_the_trial(
        tiny_benchmark, test_bundle_dir, tmp_path, env, monkeypatch, own_signal_handlers, signum, code, rows):
    f = write_sweep(tmp_path / "t.yaml", tiny(tiny_benchmark, test_bundle_dir, max_steps=2), rows=rows, seeds=[0])
    monkeypatch.setattr(worker, "run", with_callback(run, SignalDuringScoring(signum)))
    assert sweep.main(cli(f, env)) == code
    trials = study_trials(env)
    assert [t.state.name for t in trials] == ["FAIL", "WAITING"]  # stopped after the first trial, queued again
    assert trials[0].params == trials[1].params and "interrupted_trial" in trials[1].user_attrs
    (interrupted,) = scoring_runs(env)
    assert interrupted.info.status == "KILLED" and "final/JF" not in interrupted.data.metrics
    monkeypatch.undo()
    assert sweep.main(cli(f, env)) == 0  # the re-run scores it (and, for a shared model, does not train again)
    assert sorted(t.params["row"] for t in study_trials(env) if t.state.name == "COMPLETE") == [r["id"] for r in rows]
    if len(rows) > 1:
        assert len(training_runs(env)) == 1


def test_a_stopped_shared_training_is_trained_again_and_the_resume_command_is_the_last_line(
        tiny_benchmark, test_bundle_dir, tmp_path, env, monkeypatch, own_signal_handlers, capsys):
    f = write_sweep(tmp_path / "t.yaml", tiny(tiny_benchmark, test_bundle_dir, max_steps=2), rows=STEPS_ROWS, seeds=[0])
    monkeypatch.setattr(reuse, "run", with_callback(run, SignalDuringTraining(signal.SIGTERM)))
    assert sweep.main(cli(f, env)) == 143
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == "sweep stopped by SIGTERM; resume with: python -m rvosflow.sweep " + " ".join(cli(f, env))
    assert not list(env["runs"].glob("study-*/models/*/trained.json"))  # not finished: nothing records it
    assert [k.info.status for k in training_runs(env)] == ["KILLED"] and not study_trials(env)  # no row scored it
    monkeypatch.undo()
    assert sweep.main(cli(f, env)) == 0
    assert sorted(k.info.status for k in training_runs(env)) == ["FINISHED", "KILLED"]  # trained again, from the start
    record = json.loads(next(env["runs"].glob("study-*/models/*/trained.json")).read_text())
    assert record["run_dir"].endswith("attempt-2")
    assert sorted(t.params["row"] for t in study_trials(env) if t.state.name == "COMPLETE") == ["n1", "n3"]


def test_a_scored_row_is_never_scored_again_and_a_finished_training_never_trained_again(
        tiny_benchmark, test_bundle_dir, tmp_path, env, monkeypatch, own_signal_handlers):
    f = write_sweep(tmp_path / "t.yaml", tiny(tiny_benchmark, test_bundle_dir, max_steps=2), rows=STEPS_ROWS, seeds=[0])
    monkeypatch.setattr(worker, "run", with_callback(run, SignalDuringScoring(signal.SIGINT, at=2)))  # 2nd scoring
    assert sweep.main(cli(f, env)) == 130
    trials = study_trials(env)
    (scored,) = [t for t in trials if t.state.name == "COMPLETE"]
    done, other = scored.params["row"], ({"n1", "n3"} - {scored.params["row"]}).pop()
    assert sorted((t.params["row"], t.state.name) for t in trials) == sorted(
        [(done, "COMPLETE"), (other, "FAIL"), (other, "WAITING")])
    monkeypatch.undo()
    assert sweep.main(cli(f, env)) == 0
    trials = study_trials(env)
    assert sorted((t.params["row"], t.state.name) for t in trials) == sorted(
        [(done, "COMPLETE"), (other, "FAIL"), (other, "COMPLETE")])  # no new trial for the scored row
    again = next(t for t in trials if t.number == scored.number)
    assert again.value == scored.value and again.datetime_complete == scored.datetime_complete
    runs = sorted((k.data.tags["row"], k.info.status) for k in scoring_runs(env))
    assert runs == sorted([(done, "FINISHED"), (other, "FINISHED"), (other, "KILLED")])  # the scored row: once
    (training,) = training_runs(env)
    assert training.info.status == "FINISHED" and len(list(env["runs"].glob("study-*/models/*/attempt-*"))) == 1


# ------------------------------------------------------------------------- processes

@pytest.mark.slow  # ~90 s: two driver processes
def test_a_killed_training_is_trained_again_and_its_run_marked_killed(tiny_benchmark, test_bundle_dir, tmp_path, env):
    f = write_sweep(tmp_path / "t.yaml", tiny(tiny_benchmark, test_bundle_dir, max_steps=40), rows=STEPS_ROWS, seeds=[0])
    proc = driver(f, env)
    wait_for(lambda: any(k.info.status == "RUNNING" for k in training_runs(env)), proc=proc)
    time.sleep(1.0)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not list(env["runs"].glob("study-*/models/*/trained.json"))
    rerun = driver(f, env)
    out, _ = rerun.communicate(timeout=400)
    assert rerun.returncode == 0, out
    statuses = sorted(k.info.status for k in training_runs(env))
    assert statuses == ["FINISHED", "KILLED"], out
    assert sorted(p.name for p in env["runs"].glob("study-*/models/*/attempt-*")) == ["attempt-1", "attempt-2"]
    record = json.loads(next(env["runs"].glob("study-*/models/*/trained.json")).read_text())
    assert record["run_dir"].endswith("attempt-2")
    assert sorted(t.params["row"] for t in study_trials(env) if t.state.name == "COMPLETE") == ["n1", "n3"]


@pytest.mark.slow  # ~90 s: spawns two worker processes
def test_two_workers_train_each_model_once(tiny_benchmark, test_bundle_dir, tmp_path, env):
    f = write_sweep(tmp_path / "t.yaml", tiny(tiny_benchmark, test_bundle_dir, max_steps=20), rows=STEPS_ROWS, seeds=[0, 1])
    p = driver(f, env, "--workers", "2")
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, out
    runs = training_runs(env)
    assert sorted(k.data.tags["seed"] for k in runs) == ["0", "1"] and all(k.info.status == "FINISHED" for k in runs), out
    assert len(list(env["runs"].glob("study-*/models/*/attempt-*"))) == 2
    assert " w0 " in out and " w1 " in out and "[4/4]" in out
    table = pd.read_csv(env["out"] / "t-test.csv")
    assert list(table["model"]) == ["M1", "M1"] and (table["seeds"] == 2).all()


@pytest.mark.slow  # ~60 s: a driver process
def test_sigterm_to_a_driver_with_two_workers_exits_143_and_requeues(tiny_benchmark, test_bundle_dir, tmp_path, env):
    f = write_sweep(tmp_path / "t.yaml", tiny(tiny_benchmark, test_bundle_dir, max_steps=40), seeds=[0, 1],
                    grace_period=600)  # the re-run must not depend on heartbeats
    proc = driver(f, env, "--workers", "2")
    wait_for(lambda: sum(t.state.name == "RUNNING" and "row" in t.params for t in study_trials(env)) == 2, proc=proc)
    time.sleep(2.0)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 143, out
    trials = study_trials(env)
    assert sum(t.state.name == "WAITING" for t in trials) == 2 and not any(t.state.name == "RUNNING" for t in trials), out
    assert all(k.info.status != "RUNNING" for k in children(env)[1])
