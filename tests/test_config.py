"""Config composition and up-front validation: the messages name the key and what is allowed."""

import subprocess
import sys

import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException

from rvosflow.config import ConfigError, compose, flat_params, validate
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
        (["+paradigm=onestep_mask", "bbs.p=0.5"], r"bbs\.p: paradigm 'onestep_mask' cannot take BBS \(it accepts: spa\)"),
        (["+paradigm=noise2mask", "dvi.enabled=true"], r"dvi\.enabled: paradigm 'noise2mask' cannot take DVI"),
        (["+paradigm=onestep_velocity", "dvi.enabled=true"], r"dvi\.enabled: paradigm 'onestep_velocity' cannot take DVI"),
        (["paradigm.name=mask2video"], r"paradigm\.name: unknown value 'mask2video'; allowed: noise2mask, onestep_mask"),
        (["data.num_frames=16"], r"data\.num_frames: expected 1 \+ 4k"),
        (["data.frame_sampler=random"], r"data\.frame_sampler: unknown value 'random'; allowed: global"),
        (["mode=serve"], r"mode: unknown value 'serve'"),
        (["model.dtype=float8"], r"model\.dtype: unknown value 'float8'"),
        (["+trainer.max_stepz=3"], r"trainer\.max_stepz: not a lightning\.Trainer argument"),
    ],
)
def test_bad_values_fail_naming_key_and_allowed_values(overrides, pattern):
    with pytest.raises(ConfigError, match=pattern):
        validate(compose(overrides))


def test_unknown_keys_and_paradigms_are_refused_by_composition():
    with pytest.raises(ConfigCompositionException, match="Could not override 'bbs.q'"):
        compose(["bbs.q=0.5"])
    with pytest.raises(MissingConfigException, match="video2mask"):  # lists the options
        compose(["+paradigm=mask2video"])


def test_params_flatten_with_every_toggle_findable():
    params = flat_params(compose())
    for key in ("paradigm.name", "bbs.p", "spa.enabled", "dvi.enabled", "wi.enabled", "solver.steps", "seed"):
        assert key in params
    assert params["bbs.p"] == "0.5"


def test_run_py_fails_before_any_work_with_a_clear_message(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "run.py"), "bbs.p=1.5", f"hydra.run.dir={tmp_path}/run"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert "error: bbs.p: expected a number in [0, 1], got 1.5" in proc.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()
