"""Wan2.1-T2V-1.3B's architecture as a diffusers-layout bundle at random init, written by the
project (nothing is downloaded), for measuring memory and time at the real size on any machine:

    python -m rvosflow.models.random_bundle --out data/wan2.1-t2v-1.3b-random     # ~3.4 GB on disk, ~6 GB RAM

What is real and what is not:

- ``transformer``: ``WanTransformer3DModel(**WAN21_T2V_1_3B)``, the published config at full size
  (1,418,996,800 parameters), stored in bf16 except diffusers' fp32-kept modules;
- ``vae``: ``AutoencoderKLWan()``, whose defaults are Wan2.1's published VAE config (float32);
- ``text_encoder``: **not UMT5-XXL.** A ``transformers.UMT5EncoderModel`` with the real output
  width (``d_model`` = the DiT's ``text_dim``, 4096) and nothing else real: 1 layer, 2 heads of 32,
  ``d_ff`` 64, over the tiny bundle's 77-token vocabulary. Its embeddings have the shape the DiT
  takes and no meaning; runs read them from the text cache, as they would UMT5-XXL's;
- ``tokenizer``: the tiny bundle's (``data/tiny-wan/tokenizer``);
- ``scheduler``: a ``UniPCMultistepScheduler`` with ``flow_shift`` 3, the class the real download
  ships (the loader converts it to the release's Euler, as for the download).

Every weight is random (PyTorch's default init, seeded): a run on this bundle measures the real
sizes, never the real model's quality. ``recipe.json`` in the folder records how it was made; a
folder with the same recipe is reused, and a folder without one (say, a real download) is never
overwritten.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel
from transformers import AutoTokenizer, UMT5Config, UMT5EncoderModel

from rvosflow.errors import ArgumentParser, BundleError, cli
from rvosflow.models.loader import WanBundle, cast_keeping_fp32, check_bundle, resolve_dtype, save_wan_bundle
from rvosflow.models.scale import REDUCED_DIT, REDUCED_VAE, WAN21_T2V_1_3B
from rvosflow.paths import PROJECT_ROOT

TINY_TOKENIZER = PROJECT_ROOT / "data" / "tiny-wan" / "tokenizer"
RECIPE_FILE = "recipe.json"
FORMAT = 1  # bump when what is built changes

# The text side: transformers.UMT5Config keys besides d_model (the DiT's text_dim) and vocab_size
# (the tokenizer's). Small everywhere except the width the DiT sees.
TEXT_ENCODER: dict = {
    "num_layers": 1, "num_heads": 2, "d_kv": 32, "d_ff": 64, "feed_forward_proj": "gated-gelu",
    "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128, "dropout_rate": 0.0,
    "tie_word_embeddings": False, "is_encoder_decoder": False, "use_cache": False,
    "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0,
}
# Wan2.1-T2V-1.3B-Diffusers' scheduler class and shift
SCHEDULER: dict = {"prediction_type": "flow_prediction", "use_flow_sigmas": True, "flow_shift": 3.0}
# --size: the DiT config and VAE kwargs (None: AutoencoderKLWan's defaults, Wan2.1's)
SIZES = {"real": (WAN21_T2V_1_3B, None), "reduced": (REDUCED_DIT, REDUCED_VAE)}


def recipe(dit_config: dict, vae_kwargs: dict | None, seed: int, dit_dtype: str) -> dict:
    return {"format": FORMAT, "transformer": dit_config, "vae": vae_kwargs or {}, "text_encoder": TEXT_ENCODER,
            "scheduler": SCHEDULER, "seed": seed, "dit_dtype": dit_dtype, "tokenizer": "data/tiny-wan/tokenizer",
            "note": "random weights: Wan2.1-T2V-1.3B's DiT and VAE configs, a 1-layer UMT5 of width text_dim "
                    "(not UMT5-XXL); for memory and time measurements only"}


def _read_recipe(out: Path) -> dict | None:
    try:
        return json.loads((out / RECIPE_FILE).read_text())
    except (OSError, ValueError):
        return None


def build(out: str | Path, dit_config: dict = WAN21_T2V_1_3B, vae_kwargs: dict | None = None, seed: int = 0,
          dit_dtype: str = "bfloat16", force: bool = False) -> Path:
    """Write the bundle to ``out`` (a folder with the same recipe is kept as it is) and return it.

    Peak memory is the DiT at float32 before its cast (5.7 GB at full size) plus one shard."""
    out = Path(out)
    wanted = recipe(dit_config, vae_kwargs, seed, dit_dtype)
    if out.exists():
        found = _read_recipe(out)
        if found is None:
            raise BundleError(f"{out}: expected a random bundle ({RECIPE_FILE}) or nothing, found a folder without "
                              f"{RECIPE_FILE}: not overwriting it")
        if found == wanted and not force:
            return check_bundle(out)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)

    tokenizer = AutoTokenizer.from_pretrained(str(TINY_TOKENIZER), local_files_only=True)
    torch.manual_seed(seed)
    text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=len(tokenizer), d_model=dit_config["text_dim"], **TEXT_ENCODER))
    torch.manual_seed(seed + 1)
    vae = AutoencoderKLWan(**(vae_kwargs or {}))
    bundle = WanBundle(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                       scheduler=UniPCMultistepScheduler(**SCHEDULER))
    save_wan_bundle(bundle, tmp)
    del bundle, vae, text_encoder
    torch.manual_seed(seed + 2)
    dit = cast_keeping_fp32(WanTransformer3DModel(**dit_config), resolve_dtype(dit_dtype))
    # shards of 1 GB: safetensors copies one shard at a time into bytes while writing
    dit.save_pretrained(str(tmp / "transformer"), safe_serialization=True, max_shard_size="1GB")
    del dit
    (tmp / RECIPE_FILE).write_text(json.dumps(wanted, indent=2) + "\n")
    check_bundle(tmp)
    if out.exists():  # an older recipe of ours
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m rvosflow.models.random_bundle", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "data" / "wan2.1-t2v-1.3b-random")
    parser.add_argument("--size", choices=sorted(SIZES), default="real",
                        help="real: the published configs; reduced: the same classes narrow and short (seconds, tests)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="rebuild even when the folder has the same recipe")
    args = parser.parse_args(argv)
    dit_config, vae_kwargs = SIZES[args.size]
    print(build(args.out, dit_config, vae_kwargs, seed=args.seed, force=args.force))
    return 0


if __name__ == "__main__":
    raise SystemExit(cli(main))
