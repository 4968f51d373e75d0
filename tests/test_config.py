"""Config composition and up-front validation: the messages name the key and what is allowed."""

import os
import subprocess
import sys

import pytest

from rvosflow import schema
from rvosflow.config import compose, flat_params
from rvosflow.config import resolve as validate
from rvosflow.errors import ConfigError
from rvosflow.paths import PROJECT_ROOT


def test_default_is_the_papers_final_model():
    cfg = compose()
    assert (cfg.paradigm.name, cfg.bbs.p, cfg.spa.enabled, cfg.dvi.enabled, cfg.wi.enabled) == ("video2mask", 0.5, True, True, True)
    validate(cfg)


@pytest.mark.parametrize("name", ["noise2mask", "onestep_mask", "onestep_velocity", "video2mask"])
def test_every_paradigm_preset_composes_and_validates(name):
    cfg = compose([f"+paradigm={name}"])
    assert cfg.paradigm.name == name
    validate(cfg)


def test_command_line_toggles_apply_on_top_of_the_paradigm():
    cfg = compose(["+paradigm=video2mask", "bbs.p=0.5"])
    assert cfg.bbs.p == 0.5 and not cfg.spa.enabled and not cfg.dvi.enabled
    validate(cfg)


@pytest.mark.parametrize(
    "overrides,pattern",
    [
        (["bbs.p=1.5"], r"bbs\.p: expected a number in \[0, 1\], got 1\.5"),
        (["bbs.p=abc"], r"bbs\.p: expected a number.*'abc'"),
        (["spa.enabled=maybe"], r"spa\.enabled: expected true or false"),
        (["solver.steps=0"], r"solver\.steps: expected an integer >= 1"),
        (["solver.steps=2.5"], r"solver\.steps: expected an integer"),
        (["+paradigm=onestep_mask", "bbs.p=0.5"], r"bbs\.p: paradigm 'onestep_mask' cannot take BBS p \(it accepts: SPA\)"),
        (["+paradigm=noise2mask", "dvi.enabled=true"], r"dvi\.enabled: paradigm 'noise2mask' cannot take DVI"),
        (["+paradigm=onestep_velocity", "dvi.enabled=true"], r"dvi\.enabled: paradigm 'onestep_velocity' cannot take DVI"),
        (["paradigm.name=mask2video"], r"paradigm\.name: expected one of noise2mask, onestep_mask, .*, got 'mask2video'"),
        (["data.num_frames=16"], r"data\.num_frames: expected 1 \+ 4k"),
        (["data.frame_sampler=random"], r"data\.frame_sampler: expected one of global, .*, got 'random'"),
        (["mode=serve"], r"mode: expected one of train, validate, predict, got 'serve'"),
        (["model.dtype=float8"], r"model\.dtype: expected one of float32, bfloat16, float16, got 'float8'"),
        (["+trainer.max_stepz=3"], r"trainer\.max_stepz: expected a key of trainer \(did you mean max_steps"),
        # issue 13's cases: accepted silently or a library's TypeError before
        (["+foo=1"], r"^foo: expected a key of the run config \(allowed: mode, .*\), got an unknown key$"),
        (["+data.fooo=1"], r"^data\.fooo: expected a key of data"),
        (["data.height=0"], r"data\.height: expected an integer >= 16, got 0"),
        (["window_frames=0"], r"window_frames: expected an integer >= 1 or null, got 0"),
        (["trainer.max_steps=abc"], r"trainer\.max_steps: expected an integer >= -1, got 'abc'"),
        (["data.val_limit=abc"], r"data\.val_limit: expected an integer >= 1 or null, got 'abc'"),
        (["data=synthetic_davis", "data.annotators=[0,7]"], r"data\.annotators: expected a list of integers in \[0, 3\], got \[0, 7\]"),
        (["+data.annotators=[0]"], r"data\.annotators: expected a key of data"),  # mevis format takes none
        (["optim.betas=[0.9,2]"], r"optim\.betas: expected a list of numbers in \[0, 1\)"),
        (["data.root=${nope}"], r"data\.root: expected a value that resolves"),
        (["+strategy=fsdp", "fsdp.param_dtype=fp8"], r"fsdp\.param_dtype: expected one of float32, bfloat16, float16, got 'fp8'"),
        (["trainer.strategy=fsdp"], r"trainer\.strategy: fsdp needs the fsdp\.\* settings"),
    ],
)
def test_bad_values_fail_naming_key_and_allowed_values(overrides, pattern):
    with pytest.raises(ConfigError, match=pattern):
        validate(compose(overrides))


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["bbs.q=0.5"], "bbs.q: expected a key of the run config, got an unknown key"),
        (["+paradigm=mask2video"], "paradigm: expected one of noise2mask, onestep_mask, onestep_velocity, video2mask, got 'mask2video'"),
        (["data=nope"], "data: expected one of mevis, mixed, "),
        (["+bbs.p=1"], "bbs.p: expected a new key after '+', got one the config has (drop the '+')"),
        (["trainer.max_steps=["], "trainer.max_steps=[: expected key=value (Hydra's override syntax), got "),
    ],
)
def test_hydra_composition_errors_are_one_line_naming_the_key(overrides, message):
    with pytest.raises(ConfigError) as err:
        compose(overrides)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_every_key_of_the_composed_presets_is_in_the_schema():
    # each config group option composes and passes the schema (a key added to a YAML file without
    # its schema entry fails here, not in a user's run)
    for group in ("data", "model", "experiment"):
        for f in sorted((PROJECT_ROOT / "configs" / group).glob("*.yaml")):
            override = f"+experiment={f.stem}" if group == "experiment" else f"{group}={f.stem}"
            cfg = compose([override, "ckpt_path=x.ckpt", "init_from=null"] if group == "experiment" else [override])
            schema.check(cfg)  # (resolve would read the checkpoint)
    validate(compose(["+strategy=fsdp"]))
    validate(compose(["+strategy=ddp"]))


def test_params_flatten_with_every_toggle_findable():
    params = flat_params(compose())
    for key in ("paradigm.name", "bbs.p", "spa.enabled", "dvi.enabled", "wi.enabled", "solver.steps", "seed"):
        assert key in params
    assert params["bbs.p"] == "0.5"


def run_py(tmp_path, *overrides, env=None):
    return subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "run.py"), *overrides, f"hydra.run.dir={tmp_path}/run",
         f"logger.tracking_uri=sqlite:///{tmp_path}/mlflow.db"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize("override,line", [
    ("trainer.max_steps=abc", "error: trainer.max_steps: expected an integer >= -1, got 'abc'"),  # in run()
    ("+foo=1", "error: foo: expected a key of the run config"),
    ("data=nope", "error: data: expected one of mevis, "),  # Hydra's composition, before the task
])
def test_run_py_fails_before_any_work_with_one_line(tmp_path, override, line):
    proc = run_py(tmp_path, override)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(line) and proc.stderr.count("\n") == 1, proc.stderr  # one line, no traceback
    assert not (tmp_path / "run" / "checkpoints").exists()
    assert not (tmp_path / "mlflow.db").exists()  # before any work: no MLflow run was started


def test_run_py_shows_the_traceback_on_request(tmp_path):
    proc = run_py(tmp_path, "trainer.max_steps=abc", env={"RVOSFLOW_TRACEBACK": "1"})
    assert proc.returncode == 2
    assert "Traceback (most recent call last)" in proc.stderr
    assert proc.stderr.rstrip().splitlines()[-1].startswith("error: trainer.max_steps:")
