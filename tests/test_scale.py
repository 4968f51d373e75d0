"""Real scale that fits (issue 16): gradient checkpointing, bf16, DDP/FSDP presets, the text-embedding
cache, and the CPU-size run of scripts/bench_scale.py."""

import subprocess
import sys

import pytest
import torch
from settings import run_config

from rvosflow.config import compose, resolve
from rvosflow.config import resolve as validate
from rvosflow.errors import ConfigError
from rvosflow.paths import PROJECT_ROOT
from rvosflow.trainer import make_strategy


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
    with pytest.raises(ConfigError, match=r"fsdp\.param_dtype: expected one of float32, bfloat16, float16, got 'int8'"):
        validate(compose(["+strategy=fsdp", "fsdp.param_dtype=int8"]))


def test_module_enables_diffusers_checkpointing(test_bundle):
    from rvosflow.module import FlowRVSModule

    on = FlowRVSModule(run_config("video2mask", {"model.gradient_checkpointing": True}), test_bundle)
    off = FlowRVSModule(run_config("video2mask"), test_bundle)
    assert on.transformer.gradient_checkpointing and not off.transformer.gradient_checkpointing


# ----------------------------------------------------------------------------- text embeddings encoded once
def run_overrides(bench, bundle_dir, tmp_path, *extra):
    return [
        f"data.root={bench / 'mevis'}", "data.height=32", "data.max_width=32", "data.num_frames=9", "data.batch_size=2",
        "data.val_limit=2", "data.eval_videos=1", f"model.path={bundle_dir}", "text.max_length=16",
        "trainer.max_steps=2", "trainer.val_check_interval=2", "trainer.enable_progress_bar=false", "num_overlays=0",
        f"logger.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}", "latent_cache_dir=null",
        f"text_cache_dir={tmp_path / 'text'}", *extra,
    ]


def test_text_cache_command_encodes_every_caption_of_the_run_once(tiny_benchmark, test_bundle_dir, test_bundle, tmp_path, capsys):
    from rvosflow.caches import TextCache
    from rvosflow.data.formats.mevis import MevisSource
    from rvosflow.models import encoding
    from rvosflow.text_cache import cache_dir, main

    overrides = run_overrides(tiny_benchmark, test_bundle_dir, tmp_path)
    assert main(["--device", "cpu", *overrides]) == 0
    train, valid = MevisSource(tiny_benchmark / "mevis" / "train"), MevisSource(tiny_benchmark / "mevis" / "valid_u")
    scored = [e for e in valid.expressions if e.video_id == valid.video_ids()[0]]  # data.eval_videos=1
    captions = {*(encoding.clean_caption(e.text, training=True) for e in train.expressions),
                *(encoding.clean_caption(e.text, training=False) for e in scored)}
    directory = cache_dir(resolve(compose(overrides)))
    assert len(list((tmp_path / "text").rglob("*.pt"))) == len(captions)
    assert f"{len(captions)} captions, {len(captions)} encoded" in capsys.readouterr().out
    assert main(["--device", "cpu", *overrides]) == 0  # covered: nothing encoded, no encoder loaded
    assert f"{len(captions)} captions, 0 encoded" in capsys.readouterr().out
    # What the cache gives back is what the encoder gives (padded with the release's zeros).
    some = sorted(captions)[:3]
    direct = encoding.encode_text(test_bundle.text_encoder, test_bundle.tokenizer, some, 16)
    torch.testing.assert_close(TextCache(directory, 16).embeddings(some), direct, rtol=1e-4, atol=1e-5)
    # The key: another text length is another cache.
    assert cache_dir(resolve(compose(overrides + ["text.max_length=8"]))) != directory


def test_a_run_on_a_covered_cache_never_loads_the_text_encoder(tiny_benchmark, test_bundle_dir, tmp_path):
    """The text encoder's weights are made unreadable (same size and mtime, so the same cache key):
    the run trains and scores all the same, because it never loads them."""
    import os
    import shutil

    from rvosflow.models.loader import load_wan_bundle
    from rvosflow.text_cache import main
    from rvosflow.train import run

    bundle = shutil.copytree(test_bundle_dir, tmp_path / "bundle")
    overrides = run_overrides(tiny_benchmark, bundle, tmp_path)
    assert main(["--device", "cpu", *overrides]) == 0
    weights = bundle / "text_encoder" / "model.safetensors"
    st = weights.stat()
    weights.write_bytes(b"\0" * st.st_size)
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(Exception):
        load_wan_bundle(bundle, components=("text_encoder",))
    results = run(compose(overrides), tmp_path / "run")
    assert 0 <= results["JF"] <= 100 and (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()


def test_a_module_without_encoder_names_the_missing_caption(test_bundle):
    from rvosflow.caches import TextCache, TextCacheMiss
    from rvosflow.models.loader import WanBundle
    from rvosflow.module import FlowRVSModule

    bundle = WanBundle(transformer=test_bundle.transformer, vae=test_bundle.vae)
    module = FlowRVSModule(run_config("video2mask"), bundle, text_cache=TextCache(None, 16))
    with pytest.raises(TextCacheMiss, match=r"no embedding for caption 'the red circle'.*rvosflow\.text_cache"):
        module.text_embeddings(["the red circle"])


# ----------------------------------------------------------------------------- scripts/bench_scale.py
def bench_scale():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_scale", PROJECT_ROOT / "scripts" / "bench_scale.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def test_the_published_1_3b_config_gives_its_architecture_and_parameter_count():
    from diffusers import WanTransformer3DModel
    from diffusers.models.transformers.transformer_wan import WanTransformerBlock

    from rvosflow.models.dit import widen_patch_embedding
    from rvosflow.models.scale import WAN21_T2V_1_3B, dit_param_count, dit_tokens

    with torch.device("meta"):  # full size, no memory
        dit = WanTransformer3DModel(**WAN21_T2V_1_3B)
    blocks = list(dit.blocks)
    assert len(blocks) == 30 and all(isinstance(b, WanTransformerBlock) for b in blocks)
    assert blocks[0].attn1.to_q.in_features == 1536 and blocks[0].ffn.net[-1].in_features == 8960
    assert dit.patch_embedding.kernel_size == (1, 2, 2) and dit.condition_embedder.text_embedder.linear_1.in_features == 4096
    assert n_params(dit) == dit_param_count(WAN21_T2V_1_3B) == 1_418_996_800
    widen_patch_embedding(dit, 32)  # DVI
    assert dit.patch_embedding.in_channels == 32 and dit.config.in_channels == 32
    assert n_params(dit) == dit_param_count(WAN21_T2V_1_3B, 32) == 1_418_996_800 + 16 * 4 * 1536
    assert dit_tokens(WAN21_T2V_1_3B, 17, 480, 832) == 5 * 30 * 52  # 7,800 tokens per training clip
    assert dit_tokens(WAN21_T2V_1_3B, 81, 480, 832) == 21 * 30 * 52


def test_reduced_dit_count_and_dvi_widening_with_zero_init():
    from rvosflow.models.scale import dit_param_count

    bench = bench_scale()
    config = bench.CPU_DIT
    dit = bench.build_dit(config, torch.float32, "cpu")
    assert dit.patch_embedding.in_channels == 32 and n_params(dit) == dit_param_count(config, 32)
    assert torch.all(dit.patch_embedding.weight[:, 16:] == 0) and torch.any(dit.patch_embedding.weight[:, :16] != 0)


def test_umt5_xxl_count_is_what_the_text_cache_keeps_off_the_gpu(test_bundle):
    from transformers import UMT5Config, UMT5EncoderModel

    from rvosflow.models.scale import UMT5_XXL, umt5_encoder_param_count

    with torch.device("meta"):
        encoder = UMT5EncoderModel(UMT5Config(**UMT5_XXL))
    assert n_params(encoder) == umt5_encoder_param_count(UMT5_XXL)
    assert 5.6e9 < umt5_encoder_param_count(UMT5_XXL) < 5.8e9  # 11.4 GB in bf16
    tiny = test_bundle.text_encoder.config.to_dict()
    assert n_params(test_bundle.text_encoder) == umt5_encoder_param_count(tiny)


def test_checkpointing_cuts_the_activations_saved_for_backward():
    bench = bench_scale()
    config, saved = bench.CPU_DIT, {}
    for checkpointing in (False, True):
        dit = bench.build_dit(config, torch.float32, "cpu").train()
        if checkpointing:
            dit.enable_gradient_checkpointing()
        saved[checkpointing] = bench.saved_bytes(dit, bench.dit_inputs(config, 17, 64, 64, 16, torch.float32, "cpu"))
    assert 0 < saved[True] < saved[False] / 2, saved


def test_bench_scale_runs_at_cpu_size():
    report = bench_scale().main(["--size", "cpu", "--dtype", "float32", "--steps", "1", "--window-frames", "33", "17"])
    on, off = report["training"]
    assert on["checkpointing"] and not off["checkpointing"]
    assert on["saved_activation_gb"] < off["saved_activation_gb"] and on["tokens"] == 80
    assert on["step_s"] > 0 and on["tokens_per_s"] > 0 and on["tflop_per_step"] > off["tflop_per_step"]
    whole, windowed = report["inference"]
    assert (whole["window_frames"], windowed["window_frames"]) == (33, 17) and whole["seconds"] > 0
