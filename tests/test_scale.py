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


# ----------------------------------------------------------------------------- what a 1.3B run holds in memory
def test_checkpoints_are_written_without_an_in_memory_copy(tmp_path):
    """Lightning's own save buffers the whole file in memory first (14 GB at 1.3B with the EMA and
    AdamW state); the run's CheckpointIO streams it into a temporary file and renames it."""
    import tracemalloc

    from lightning.pytorch.plugins.io import TorchCheckpointIO

    from rvosflow.trainer import StreamingCheckpointIO

    state = {"state_dict": {"w": torch.arange(8 * 2**20, dtype=torch.float32)}}  # 32 MB of tensor data
    peaks = {}
    for name, io in (("lightning", TorchCheckpointIO()), ("streaming", StreamingCheckpointIO())):
        tracemalloc.start()  # Python-heap allocations: the buffer's bytes, not the tensor's own storage
        io.save_checkpoint(state, tmp_path / f"{name}.ckpt")
        peaks[name] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peaks["lightning"] > 32e6 > 8 * peaks["streaming"], peaks
    loaded = StreamingCheckpointIO().load_checkpoint(tmp_path / "streaming.ckpt", weights_only=True)
    assert torch.equal(loaded["state_dict"]["w"], state["state_dict"]["w"])
    # A failed save leaves the previous checkpoint whole and no temporary file behind.
    with pytest.raises(Exception):
        StreamingCheckpointIO().save_checkpoint({"bad": lambda: None}, tmp_path / "streaming.ckpt")
    assert torch.equal(torch.load(tmp_path / "streaming.ckpt", weights_only=True)["state_dict"]["w"], state["state_dict"]["w"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lightning.ckpt", "streaming.ckpt"]


def test_a_run_holds_one_dit_while_it_trains_and_no_gradients_when_it_scores(tiny_benchmark, test_bundle_dir, tmp_path):
    """The module trains its own DiT (a copy with WI): the loaded bundle's is gone before fit, or a
    1.3B run holds 2.8 GB of weights it never uses; the closing score holds no gradients (2.8 GB
    more; Lightning releases them before a validation); checkpoints go through the streaming CheckpointIO."""
    import gc
    import warnings

    from diffusers import WanTransformer3DModel
    from lightning.pytorch.callbacks import Callback

    from rvosflow.train import run

    def live_dits():
        gc.collect()
        with warnings.catch_warnings():  # isinstance on every live object touches deprecated torch attributes
            warnings.simplefilter("ignore", FutureWarning)
            return sum(isinstance(o, WanTransformer3DModel) for o in gc.get_objects())

    seen, before = {}, live_dits()  # another test's bundle may still be alive

    class Look(Callback):
        def on_fit_start(self, trainer, module):
            seen["dits_in_fit"] = live_dits() - before
            seen["checkpoint_io"] = type(trainer.strategy.checkpoint_io).__name__

        def on_validation_start(self, trainer, module):
            if trainer.state.fn != "fit":  # the closing score
                seen["grads_when_scored"] = sum(p.grad is not None for p in module.transformer.parameters())

    results = run(compose(run_overrides(tiny_benchmark, test_bundle_dir, tmp_path)),
                  tmp_path / "run", callbacks=[Look()])
    assert seen == {"dits_in_fit": 1, "checkpoint_io": "StreamingCheckpointIO", "grads_when_scored": 0}
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").exists() and 0 <= results["JF"] <= 100


# ----------------------------------------------------------------------------- the random-weight 1.3B bundle
def test_random_bundle_has_the_published_shapes_and_loads_like_a_download(tmp_path):
    """Built at the reduced size (seconds); the real recipe differs only in the configs it is given."""
    from rvosflow.models import encoding
    from rvosflow.models.loader import load_wan_bundle
    from rvosflow.errors import BundleError
    from rvosflow.models.random_bundle import SIZES, TEXT_ENCODER, build
    from rvosflow.models.scale import WAN21_T2V_1_3B

    assert SIZES["real"] == (WAN21_T2V_1_3B, None)  # the published DiT config, the VAE's defaults
    dit_config, vae_kwargs = SIZES["reduced"]
    out = build(tmp_path / "bundle", dit_config, vae_kwargs)
    bundle = load_wan_bundle(out, dtype="bfloat16")
    assert {k: bundle.transformer.config[k] for k in dit_config} == dit_config
    assert bundle.transformer.dtype == torch.bfloat16 and bundle.vae.config.z_dim == 16
    # the text side fits the DiT: its width is text_dim, its vocabulary the tokenizer's
    assert bundle.text_encoder.config.d_model == dit_config["text_dim"] and bundle.text_encoder.config.num_layers == 1
    assert bundle.text_encoder.config.vocab_size == len(bundle.tokenizer) == 77
    emb = encoding.encode_text(bundle.text_encoder, bundle.tokenizer, ["the red circle"], 16)
    assert emb.shape == (1, 16, dit_config["text_dim"]) and torch.isfinite(emb).all()
    # the download's scheduler class (UniPC, flow_shift 3), converted to the release's Euler on load
    assert type(bundle.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler" and bundle.scheduler.config.shift == 3.0
    assert TEXT_ENCODER["num_layers"] == 1 and "d_model" not in TEXT_ENCODER
    # the same recipe is kept as it is; a folder that is not a random bundle is never overwritten
    stamp = (out / "transformer" / "config.json").stat().st_mtime_ns
    assert build(out, dit_config, vae_kwargs) == out and (out / "transformer" / "config.json").stat().st_mtime_ns == stamp
    (tmp_path / "download").mkdir()
    with pytest.raises(BundleError, match="not overwriting it"):
        build(tmp_path / "download", dit_config, vae_kwargs)


@pytest.mark.slow
def test_bench_real_cpu_runs_the_preset_end_to_end_at_reduced_size(tmp_path):
    """``make bench-real-cpu``'s path (bundle, data, the 1.3B preset's run in a child process,
    phases, peak RSS) with the reduced DiT and VAE: 2 optimiser steps, then one validation."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_real_cpu", PROJECT_ROOT / "scripts" / "bench_real_cpu.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    report = bench.main(["--size", "reduced", "--work", str(tmp_path), "--frames", "5", "--height", "32", "--width", "32"])
    run = report["run"]
    assert [s["step"] for s in run["steps"]] == [1, 2] and len(run["validations"]) == 1
    assert all(s["total_s"] > 0 and s["backward_s"] > 0 for s in run["steps"])
    assert run["peak_rss_gb"] > 0.2 and report["settings"]["precision"] == "bf16-mixed"
    assert report["accounted_gb"]["ema_weights"] == pytest.approx(4 * report["dit_params"] / 1e9, abs=1e-3)  # float32 EMA
    assert 0 <= report["JF"] <= 100 and report["checkpoint_gb"] > 0
    assert not list((tmp_path / "run" / "checkpoints").glob("*.ckpt"))  # deleted once measured
    assert "model=wan2.1_t2v_1.3b" in report["command"] and "trainer.max_steps=2" in report["command"]


# ----------------------------------------------------------------------------- memory per token; --meta
def test_per_token_fit_separates_the_attention_term_and_the_checkpointed_inputs():
    """At the reduced width in float32 the counts are exact: a block keeps a fixed number of bytes
    per token; the math kernel adds one N x N matrix per head (heads x 4 bytes per token^2), the
    CPU's flash kernel none; a checkpointed block keeps its input alone (dim x 4 bytes per token)."""
    bench = bench_scale()
    config = bench.CPU_DIT
    rows = bench.measure_per_token(config, bench.PER_TOKEN_CLIPS["cpu"][:4], 16, torch.float32)
    fits = bench.per_token_fits(rows, config["num_layers"])["fits"]
    heads, dim = config["num_attention_heads"], config["num_attention_heads"] * config["attention_head_dim"]
    flash = fits["train/default/no_checkpointing"]["saved"]
    math = fits["train/math/no_checkpointing"]["saved"]
    assert "_scaled_dot_product_flash_attention_for_cpu.default" in flash["kernels"]
    assert abs(flash["per_block"]["bytes_per_token2"]) < 1e-6 and flash["per_block"]["bytes_per_token"] > 20 * dim
    assert math["per_block"]["bytes_per_token2"] == pytest.approx(heads * 4, rel=1e-6)
    assert flash["per_block"]["max_rel_residual"] < 1e-6  # linear in the token count, exactly
    kept = fits["train/default/checkpointing"]
    assert kept["retained"]["per_block"]["bytes_per_token"] == pytest.approx(dim * 4, rel=1e-6)
    assert kept["saved"]["per_block"]["bytes_per_token"] == pytest.approx(dim * 4, rel=1e-6)  # the saved inputs
    assert fits["train/default/no_checkpointing"]["peak"]["outside_blocks"]["bytes_per_token"] < \
        kept["peak"]["outside_blocks"]["bytes_per_token"]  # the block recomputed in backward


def test_meta_estimate_runs_with_checkpointing():
    """It failed with a CheckpointError: the recomputation in backward ran without the flash
    routing and saved other tensors than the forward."""
    report = bench_scale().main(["--size", "cpu", "--dtype", "float32", "--meta", "--skip-training", "--skip-inference",
                                 "--window-frames", "17"])
    on, off = report["meta_estimate"]["training"]
    assert on["checkpointing"] and not off["checkpointing"]
    assert on["saved_activation_gb"] < off["saved_activation_gb"] / 4 and on["activation_peak_gb"] < off["activation_peak_gb"]
    assert on["gradients_gb"] == on["weights_gb"] and on["total_gb"] > 4 * on["weights_gb"]
