"""Load and save Wan2.1 bundles in the diffusers layout (local directories only).

The same functions read the project's tiny bundle (``data/tiny-wan``) and the real
``Wan2.1-T2V-1.3B-Diffusers`` download::

    model_index.json
    transformer/{config.json, diffusion_pytorch_model.safetensors[.index.json]}
    vae/{config.json, diffusion_pytorch_model.safetensors[.index.json]}
    text_encoder/{config.json, model.safetensors[.index.json]}
    tokenizer/{tokenizer_config.json, tokenizer.json | spiece.model}
    scheduler/scheduler_config.json

Nothing here touches the network: every ``from_pretrained`` gets ``local_files_only=True`` and
the directory is checked (``check_bundle``) before anything is loaded, so a missing file fails
with a :class:`BundleError` that names it instead of a download attempt or a deep stack trace.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from rvosflow.errors import BundleError

COMPONENTS: tuple[str, ...] = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")

# The release samples with shift 3 (docs/design.md §3); Wan2.1's own scheduler config stores it as flow_shift.
DEFAULT_SHIFT = 3.0

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}

# Weight file names per library; either the single file or its sharded index must exist.
_DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json")
_TRANSFORMERS_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
_WEIGHTS = {"transformer": _DIFFUSERS_WEIGHTS, "vae": _DIFFUSERS_WEIGHTS, "text_encoder": _TRANSFORMERS_WEIGHTS}




@dataclass
class WanBundle:
    """The five pieces of a Wan2.1 text-to-video model. Components not loaded are ``None``."""

    transformer: Any = None  # diffusers.WanTransformer3DModel
    vae: Any = None  # diffusers.AutoencoderKLWan
    text_encoder: Any = None  # transformers.UMT5EncoderModel
    tokenizer: Any = None  # transformers tokenizer (PreTrainedTokenizerFast / T5TokenizerFast)
    scheduler: Any = None  # diffusers.FlowMatchEulerDiscreteScheduler
    path: Path | None = None
    extras: dict = field(default_factory=dict)

    def modules(self) -> dict[str, torch.nn.Module]:
        """The torch modules that are loaded, by component name."""
        return {k: getattr(self, k) for k in ("transformer", "vae", "text_encoder") if getattr(self, k) is not None}


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype:
    """``torch.float32`` / ``"float32"`` / ``"bf16"`` ... -> ``torch.dtype`` (None -> float32)."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of float32, bfloat16, float16")
    return _DTYPES[key]


def _missing_weights(comp_dir: Path, names: Sequence[str]) -> list[str]:
    single, index = names
    if (comp_dir / single).is_file():
        return []
    if (comp_dir / index).is_file():
        try:
            shards = set(json.loads((comp_dir / index).read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError) as exc:
            return [f"{comp_dir / index} (unreadable: {exc})"]
        return [str(comp_dir / s) for s in sorted(shards) if not (comp_dir / s).is_file()]
    return [f"{comp_dir / single} (or {index})"]


def check_bundle(path: str | Path, components: Iterable[str] = COMPONENTS) -> Path:
    """Raise :class:`BundleError` naming every missing file; return the resolved path otherwise."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise BundleError(f"{root}: expected a Wan bundle directory (run `make tiny-wan`, or point to a "
                          "local Wan2.1-T2V-1.3B-Diffusers download), found nothing")
    components = tuple(components)
    unknown = set(components) - set(COMPONENTS)
    if unknown:
        raise ValueError(f"unknown components {sorted(unknown)}; known: {COMPONENTS}")
    missing: list[str] = []
    if not (root / "model_index.json").is_file():
        missing.append(str(root / "model_index.json"))
    for comp in components:
        d = root / comp
        if comp in _WEIGHTS:
            if not (d / "config.json").is_file():
                missing.append(str(d / "config.json"))
            missing += _missing_weights(d, _WEIGHTS[comp])
        elif comp == "tokenizer":
            if not (d / "tokenizer_config.json").is_file():
                missing.append(str(d / "tokenizer_config.json"))
            if not ((d / "tokenizer.json").is_file() or (d / "spiece.model").is_file()):
                missing.append(f"{d / 'tokenizer.json'} (or spiece.model)")
        elif comp == "scheduler":
            if not (d / "scheduler_config.json").is_file():
                missing.append(str(d / "scheduler_config.json"))
    if missing:
        raise BundleError(f"{root}: expected a complete Wan bundle, found it missing: " + ", ".join(missing))
    return root


def bundle_spatial_multiple(path) -> int:
    """What H and W must be multiples of (VAE spatial factor x DiT patch), read from the bundle's
    config.json files so that the data can be set up and checked before any weight is loaded."""
    root = check_bundle(path, ("transformer", "vae"))
    vae = json.loads((root / "vae" / "config.json").read_text())
    dit = json.loads((root / "transformer" / "config.json").read_text())
    return int(vae.get("scale_factor_spatial") or 8) * int(dit.get("patch_size", [1, 2, 2])[1])


def is_complete_bundle(path: str | Path) -> bool:
    """True when ``path`` holds every component (no exception)."""
    try:
        check_bundle(path)
        return True
    except BundleError:
        return False


def _read_safetensors(comp_dir: Path, single: str, index: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if (comp_dir / single).is_file():
        return load_file(str(comp_dir / single))
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(set(json.loads((comp_dir / index).read_text())["weight_map"].values())):
        state.update(load_file(str(comp_dir / shard)))
    return state


def load_diffusers_model(cls, comp_dir: str | Path, dtype: torch.dtype):
    """``cls.from_pretrained(comp_dir)`` offline; without ``accelerate`` build from config + safetensors.

    diffusers refuses ``from_pretrained`` for classes with ``_keep_in_fp32_modules`` (the Wan DiT)
    when ``accelerate`` is absent, so that case instantiates the config and loads the (single or
    sharded) safetensors strictly, keeping the same modules in float32 as diffusers would.
    """
    from diffusers.utils import is_accelerate_available

    comp_dir = Path(comp_dir)
    if is_accelerate_available():
        return cls.from_pretrained(str(comp_dir), torch_dtype=dtype, local_files_only=True)
    model = cls.from_config(cls.load_config(str(comp_dir), local_files_only=True))
    model.load_state_dict(_read_safetensors(comp_dir, *_DIFFUSERS_WEIGHTS), strict=True)
    return cast_keeping_fp32(model, dtype)


def cast_keeping_fp32(model, dtype: torch.dtype):
    """Cast ``model`` to ``dtype`` except the parameters of its class's ``_keep_in_fp32_modules``
    (the Wan DiT's norms, time embedder and modulation tables), as ``from_pretrained`` does."""
    if dtype == torch.float32:
        return model
    torch.nn.Module.to(model, dtype=dtype)  # the plain cast; the fp32 modules are restored below
    keep = getattr(type(model), "_keep_in_fp32_modules", None) or []
    for name, param in model.named_parameters():
        if any(k in name.split(".") for k in keep):
            param.data = param.data.float()
    return model


def load_scheduler(path: str | Path, shift: float | None = None):
    """A ``FlowMatchEulerDiscreteScheduler`` from ``<bundle>/scheduler``.

    Wan2.1-T2V-1.3B-Diffusers ships a ``UniPCMultistepScheduler`` config with ``flow_shift``;
    the release samples with plain Euler, so any other class is converted, keeping its shift
    (``flow_shift``, else 3.0). ``shift`` overrides it.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler

    cfg = FlowMatchEulerDiscreteScheduler.load_config(str(Path(path) / "scheduler"), local_files_only=True)
    if cfg.get("_class_name") == "FlowMatchEulerDiscreteScheduler":
        sched = FlowMatchEulerDiscreteScheduler.from_config(cfg)
        if shift is not None:
            sched.register_to_config(shift=float(shift))
    else:
        s = shift if shift is not None else cfg.get("flow_shift", DEFAULT_SHIFT)
        sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=cfg.get("num_train_timesteps", 1000), shift=float(s))
    return sched


def load_wan_bundle(
    path: str | Path,
    dtype: torch.dtype | str = torch.float32,
    components: Iterable[str] = COMPONENTS,
    vae_dtype: torch.dtype | str | None = torch.float32,
    device: str | torch.device = "cpu",
) -> WanBundle:
    """Load a local diffusers Wan2.1 bundle (tiny or real) without network access.

    ``dtype`` applies to the transformer and text encoder. The VAE defaults to float32 whatever
    ``dtype`` says (``vae_dtype=None`` makes it follow ``dtype``): Wan's own pipelines keep the
    VAE in float32 because its causal convolutions and the mask threshold at 0.5 are sensitive to
    bf16 rounding, and it is small next to the DiT. Models are returned in eval mode.
    """
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import AutoTokenizer, UMT5EncoderModel

    components = tuple(components)
    root = check_bundle(path, components)
    dt = resolve_dtype(dtype)
    vdt = dt if vae_dtype is None else resolve_dtype(vae_dtype)
    b = WanBundle(path=root)
    loaders = {
        "transformer": lambda: load_diffusers_model(WanTransformer3DModel, root / "transformer", dt).to(device).eval(),
        "vae": lambda: load_diffusers_model(AutoencoderKLWan, root / "vae", vdt).to(device).eval(),
        "text_encoder": lambda: UMT5EncoderModel.from_pretrained(
            str(root / "text_encoder"), dtype=dt, local_files_only=True).to(device).eval(),
        "tokenizer": lambda: AutoTokenizer.from_pretrained(str(root / "tokenizer"), local_files_only=True),
        "scheduler": lambda: load_scheduler(root),
    }
    for name in COMPONENTS:
        if name in components:
            setattr(b, name, _loading(root / name, loaders[name]))
    return b


def _loading(comp_dir: Path, load):
    """``load()``, a library's error (weights of other sizes than ``config.json`` says, a broken
    file) re-raised naming the component folder."""
    try:
        return load()
    except BundleError:
        raise
    except Exception as exc:  # noqa: BLE001  (diffusers/transformers/safetensors name no file)
        first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
        raise BundleError(f"{comp_dir}: expected weights that fit its config.json, found a mismatch or a "
                          f"broken file ({type(exc).__name__}: {first[:300]})") from exc


def model_index(bundle: WanBundle) -> dict:
    """A ``model_index.json`` like Wan2.1-T2V-1.3B-Diffusers', naming the classes actually saved."""
    import diffusers

    def entry(obj, default_lib, default_cls):
        if obj is None:
            return [default_lib, default_cls]
        lib = "transformers" if type(obj).__module__.startswith("transformers") else "diffusers"
        return [lib, type(obj).__name__]

    return {
        "_class_name": "WanPipeline",
        "_diffusers_version": diffusers.__version__,
        "scheduler": entry(bundle.scheduler, "diffusers", "FlowMatchEulerDiscreteScheduler"),
        "text_encoder": entry(bundle.text_encoder, "transformers", "UMT5EncoderModel"),
        "tokenizer": entry(bundle.tokenizer, "transformers", "PreTrainedTokenizerFast"),
        "transformer": entry(bundle.transformer, "diffusers", "WanTransformer3DModel"),
        "vae": entry(bundle.vae, "diffusers", "AutoencoderKLWan"),
    }


def save_wan_bundle(bundle: WanBundle, path: str | Path) -> Path:
    """Write every loaded component with ``save_pretrained`` plus ``model_index.json``."""
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    for name in COMPONENTS:
        obj = getattr(bundle, name)
        if obj is None:
            continue
        kwargs = {"safe_serialization": True} if name in _WEIGHTS else {}
        obj.save_pretrained(str(root / name), **kwargs)
    (root / "model_index.json").write_text(json.dumps(model_index(bundle), indent=2) + "\n")
    return root
