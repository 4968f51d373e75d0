"""How a run writes its Lightning checkpoints.

Lightning's ``TorchCheckpointIO`` serialises the whole checkpoint into an in-memory buffer and
then writes the buffer: for the 1.3B DiT with its EMA copy and AdamW moments that is 11+ GB of
host memory on top of the live training state, which is what fails first on a 24 GB machine
(``scripts/bench_real_cpu.py``) and costs a GPU node's host the same. ``StreamingCheckpointIO``
streams ``torch.save`` straight into a temporary file beside the target and renames it into
place, so the write stays atomic (a crash leaves the previous checkpoint, never half of one).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO


class StreamingCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local saves go through a temporary file instead of memory;
    remote paths (S3, ...) and ``storage_options`` keep Lightning's own save."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or not isinstance(get_filesystem(path), LocalFileSystem):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            torch.save(checkpoint, tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
