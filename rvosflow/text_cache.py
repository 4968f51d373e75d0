"""Text embeddings encoded once: the frozen UMT5 encoder's output for every caption, on disk.

    python -m rvosflow.text_cache [Hydra overrides, as for run.py]   e.g. model=wan2.1_t2v_1.3b data=mevis

encodes every caption of the splits a run reads (``data.train_split``, ``val_split`` and
``predict_split``) into ``<text_cache_dir>/<key>/``, where the key hashes what determines the
embeddings: the text encoder's and tokenizer's files (``latents.file_identity``), the text length
(``text.max_length``) and the dtype (``model.dtype``). One file per caption, named by the
caption's hash, holding its embedding up to the caption's true token length (the rest is zero by
the release's convention and is padded back on reading), written atomically so that several
processes can fill one cache.

A run reads the same cache (``rvosflow.train.run``): when it covers the captions the run will see,
the bundle is loaded without the text encoder, which then never exists in the process, let alone
on a GPU. Otherwise the run fills the cache first (encoder on the GPU if there is one), frees the
encoder and trains without it. UMT5-XXL is 5.7B parameters: 11.4 GB in bf16 that stay off every
training GPU.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import logging
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from rvosflow.latents import file_identity, fingerprint, save_atomically

log = logging.getLogger(__name__)


class TextCacheMiss(KeyError):
    """A caption is not in the cache and no text encoder is loaded to encode it."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


class TextCache:
    """Caption -> UMT5 embedding ``[max_length, D]`` (zero past the caption's true length).

    ``directory=None`` keeps the embeddings in memory only. Entries read from disk are also kept
    in memory, trimmed to their true length (MeViS train: ~28k captions x ~15 tokens x 4096 x 2 bytes).
    """

    def __init__(self, directory: str | Path | None, max_length: int):
        self.directory = Path(directory) if directory else None
        self.max_length = max_length
        self._memory: dict[str, torch.Tensor] = {}

    def _path(self, caption: str) -> Path:
        return self.directory / f"{hashlib.sha1(caption.encode()).hexdigest()}.pt"

    def _has(self, caption: str) -> bool:
        return caption in self._memory or (self.directory is not None and self._path(caption).exists())

    def _trimmed(self, caption: str) -> torch.Tensor | None:
        if caption not in self._memory:
            if not self._has(caption):
                return None
            saved = torch.load(self._path(caption), weights_only=True)
            if saved["caption"] != caption:
                raise ValueError(f"{self._path(caption)}: expected the embedding of {caption!r}, found {saved['caption']!r}")
            self._memory[caption] = saved["embedding"]
        return self._memory[caption]

    def missing(self, captions: Iterable[str]) -> list[str]:
        """The distinct captions not in the cache, in first-seen order."""
        return [c for c in dict.fromkeys(captions) if not self._has(c)]

    def put(self, caption: str, embedding: torch.Tensor, length: int) -> None:
        """Store ``embedding`` ``[max_length, D]`` of a caption whose true length is ``length`` tokens."""
        trimmed = embedding[:length].detach().cpu().clone()
        self._memory[caption] = trimmed
        if self.directory is not None:
            save_atomically({"caption": caption, "embedding": trimmed}, self._path(caption))

    def embeddings(self, captions: Sequence[str]) -> torch.Tensor:
        """``[B, max_length, D]`` for ``captions`` (each must be cached)."""
        out = []
        for c in captions:
            e = self._trimmed(c)
            if e is None:
                where = self.directory or "memory"
                raise TextCacheMiss(f"text cache {where}: no embedding for caption {c!r} and no text encoder "
                                    "loaded (run `python -m rvosflow.text_cache` with the run's overrides)")
            out.append(torch.cat([e, e.new_zeros(self.max_length - len(e), e.shape[-1])]))
        return torch.stack(out)

    def fill(self, captions: Iterable[str], text_encoder, tokenizer, batch_size: int = 32) -> int:
        """Encode the missing captions in batches; returns how many were encoded."""
        from rvosflow.models import encoding

        todo = self.missing(captions)
        for i in range(0, len(todo), batch_size):
            chunk = todo[i: i + batch_size]
            _, mask = encoding.tokenize(tokenizer, chunk, self.max_length)
            emb = encoding.encode_text(text_encoder, tokenizer, chunk, self.max_length)
            for caption, e, n in zip(chunk, emb, mask.sum(dim=1).tolist()):
                self.put(caption, e, int(n))
        return len(todo)

    def __len__(self) -> int:
        return len(self._memory)


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
    training captions may be lower-cased, scored ones not): what the cache must cover."""
    from rvosflow.models.encoding import clean_caption

    def cleaned(sources, training: bool):
        return [clean_caption(e.text, training, text_cfg.clean, text_cfg.lowercase) for s in sources for e in s.expressions]

    training = cleaned(datamodule.training_sources(), True) if mode == "train" else []
    return list(dict.fromkeys([*training, *cleaned(datamodule.scored_sources(mode), False)]))


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
    from rvosflow.models.loader import load_wan_bundle

    device = device or encoder_device()
    log.info("text cache %s: encoding %d captions on %s", cache.directory or "(memory)", len(missing), device)
    parts = load_wan_bundle(cfg.model.path, dtype=cfg.model.dtype, components=("text_encoder", "tokenizer"), device=device)
    n = cache.fill(missing, parts.text_encoder, parts.tokenizer)
    del parts
    gc.collect()  # the encoder's modules may hold reference cycles: free its memory now
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return n


def main(argv: list[str] | None = None) -> int:
    """The CLI; bad input is one line, exit 2 (:func:`rvosflow.errors.cli`)."""
    from rvosflow.errors import cli

    return cli(_main, argv)


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rvosflow.text_cache", description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for run.py (model=..., data=..., data.root=...)")
    parser.add_argument("--mode", default="train", choices=("train", "validate", "predict"),
                        help="the splits to cover: those a run in this mode reads (train = train + validation)")
    parser.add_argument("--device", default=None, help="where the text encoder runs (default: the GPU if any)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from rvosflow import config as run_config
    from rvosflow.train import build_datamodule, ensure_data

    cfg = run_config.compose(args.overrides)
    run_config.validate(cfg)
    ensure_data(cfg)
    datamodule = build_datamodule(cfg, spatial_multiple=16)  # captions do not depend on the frame size
    captions = run_captions(datamodule, args.mode, cfg.text)
    cache = TextCache(cache_dir(cfg), int(cfg.text.max_length))
    if cache.directory is None:
        raise run_config.ConfigError("text_cache_dir: expected a directory to write the cache to, got null")
    n = ensure(cache, cfg, captions, torch.device(args.device) if args.device else None)
    print(f"{len(captions)} captions, {n} encoded, {len(captions) - n} already cached -> {cache.directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
