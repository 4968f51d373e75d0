"""Real scale that fits (issue 16): gradient checkpointing, bf16, DDP/FSDP presets, the text-embedding
cache, and the CPU-size run of scripts/bench_scale.py."""

import subprocess
import sys

import pytest
import torch

from rvosflow.config import ConfigError, compose, validate
from rvosflow.paths import PROJECT_ROOT
from rvosflow.train import make_strategy


def test_real_model_with_checkpointing_composes(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "run.py"), "model=wan2.1_t2v_1.3b", "model.gradient_checkpointing=true",
         "--cfg", "job"], capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "gradient_checkpointing: true" in proc.stdout and "dtype: bfloat16" in proc.stdout


def test_checkpointing_defaults_off_for_tiny_and_on_for_the_real_model():
    assert compose().model.gradient_checkpointing is False
    cfg = compose(["model=wan2.1_t2v_1.3b"])
    assert cfg.model.gradient_checkpointing is True and cfg.trainer.precision == "bf16-mixed"
    validate(cfg)


def test_ddp_preset_passes_through():
    cfg = compose(["model=wan2.1_t2v_1.3b", "+strategy=ddp"])
    validate(cfg)
    assert make_strategy(cfg) == "ddp"


def test_fsdp_preset_wraps_each_wan_block_with_mixed_precision():
    from diffusers.models.transformers.transformer_wan import WanTransformerBlock
    from lightning.pytorch.strategies import FSDPStrategy

    cfg = compose(["model=wan2.1_t2v_1.3b", "+strategy=fsdp"])
    validate(cfg)
    strategy = make_strategy(cfg)
    assert isinstance(strategy, FSDPStrategy)
    assert strategy.kwargs["auto_wrap_policy"]._module_classes == {WanTransformerBlock}
    mp = strategy.mixed_precision_config
    assert (mp.param_dtype, mp.reduce_dtype) == (torch.bfloat16, torch.float32)
    assert cfg.model.dtype == "float32"  # the sharded master copy; FSDP flattens one dtype per unit


def test_fsdp_without_its_settings_fails_naming_the_key():
    with pytest.raises(ConfigError, match=r"trainer\.strategy: fsdp needs the fsdp\.\* settings"):
        validate(compose(["trainer.strategy=fsdp"]))
    with pytest.raises(ConfigError, match=r"fsdp\.param_dtype: unknown value 'int8'"):
        validate(compose(["+strategy=fsdp", "fsdp.param_dtype=int8"]))


def test_module_enables_diffusers_checkpointing(test_bundle):
    from rvosflow.module import FlowRVSModule
    from rvosflow.paradigms import FlowSettings, build_paradigm

    paradigm = build_paradigm("video2mask", FlowSettings(dvi=True))
    on = FlowRVSModule(test_bundle, paradigm, gradient_checkpointing=True)
    off = FlowRVSModule(test_bundle, paradigm)
    assert on.transformer.gradient_checkpointing and not off.transformer.gradient_checkpointing
