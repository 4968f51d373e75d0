"""Writes that readers never see half done: a file is written to a temporary name in its folder
and renamed over the target; a folder is built under a temporary name and swapped in. Every final
artefact (results, tables, caches, exports, the synthetic benchmark, the tiny bundle) goes through here."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


UMASK = _umask()  # read once: os.umask can only be read by setting it


def write_with(path, write: Callable) -> Path:
    """``write(file_object)`` into a temporary file beside ``path``, then renamed to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(fd, 0o666 & ~UMASK)  # mkstemp makes it 0600; the result is an ordinary file
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path, text: str) -> Path:
    return write_with(path, lambda fh: fh.write(text.encode("utf-8")))


def torch_save(obj, path, legacy: bool = False) -> Path:
    """``torch.save`` atomically; ``legacy``: the non-zip container (what the FlowRVS release writes)."""
    return write_with(path, lambda fh: torch.save(obj, fh, _use_new_zipfile_serialization=not legacy))


def temporary_folder(out: Path) -> Path:
    """A fresh folder beside ``out`` to build its replacement in (then :func:`swap_in`)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    return out.parent / f".{out.name}.tmp-{os.getpid()}-{time.time_ns()}"


def swap_in(tmp: Path, out: Path) -> None:
    """Move the finished folder ``tmp`` to ``out``, replacing what was there only once ``tmp`` is complete."""
    out.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}-{time.time_ns()}")
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
