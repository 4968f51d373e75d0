"""rvosflow.sweep on the tiny benchmark: grids complete with mean ± std tables, resume after a
SIGKILL, failing trials, two workers on one study, a pruned TPE search; and the shipped sweep
files compose for every row and profile."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import optuna
import pandas as pd
import pytest
import yaml
from optuna_dashboard import get_note

from rvosflow import sweep
from rvosflow.errors import SpecError
from rvosflow.paths import PROJECT_ROOT
from rvosflow.tracking import PARENT_TAG, STUDY_TAG

TABLE2 = PROJECT_ROOT / "sweeps" / "table2.yaml"
BBS_P = PROJECT_ROOT / "sweeps" / "bbs_p.yaml"


def tiny(tiny_benchmark, bundle_dir, max_steps=2):
    return [
        f"data.root={tiny_benchmark / 'mevis'}", "data.height=32", "data.max_width=32", "data.num_frames=9",
        "data.batch_size=2", "data.val_limit=3", "data.val_batch_size=3", f"model.path={bundle_dir}",
        "text.max_length=16", f"trainer.max_steps={max_steps}", "trainer.val_check_interval=2",
        "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false", "num_overlays=1", "latent_cache_dir=null", "text_cache_dir=null",
    ]


ROWS = [
    {"id": "base", "label": "base flow", "overrides": ["+paradigm=video2mask"], "paper": {"JF": 47.9, "J": 42.9, "F": 52.9}},
    {"id": "h", "label": "final", "overrides": ["+paradigm=video2mask", "bbs.p=0.5", "spa.enabled=true", "dvi.enabled=true"],
     "paper": {"JF": 60.6, "J": 55.9, "F": 65.2}},
]


def write_sweep(path: Path, overrides, rows=ROWS, seeds=(0, 1), **top) -> Path:
    spec = {"kind": "grid", "name": "t", "title": "test table", "rows": rows,
            "profiles": {"test": {"seeds": list(seeds), "overrides": list(overrides)}},
            "heartbeat_interval": 1, "grace_period": 4, "max_retry": 2, **top}
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture
def env(tmp_path):
    return {"storage": f"sqlite:///{tmp_path / 'sweeps.db'}", "uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
            "out": tmp_path / "results", "runs": tmp_path / "runs"}


def cli(sweep_file, env, *more):
    return ["--profile", "test", "--storage", env["storage"], "--tracking-uri", env["uri"], "--out", str(env["out"]),
            "--runs-dir", str(env["runs"]), "--threads", "1", str(sweep_file), *more]


def study_trials(env, name="t-test"):
    return optuna.load_study(study_name=name, storage=env["storage"]).get_trials(deepcopy=False)


def children(env, name="t-test"):
    client = mlflow.MlflowClient(env["uri"])
    exp = client.get_experiment_by_name("rvosflow")
    parents = client.search_runs([exp.experiment_id], f"tags.`{STUDY_TAG}` = '{name}' and tags.`{PARENT_TAG}` != ''")
    assert len(parents) == 1, "exactly one parent run per study"
    kids = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parents[0].info.run_id}'")
    return parents[0], kids


def completed_points(trials):
    return [(t.params["row"], t.params["seed"]) for t in trials if t.state.name == "COMPLETE"]


# ------------------------------------------------------------------------------ fast checks

def test_shipped_sweep_files_compose_for_every_profile():
    for profile in ("default", "smoke", "hard", "gpu"):
        spec = sweep.load_spec(TABLE2, profile)
        assert [r.id for r in spec.rows] == ["a", "b", "c", "base", "d", "e", "f", "g", "h", "i"]
        sweep.compose_rows(spec, [])
        s = {r.id: r.settings for r in spec.rows}
        assert s["a"]["paradigm.name"] == "noise2mask" and s["c"]["paradigm.name"] == "onestep_velocity"
        assert s["base"]["bbs.p"] == 0.0 and s["e"]["bbs.p"] == 0.5 and not s["e"]["spa.enabled"]
        assert s["g"]["spa.enabled"] and not s["g"]["dvi.enabled"] and s["h"]["dvi.enabled"]
        assert s["h"]["wi.enabled"] and not s["i"]["wi.enabled"]
        assert s["a"]["bbs.p"] == 0.0 and s["a"]["solver.steps"] == 10  # noise2mask takes no BBS: off without a word
        assert spec.row("h").paper == {"JF": 60.6, "J": 55.9, "F": 65.2}
        # deltas: the base flow for rows a-h (the paper's reading), the final model for row i
        assert {r.id: r.reference for r in spec.rows} == {**{k: "base" for k in "abcdefgh"}, "base": None, "i": "h"}
    assert len(sweep.load_spec(TABLE2, "default").seeds) == 3
    assert "data=synthetic_hard" in sweep.load_spec(TABLE2, "hard").overrides
    gpu = sweep.load_spec(TABLE2, "gpu")
    assert "model=wan2.1_t2v_1.3b" in gpu.overrides and "data=mevis" in gpu.overrides
    search = sweep.load_spec(BBS_P, "smoke")
    assert search.kind == "search" and set(search.params) == {"bbs.p", "optim.lr"}
    sweep.compose_rows(search, [])


def test_bad_sweep_files_are_refused(tmp_path):
    with pytest.raises(SpecError, match=r"profiles: expected one of default, .*got 'nope'"):
        sweep.load_spec(TABLE2, "nope")
    bad = write_sweep(tmp_path / "bad.yaml", [], rows=[{"id": "x", "overrides": ["bbs.p=1.5"]}])
    with pytest.raises(SpecError, match="row x.*bbs.p"):
        sweep.compose_rows(sweep.load_spec(bad, "test"), [])


def test_misspelt_keys_in_sweep_files_are_errors_naming_the_key(tmp_path):
    # The cases: a profile's `overide:` ran 1,500-step trials, a row's `overides:` became
    # the final model, `grace_periood:` stayed 60. Each is now an error naming key and allowed keys.
    f = tmp_path / "s.yaml"
    cases = [
        ({"profiles": {"test": {"seeds": [0], "overide": ["trainer.max_steps=4"]}}},
         r"profiles\.test\.overide: expected a key of profiles\.test \(did you mean overrides\?\), got an unknown key"),
        ({"rows": [{"id": "x", "overides": ["+paradigm=noise2mask"]}]},
         r"rows\[0\]\.overides: expected a key of rows\[0\] \(did you mean overrides\?\)"),
        ({"grace_periood": 5}, r"grace_periood: expected a key of the sweep file \(did you mean grace_period\?\)"),
        ({"grace_period": "soon"}, r"grace_period: expected an integer >= 1, got 'soon'"),
        ({"metric": "JandF"}, r"metric: expected one of JF, J, F, got 'JandF'"),
        ({"reference": "y"}, r"reference: expected a row id \(x\), got 'y'"),
        ({"rows": [{"id": "x", "reference": "z"}]}, r"rows\[0\]\.reference: expected a row id \(x\), got 'z'"),
    ]
    for top, message in cases:
        spec = {"kind": "grid", "name": "t", "rows": [{"id": "x", "overrides": []}],
                "profiles": {"test": {"seeds": [0]}}, **top}
        f.write_text(yaml.safe_dump(spec))
        with pytest.raises(SpecError, match=message):
            sweep.load_spec(f, "test")
    assert sweep.main(["--profile", "test", str(f)]) == 2  # the CLI: one line, exit 2
    search = {"kind": "search", "params": {"bbs.p": {"type": "float", "low": 0.0, "high": 0.9}},
              "sampler": {"type": "tpe", "n_startup_trails": 3}, "profiles": {"test": {"seeds": [0]}}}
    f.write_text(yaml.safe_dump(search))
    with pytest.raises(SpecError, match=r"sampler\.n_startup_trails: expected an argument of TPESampler \(allowed: type, .*n_startup_trials"):
        sweep.compose_rows(sweep.load_spec(f, "test"), [])
    search["sampler"] = {"type": "tpe"}
    search["params"]["bbs.p"]["high"] = 1.5  # every parameter's range is composed and validated
    f.write_text(yaml.safe_dump(search))
    with pytest.raises(SpecError, match=r"params\.bbs\.p .*bbs\.p=1\.5.*bbs\.p"):
        sweep.compose_rows(sweep.load_spec(f, "test"), [])


def test_a_row_with_a_bad_override_is_refused_before_any_trial(tmp_path, env, capsys):
    # issue 13: `data.val_limit=abc` in one row failed only when its trial ran, after the others
    # had trained, with a TypeError naming no key, and the sweep exited 0
    rows = [ROWS[0], {"id": "bad", "overrides": ["+paradigm=video2mask", "data.val_limit=abc"]}]
    f = write_sweep(tmp_path / "t.yaml", [], rows=rows, seeds=[0])
    assert sweep.main(cli(f, env)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert "row bad" in err and "data.val_limit: expected an integer >= 1 or null, got 'abc'" in err
    assert not (tmp_path / "sweeps.db").exists() and not env["runs"].exists()  # nothing started


def test_reset_starts_a_new_study_folder_and_never_rewrites_earlier_trials(tiny_benchmark, test_bundle_dir, tmp_path, env):
    # The case: --reset rewrote the old study's results.json files, and the new
    # checkpoints became last-v1.ckpt while results.json named last.ckpt (the old model).
    f = write_sweep(tmp_path / "t.yaml", tiny(tiny_benchmark, test_bundle_dir, max_steps=1), rows=ROWS[:1], seeds=(0,))
    assert sweep.main(cli(f, env)) == 0
    (first,) = list(env["runs"].glob("study-*/trial-*/results.json"))
    before = first.read_bytes()
    assert sweep.main(cli(f, env, "--reset")) == 0
    results = sorted(env["runs"].glob("study-*/trial-*/results.json"))
    assert len(results) == 2 and len({p.parents[1] for p in results}) == 2
    assert first.read_bytes() == before
    for p in results:
        ckpt = Path(json.loads(p.read_text())["checkpoint"])
        assert ckpt.is_file() and ckpt.parent.parent == p.parent


def test_grid_completes_with_mean_std_table_and_mlflow_tree(tiny_benchmark, test_bundle_dir, tmp_path, env, capsys):
    f = write_sweep(tmp_path / "t.yaml", tiny(tiny_benchmark, test_bundle_dir), metric="F", reference="base")
    assert sweep.main(cli(f, env)) == 0
    trials = study_trials(env)
    assert sorted(completed_points(trials)) == [("base", 0), ("base", 1), ("h", 0), ("h", 1)]
    assert len(trials) == 4
    assert all(t.value == t.user_attrs["F"] for t in trials)  # `metric:` is what Optuna sees
    table = pd.read_csv(env["out"] / "t-test.csv")
    h_jf = [t.user_attrs["JF"] for t in trials if t.params["row"] == "h"]  # ... and J&F stays J&F in the table
    assert table.set_index("id").loc["h", "JF_mean"] == pytest.approx(sum(h_jf) / 2, abs=1e-4)
    assert list(table["id"]) == ["base", "h"] and (table["seeds"] == 2).all()
    assert table["JF_std"].notna().all() and table["paper_JF"].tolist() == [47.9, 60.6]
    md = (env["out"] / "t-test.md").read_text()
    assert "±" in md and "Paper J&F" in md
    # per expression kind: the tiny benchmark's default tier has colour expressions
    assert "J&F colour" in md and table["JF/colour_mean"].notna().all()
    assert "Spearman ρ between our row means and the paper's J&F" in md
    # h against its reference row base: a delta with its paired-bootstrap CI, from the trials' records
    assert table["reference"].tolist()[1] == "base" and pd.isna(table["reference"].tolist()[0])
    h_line = table.set_index("id").loc["h"]
    assert h_line["delta_JF_low"] <= h_line["delta_JF"] <= h_line["delta_JF_high"]
    assert h_line["delta_JF"] == pytest.approx(h_line["JF_mean"] - table.set_index("id").loc["base", "JF_mean"], abs=1e-3)
    assert "Δ J&F [95% CI]" in md and "paired bootstrap over expressions" in md and "TC" in md
    for ext in ("tex", "png"):
        assert (env["out"] / f"t-test.{ext}").stat().st_size > 0
    out = capsys.readouterr().out
    assert "[4/4]" in out and "J&F" in out and "row h (final) seed 1" in out
    parent, kids = children(env)
    assert parent.info.status == "FINISHED" and len(kids) == 4
    assert {(k.data.tags["row"], k.data.tags["seed"]) for k in kids} == {("base", "0"), ("base", "1"), ("h", "0"), ("h", "1")}
    assert all(k.info.status == "FINISHED" for k in kids)
    # named by row and configuration, as the same configuration run alone (video2mask-p0.5-spa-dvi-s0)
    assert sorted(k.info.run_name for k in kids) == ["base-video2mask-s0", "base-video2mask-s1",
                                                     "h-video2mask-p0.5-spa-dvi-s0", "h-video2mask-p0.5-spa-dvi-s1"]
    assert all(k.data.tags["profile"] == "test" and k.data.tags["paradigm"] == "video2mask" for k in kids)
    client = mlflow.MlflowClient(env["uri"])
    arts = {a.path for a in client.list_artifacts(parent.info.run_id, "results")}
    assert arts == {f"results/t-test.{e}" for e in ("md", "csv", "tex", "png")}
    # The parent run carries the table as numbers (rows, J&F/J/F means and stds, paper, per kind) and a
    # few summary metrics, not one metric per row; it has user, source and git tags like any run.
    shown = client.load_table(parent.info.experiment_id, "table.json", run_ids=[parent.info.run_id])
    assert list(shown["id"]) == ["base", "h"]
    assert {"JF_mean", "JF_std", "J_mean", "F_mean", "paper_JF", "JF/colour_mean", "seeds"} <= set(shown.columns)
    assert all(pd.api.types.is_numeric_dtype(shown[c])
               for c in ("JF_mean", "JF_std", "paper_JF", "seeds", "TC_mean", "delta_JF", "delta_JF_low"))
    assert shown.set_index("id").loc["h", "reference"] == "base"
    assert shown.set_index("id").loc["h", "paper_JF"] == 60.6
    assert shown.set_index("id").loc["h", "JF_mean"] == pytest.approx(table.set_index("id").loc["h", "JF_mean"], abs=1e-4)
    # its description is the Markdown table with ρ and the figure (the run's own artifact)
    note = parent.data.tags["mlflow.note.content"]
    assert md.strip() in note and "Spearman ρ" in note and "Smoke test" not in note
    assert f"![t-test.png](get-artifact?path=results/t-test.png&run_uuid={parent.info.run_id})" in note
    assert set(parent.data.metrics) == {"rows_scored", "JF_best_row", "JF_span", "JF_seed_std_mean", "spearman_rho_paper",
                                        "delta_JF/h", "delta_JF_low/h", "delta_JF_high/h", "significant/h"}
    assert parent.data.metrics["rows_scored"] == 2
    assert {"mlflow.user", "mlflow.source.name", "mlflow.source.git.commit"} <= set(parent.data.tags)
    assert parent.data.tags["profile"] == "test"
    # Optuna: the objective is named, each trial records its settings as params and links its MLflow run.
    study = optuna.load_study(study_name="t-test", storage=env["storage"])
    assert study.metric_names == ["F (%)"]
    h0 = next(t for t in trials if (t.params["row"], t.params["seed"]) == ("h", 0))
    assert {k: h0.params[k] for k in ("paradigm.name", "bbs.p", "spa.enabled", "dvi.enabled", "wi.enabled")} == {
        "paradigm.name": "video2mask", "bbs.p": 0.5, "spa.enabled": True, "dvi.enabled": True, "wi.enabled": True}
    assert next(t for t in trials if t.params["row"] == "base").params["bbs.p"] == 0.0
    assert f"/runs/{h0.user_attrs['mlflow_run_id']}?" in h0.user_attrs["mlflow_url"]
    note = get_note(optuna.trial.Trial(study, h0._trial_id))  # a link in the dashboard
    assert note == f"MLflow run: [h-video2mask-p0.5-spa-dvi-s0]({h0.user_attrs['mlflow_url']})"
    assert "Parameter importance does not apply" in get_note(study)
    # the sweep ends with where to look: the parent's page and the dashboard's command
    assert f"MLflow parent run: http://127.0.0.1:5000/#/experiments/{parent.info.experiment_id}/runs/{parent.info.run_id}?" in out
    assert f"make optuna-dashboard STORAGE={env['storage']}" in out
    # Re-running a finished study runs nothing and reuses the parent run (and replaces its table).
    assert sweep.main(cli(f, env)) == 0
    assert len(study_trials(env)) == 4
    parent2, kids2 = children(env)
    assert parent2.info.run_id == parent.info.run_id and len(kids2) == 4
    again = client.load_table(parent.info.experiment_id, "table.json", run_ids=[parent.info.run_id])
    assert len(again) == 2
    # Changing what a row means under an existing study is refused.
    f2 = write_sweep(tmp_path / "t.yaml", tiny(tiny_benchmark, test_bundle_dir, max_steps=4))
    assert sweep.main(cli(f2, env)) == 2
    assert "other settings" in capsys.readouterr().err


def test_a_table_scored_on_part_of_the_split_says_its_numbers_mean_nothing(tiny_benchmark, test_bundle_dir, tmp_path, env):
    # The smoke profile's trainer.limit_val_batches=1: a J&F from one batch looked like a full one.
    overrides = [*tiny(tiny_benchmark, test_bundle_dir, max_steps=1), "trainer.limit_val_batches=1"]
    f = write_sweep(tmp_path / "t.yaml", overrides, rows=ROWS[:1], seeds=(0,))
    assert sweep.main(cli(f, env)) == 0
    stamp = "**Smoke test: these numbers mean nothing** (scored on part of the split (trainer.limit_val_batches=1))."
    assert (env["out"] / "t-test.md").read_text().startswith(stamp)
    parent, (kid,) = children(env)
    assert kid.data.tags["partial_eval"] == "trainer.limit_val_batches=1"
    assert stamp in parent.data.tags["mlflow.note.content"]


def test_failing_trial_is_failed_in_optuna_and_mlflow_and_the_study_goes_on(tiny_benchmark, test_bundle_dir, tmp_path, env):
    rows = [ROWS[0], {"id": "div", "label": "diverges", "overrides": ["+paradigm=video2mask", "optim.lr=1e30"]}]
    f = write_sweep(tmp_path / "t.yaml", tiny(tiny_benchmark, test_bundle_dir), rows=rows, seeds=[0])
    assert sweep.main(cli(f, env)) == 1  # the others ran; a failed trial makes the sweep fail
    states = {t.params["row"]: t.state.name for t in study_trials(env)}
    assert states == {"base": "COMPLETE", "div": "FAIL"}
    fail = next(t for t in study_trials(env) if t.params["row"] == "div")
    assert "FloatingPointError" in fail.user_attrs["error"]
    _, kids = children(env)
    by_row = {k.data.tags["row"]: k for k in kids}
    assert by_row["div"].info.status == "FAILED" and "FloatingPointError" in by_row["div"].data.tags["rvosflow.error"]
    assert by_row["base"].info.status == "FINISHED"
    table = pd.read_csv(env["out"] / "t-test.csv")
    assert table.set_index("id").loc["div", "failed"] == 1 and pd.isna(table.set_index("id").loc["div", "JF_mean"])
    md = (env["out"] / "t-test.md").read_text()
    assert "0 (1 failed)" in md and "Failed: row div seed 0" in md  # the table marks the failed row
    parent, _ = children(env)
    assert parent.info.status == "FAILED"
    # A re-run does not repeat the failure (and still says the sweep failed); --retry-failed does.
    assert sweep.main(cli(f, env)) == 1
    assert len(study_trials(env)) == 2
    assert sweep.main(cli(f, env, "--retry-failed")) == 1
    assert [t.state.name for t in study_trials(env) if t.params["row"] == "div"] == ["FAIL", "FAIL"]


def test_tpe_search_with_pruning(tiny_benchmark, test_bundle_dir, tmp_path, env):
    spec = {"kind": "search", "name": "s", "base": ["+paradigm=video2mask"], "monitor": "val/JF",
            "params": {"bbs.p": {"type": "float", "low": 0.0, "high": 0.9},
                       "optim.lr": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True}},
            "sampler": {"type": "tpe", "n_startup_trials": 2, "seed": 0},
            # val/JF is in percent: a threshold above 100 prunes every trial at its first report
            # (deterministic; the shipped bbs_p.yaml uses the median pruner)
            "pruner": {"type": "threshold", "lower": 100.5, "n_warmup_steps": 0},
            "profiles": {"test": {"n_trials": 3, "seeds": [0], "overrides": tiny(tiny_benchmark, test_bundle_dir, 4)}}}
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump(spec))
    assert sweep.main(cli(f, env)) == 0
    trials = study_trials(env, "s-test")
    # the searched params, and the settings the search holds fixed as one-choice params
    assert len(trials) == 3 and all(set(t.params) == {"bbs.p", "optim.lr", "paradigm.name", "spa.enabled", "dvi.enabled", "wi.enabled"}
                                 for t in trials)
    assert all(t.distributions["spa.enabled"].choices == (False,) for t in trials)
    assert [t.state.name for t in trials] == ["PRUNED"] * 3
    # reported at the first in-training validation (global step 2), pruned there: never reached step 4
    assert all(list(t.intermediate_values) == [2] for t in trials)
    assert len({t.params["bbs.p"] for t in trials}) == 3
    _, kids = children(env, "s-test")
    assert sorted(k.info.status for k in kids) == ["KILLED"] * 3
    assert all("pruned at step 2" in k.data.tags["rvosflow.error"] for k in kids)
    table = pd.read_csv(env["out"] / "s-test.csv")
    assert len(table) == 3 and {"bbs.p", "optim.lr", "J&F"} <= set(table.columns)


# ------------------------------------------------------------------------- processes

def driver(sweep_file, env, *more, **kw):
    return subprocess.Popen([sys.executable, "-m", "rvosflow.sweep", *cli(sweep_file, env, *more)],
                            cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def wait_for(cond, timeout=120, proc=None):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            if cond():
                return
        except Exception:  # the study may not exist yet
            pass
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"driver exited early:\n{proc.stdout.read()}")
        time.sleep(0.2)
    raise AssertionError("timed out")


@pytest.mark.slow  # ~60 s: two driver processes and a heartbeat grace period
def test_sigkill_mid_trial_then_rerun_retries_it_and_keeps_finished_ones(tiny_benchmark, test_bundle_dir, tmp_path, env):
    # Long enough trials that the kill lands mid-training.
    f = write_sweep(tmp_path / "t.yaml", tiny(tiny_benchmark, test_bundle_dir, max_steps=40))
    proc = driver(f, env)
    # Let one trial finish, then kill while the next one runs.
    wait_for(lambda: any(t.state.name == "COMPLETE" for t in study_trials(env)), proc=proc)
    wait_for(lambda: any(t.state.name == "RUNNING" for t in study_trials(env)), proc=proc)
    # inside run(), training: its MLflow child run exists (created after the config and data checks)
    wait_for(lambda: any(k.info.status == "RUNNING" for k in children(env)[1]), proc=proc)
    time.sleep(0.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = study_trials(env)
    finished = {t.number: (t.params["row"], t.params["seed"]) for t in before if t.state.name == "COMPLETE"}
    killed = [t for t in before if t.state.name == "RUNNING"]
    assert len(killed) == 1 and finished
    killed_point = (killed[0].params["row"], killed[0].params["seed"])

    rerun = driver(f, env)
    out, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, out
    after = study_trials(env)
    # Finished trials are neither lost nor rerun; the killed one was retried; the table is complete.
    assert {t.number: (t.params["row"], t.params["seed"]) for t in after if t.number in finished} == finished
    assert all(after[n].state.name == "COMPLETE" for n in finished)
    points = completed_points(after)
    assert sorted(points) == [("base", 0), ("base", 1), ("h", 0), ("h", 1)] and len(points) == 4
    assert after[killed[0].number].state.name == "FAIL"
    retry = [t for t in after if t.system_attrs.get("failed_trial") == killed[0].number]
    assert len(retry) == 1 and (retry[0].params["row"], retry[0].params["seed"]) == killed_point
    _, kids = children(env)
    by_trial = {int(k.data.tags["optuna.trial"]): k.info.status for k in kids}
    assert by_trial[killed[0].number] == "KILLED"
    assert sum(s == "FINISHED" for s in by_trial.values()) == 4
    assert (pd.read_csv(env["out"] / "t-test.csv")["seeds"] == 2).all()


@pytest.mark.slow  # ~60 s: two driver processes
def test_two_drivers_on_one_study_finish_the_grid_without_duplicates(tiny_benchmark, test_bundle_dir, tmp_path, env):
    # The many-machines setting: the same command twice against one storage, started together.
    # Trials long enough (20 steps) that both drivers get work while the other one is training.
    f = write_sweep(tmp_path / "t.yaml", tiny(tiny_benchmark, test_bundle_dir, max_steps=20))
    a, b = driver(f, env), driver(f, env)
    out_a, _ = a.communicate(timeout=400)
    out_b, _ = b.communicate(timeout=400)
    assert a.returncode == 0 and b.returncode == 0, out_a + out_b
    points = completed_points(study_trials(env))
    assert len(points) == len(set(points)) == 4, out_a + out_b
    _, kids = children(env)  # one parent run although both created one at the same time
    assert sum(k.info.status == "FINISHED" for k in kids) == 4


@pytest.mark.slow  # ~50 s: spawns two worker processes
def test_workers_2_spawns_two_processes_without_duplicates(tiny_benchmark, test_bundle_dir, tmp_path, env):
    # 20-step trials: with 2-step ones the first worker could finish the grid before the second starts.
    f = write_sweep(tmp_path / "t.yaml", tiny(tiny_benchmark, test_bundle_dir, max_steps=20))
    p = driver(f, env, "--workers", "2")
    out, _ = p.communicate(timeout=400)
    assert p.returncode == 0, out
    points = completed_points(study_trials(env))
    assert len(points) == len(set(points)) == 4, out
    assert " w0 " in out and " w1 " in out and "[4/4]" in out


@pytest.mark.slow  # ~40 s: two driver processes
def test_ctrl_c_mid_trial_requeues_it_for_the_rerun(tiny_benchmark, test_bundle_dir, tmp_path, env):
    f = write_sweep(tmp_path / "t.yaml", tiny(tiny_benchmark, test_bundle_dir, max_steps=6), seeds=[0],
                    grace_period=600)  # the re-run must not depend on heartbeats
    proc = driver(f, env)
    wait_for(lambda: any(t.state.name == "RUNNING" and "row" in t.params for t in study_trials(env)), proc=proc)
    time.sleep(2.0)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert "interrupted" in out, out
    trials = study_trials(env)
    assert any(t.state.name == "FAIL" for t in trials) and any(t.state.name == "WAITING" for t in trials), out
    rerun = driver(f, env)
    out, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, out
    points = completed_points(study_trials(env))
    assert sorted(points) == [("base", 0), ("h", 0)]
