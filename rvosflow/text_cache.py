"""Text embeddings encoded once: the frozen UMT5 encoder's output for every caption, on disk.

    python -m rvosflow.text_cache [Hydra overrides, as for run.py]   e.g. model=wan2.1_t2v_1.3b data=mevis

encodes every caption of the splits a run reads (``data.train_split``, ``val_split`` and
``predict_split``) into ``<text_cache_dir>/<key>/``, where the key hashes what determines the
embeddings: the text encoder's and tokenizer's files (``latents.file_identity``), the text length
(``text.max_length``) and the dtype (``model.dtype``). One file per caption, named by the
caption's hash, holding its embedding up to the caption's true token length (the rest is zero by
the release's convention and is padded back on reading), written atomically so that several
processes can fill one cache.

A run reads the same cache (``rvosflow.train``): when it covers the captions the run will see,
the bundle is loaded without the text encoder, which then never exists in the process, let alone
on a GPU. Otherwise the run fills the cache first (encoder on the GPU if there is one), frees the
encoder and trains without it. UMT5-XXL is 5.7B parameters: 11.4 GB in bf16 that stay off every
training GPU.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from rvosflow.caches import TextCache, file_identity, fingerprint
from rvosflow.config import compose, resolve
from rvosflow.data.setup import prepare_data
from rvosflow.errors import ArgumentParser, ConfigError, cli
from rvosflow.models import encoding
from rvosflow.models.loader import load_wan_bundle

log = logging.getLogger(__name__)


def cache_dir(cfg) -> str | None:
    """``<text_cache_dir>/<key of the text encoder, tokenizer, text length, dtype>``; None = memory only."""
    if not cfg.text_cache_dir:
        return None
    bundle = Path(cfg.model.path)
    key = fingerprint(file_identity(bundle / "text_encoder"), file_identity(bundle / "tokenizer"),
                      int(cfg.text.max_length), str(cfg.model.dtype))
    return str(Path(cfg.text_cache_dir) / key)


def run_captions(datamodule, mode: str, text_cfg) -> list[str]:
    """Every caption a run in ``mode`` feeds the text encoder, cleaned as it will be (``text.*``:
    training captions may be lower-cased, scored ones not; a training clip flipped by
    ``data.augment`` has left and right swapped): what the cache must cover."""
    def cleaned(texts, training: bool):
        return [encoding.clean_caption(t, training, text_cfg.clean, text_cfg.lowercase) for t in texts]

    training = cleaned(datamodule.training_texts(), True) if mode == "train" else []
    scored = [e.text for s in datamodule.scored_sources(mode) for e in s.expressions]
    return list(dict.fromkeys([*training, *cleaned(scored, False)]))


def encoder_device() -> torch.device:
    """This process's GPU (``LOCAL_RANK`` under torchrun / SLURM / Lightning DDP), else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def ensure(cache: TextCache, cfg, captions: Sequence[str], device: torch.device | None = None) -> int:
    """Fill ``cache`` with ``captions``, loading the text encoder only if some are missing, and free
    it afterwards. Returns the number encoded (0: the encoder was never loaded)."""
    missing = cache.missing(captions)
    if not missing:
        return 0
    device = device or encoder_device()
    log.info("text cache %s: encoding %d captions on %s", cache.directory or "(memory)", len(missing), device)
    parts = load_wan_bundle(cfg.model.path, dtype=cfg.model.dtype, components=("text_encoder", "tokenizer"), device=device)
    n = cache.fill(missing, parts.text_encoder, parts.tokenizer)
    del parts
    gc.collect()  # the encoder's modules may hold reference cycles: free its memory now
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return n


def _main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m rvosflow.text_cache", description="Encode every caption a run reads, once.")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for run.py (model=..., data=..., data.root=...)")
    parser.add_argument("--mode", default="train", choices=("train", "validate", "predict"),
                        help="the splits to cover: those a run in this mode reads (train = train + validation)")
    parser.add_argument("--device", default=None, help="where the text encoder runs (default: the GPU if any)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = resolve(compose([*args.overrides, f"mode={args.mode}"]))
    datamodule = prepare_data(cfg, check_files=False)  # captions only: no frame is read
    captions = run_captions(datamodule, args.mode, cfg.text)
    cache = TextCache(cache_dir(cfg), int(cfg.text.max_length))
    if cache.directory is None:
        raise ConfigError("text_cache_dir: expected a directory to write the cache to, got null")
    n = ensure(cache, cfg, captions, torch.device(args.device) if args.device else None)
    print(f"{len(captions)} captions, {n} encoded, {len(captions) - n} already cached -> {cache.directory}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """The CLI; bad input is one line, exit 2 (:func:`rvosflow.errors.cli`)."""
    return cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
