"""Caches of frozen-encoder outputs: VAE posteriors of clips and masks (:class:`LatentCache`),
UMT5 embeddings of captions (:class:`TextCache`).

The VAE encoder is frozen, so a clip's latent never changes within a run, nor across the runs of
a sweep that share a bundle and a dataset. Misses are encoded together in one batch; entries
live in memory and, when a directory is given, on disk (one file per entry, written atomically,
so several sweep workers can share it).

Keys are by content (docs/design.md §8): an entry is named by a hash of the very pixels the encoder
would see (``content_key``, computed by the datasets), so a changed, replaced or blackened frame
is a miss and is encoded again. The directory is named by what else fixes the value: the VAE
weights, the dtype, the resolution and the latent convention (``train.latent_cache_dir``).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch

from rvosflow import atomic
from rvosflow.models import encoding

Entry = tuple[torch.Tensor, ...]

log = logging.getLogger(__name__)


def fingerprint(*parts) -> str:
    """A short stable hash of what determines the cached values (bundle files, data root, sizes)."""
    return hashlib.sha1(repr(parts).encode()).hexdigest()[:16]


def file_identity(path: str | Path) -> tuple:
    """Path, size and mtime (ns) of every file under ``path`` (a cheap proxy for its content)."""
    root = Path(path)
    return tuple(
        (str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*")) if p.is_file()
    )


def content_key(x: torch.Tensor) -> str:
    """Hash of a tensor's shape, dtype and bytes: the cache key of the latent it encodes to."""
    x = x.detach().cpu().contiguous()
    h = hashlib.blake2b(digest_size=16)
    h.update(repr((tuple(x.shape), str(x.dtype))).encode())
    h.update(x.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def latent_cache_dir(cfg) -> str | None:
    """A cache folder per (VAE weights, dtype, resolution, latent convention) of a run config.
    Entries inside are keyed by the content of the encoded pixels (``content_key``), so the same
    folder is right for any dataset and a changed frame is encoded again. The decoder is not in the
    key: a tuned decoder only ever replaces the decoder half of the VAE (``decoder.tuned_vae`` keeps
    the bundle's encoder), and only the encoder is cached."""
    if not cfg.cache_latents or not cfg.latent_cache_dir:
        return None
    key = fingerprint("content-v1", file_identity(Path(cfg.model.path) / "vae"), cfg.data.height,
                      cfg.data.max_width, cfg.model.dtype, bool(cfg.flow.normalize_mask_latent))
    return str(Path(cfg.latent_cache_dir) / key)


class LatentCache:
    def __init__(self, directory: str | Path | None = None, enabled: bool = True):
        self.enabled = enabled
        self.directory = Path(directory) if directory and enabled else None
        self._memory: dict[str, Entry] = {}

    @staticmethod
    def _name(key) -> str:
        return hashlib.sha1(repr(key).encode()).hexdigest()

    def _load(self, name: str) -> Entry | None:
        if name in self._memory:
            return self._memory[name]
        if self.directory is not None:
            path = self.directory / f"{name}.pt"
            if path.exists():
                try:
                    entry = torch.load(path, weights_only=True)
                except Exception:  # noqa: BLE001  (a torn, empty or garbage file: recompute it)
                    return None
                # what _store writes: a list of tensors (anything else, e.g. a dict or one tensor, would
                # iterate into a wrong entry)
                if not (isinstance(entry, list) and entry and all(isinstance(t, torch.Tensor) for t in entry)):
                    return None
                self._memory[name] = entry = tuple(entry)
                return entry
        return None

    def _store(self, name: str, entry: Entry) -> None:
        self._memory[name] = entry
        if self.directory is not None:
            atomic.torch_save(list(entry), self.directory / f"{name}.pt")

    def get_many(self, keys: Sequence, compute: Callable[[list[int]], list[Entry]]) -> list[Entry]:
        """Entries for ``keys``; ``compute(positions)`` encodes the missing ones in one batch."""
        if not self.enabled:
            return [tuple(t.detach() for t in e) for e in compute(list(range(len(keys))))]
        names = [self._name(k) for k in keys]
        found = [self._load(n) for n in names]
        missing = [i for i, e in enumerate(found) if e is None]
        if missing:
            for i, entry in zip(missing, compute(missing)):
                entry = tuple(t.detach().cpu().clone() for t in entry)  # its own storage: a view would save the whole batch
                self._store(names[i], entry)
                found[i] = entry
        return found

    def __len__(self) -> int:
        return len(self._memory)


class TextCacheMiss(KeyError):
    """A caption is not in the cache and no text encoder is loaded to encode it (a bug of the run's
    set-up, which fills the cache first: not a user error)."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


class TextCache:
    """Caption -> UMT5 embedding ``[max_length, D]`` (zero past the caption's true length).

    ``directory=None`` keeps the embeddings in memory only. Entries read from disk are also kept
    in memory, trimmed to their true length (MeViS train: ~28k captions x ~15 tokens x 4096 x 2 bytes).
    An entry is a hit only once read back whole, so :meth:`missing` reads the entries it is asked
    about (~0.5 ms each): a torn one is missing there, before training, and the text encoder is
    loaded to encode it again (``text_cache.ensure``).
    """

    def __init__(self, directory: str | Path | None, max_length: int):
        self.directory = Path(directory) if directory else None
        self.max_length = max_length
        self._memory: dict[str, torch.Tensor] = {}
        self._unreadable: set[str] = set()  # captions whose file failed to read: not read (or logged) twice

    def _path(self, caption: str) -> Path:
        return self.directory / f"{hashlib.sha1(caption.encode()).hexdigest()}.pt"

    def _read(self, caption: str) -> torch.Tensor | None:
        """The caption's embedding from its file; None when there is none or it cannot be read back
        (logged once): either way a miss, which ``put`` rewrites."""
        path = self._path(caption)
        if caption in self._unreadable or not path.exists():
            return None
        try:
            saved = torch.load(path, weights_only=True)
        except Exception as e:  # noqa: BLE001  (torn, empty or garbage: torch raises many kinds)
            problem = f"unreadable by torch.load ({type(e).__name__})"  # its message is pages long for some
        else:
            embedding = saved.get("embedding") if isinstance(saved, dict) else None
            if not (isinstance(embedding, torch.Tensor) and embedding.dim() == 2 and len(embedding) <= self.max_length):
                problem = f"expected {{caption, embedding [<= {self.max_length}, D]}}, found another structure"
            elif saved.get("caption") != caption:
                problem = f"expected the embedding of {caption!r}, found that of {saved.get('caption')!r}"
            else:
                return embedding
        log.warning("text cache %s: %s; encoding it again", path, problem)
        self._unreadable.add(caption)
        return None

    def _trimmed(self, caption: str) -> torch.Tensor | None:
        if caption not in self._memory:
            embedding = self._read(caption) if self.directory is not None else None
            if embedding is None:
                return None
            self._memory[caption] = embedding
        return self._memory[caption]

    def missing(self, captions: Iterable[str]) -> list[str]:
        """The distinct captions not in the cache, or whose entry cannot be read back, in first-seen order."""
        return [c for c in dict.fromkeys(captions) if self._trimmed(c) is None]

    def put(self, caption: str, embedding: torch.Tensor, length: int) -> None:
        """Store ``embedding`` ``[max_length, D]`` of a caption whose true length is ``length`` tokens."""
        trimmed = embedding[:length].detach().cpu().clone()
        self._memory[caption] = trimmed
        self._unreadable.discard(caption)
        if self.directory is not None:
            atomic.torch_save({"caption": caption, "embedding": trimmed}, self._path(caption))

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
