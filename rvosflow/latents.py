"""Cache of frozen-encoder outputs (VAE posteriors of clips and masks).

The VAE encoder is frozen, so a clip's latent never changes within a run, nor across the runs of
a sweep that share a bundle and a dataset. Misses are encoded together in one batch; entries
live in memory and, when a directory is given, on disk (one file per entry, written atomically,
so several sweep workers can share it).

Keys are by content (DESIGN §8): an entry is named by a hash of the very pixels the encoder
would see (``content_key``, computed by the datasets), so a changed, replaced or blackened frame
is a miss and is encoded again. The directory is named by what else fixes the value: the VAE
weights, the dtype, the resolution and the latent convention (``train.latent_cache_dir``).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

Entry = tuple[torch.Tensor, ...]


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


def save_atomically(obj, path: Path, legacy: bool = False) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename: readers (other sweep
    workers, other ranks) never see a half-written entry. ``legacy``: the non-zip format (what the
    FlowRVS release writes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh, _use_new_zipfile_serialization=not legacy)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
                    entry = tuple(torch.load(path, weights_only=True))
                except Exception:  # a torn or foreign file: recompute it
                    return None
                self._memory[name] = entry
                return entry
        return None

    def _store(self, name: str, entry: Entry) -> None:
        self._memory[name] = entry
        if self.directory is not None:
            save_atomically(list(entry), self.directory / f"{name}.pt")

    def get_many(self, keys: Sequence, compute: Callable[[list[int]], list[Entry]]) -> list[Entry]:
        """Entries for ``keys``; ``compute(positions)`` encodes the missing ones in one batch."""
        if not self.enabled:
            return [tuple(t.detach() for t in e) for e in compute(list(range(len(keys))))]
        names = [self._name(k) for k in keys]
        found = [self._load(n) for n in names]
        missing = [i for i, e in enumerate(found) if e is None]
        if missing:
            for i, entry in zip(missing, compute(missing)):
                entry = tuple(t.detach().cpu().contiguous() for t in entry)
                self._store(names[i], entry)
                found[i] = entry
        return found

    def __len__(self) -> int:
        return len(self._memory)
