"""mode=predict: write every expression's masks as ``<out>/<video>/<exp_id>/<frame>.png``.

PNGs are 8-bit grayscale, 0 (background) / 255 (object), at the video's original resolution --
the layout the MeViS and Ref-YouTube-VOS evaluation scripts and servers read, and what
``python -m rvosflow.evaluate`` scores.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from PIL import Image

from rvosflow import atomic
from rvosflow.errors import ConfigError, DatasetFormatError


def write_masks(out_dir: str | Path, video_id: str, exp_id: str, frame_names, masks) -> None:
    """bool [T, H, W] -> ``<out_dir>/<video_id>/<exp_id>/<frame>.png`` (0/255)."""
    masks = masks.cpu().numpy() if isinstance(masks, torch.Tensor) else np.asarray(masks)
    if masks.ndim != 3 or len(masks) != len(frame_names):
        raise ValueError(f"{video_id}/{exp_id}: {len(frame_names)} frame names for masks of shape {masks.shape}")
    d = Path(out_dir) / str(video_id) / str(exp_id)
    d.mkdir(parents=True, exist_ok=True)
    for name, m in zip(frame_names, masks):
        png = Image.fromarray(np.where(m, 255, 0).astype(np.uint8), mode="L")
        atomic.write_with(d / f"{name}.png", lambda fh: png.save(fh, format="PNG"))


def read_png_values(path: str | Path) -> np.ndarray:
    """A prediction PNG's values [H, W] (grayscale, palette index or 0/1)."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("L") if im.mode not in ("L", "P", "1") else im)
    except OSError as e:  # zero bytes or not a PNG: PIL's error names no file
        raise DatasetFormatError(f"{path}: expected a mask PNG, found an unreadable file ({e})") from e


def is_binary(values: np.ndarray) -> bool:
    """0/255 or 0/1 only (a soft or multi-valued PNG is not a mask)."""
    present = set(np.flatnonzero(np.bincount(values.astype(np.uint8, copy=False).ravel(), minlength=256)).tolist())
    return present <= {0, 255} or present <= {0, 1}


def read_mask(path: str | Path) -> np.ndarray:
    """A prediction PNG as bool [H, W] (non-zero = object, as the official scripts read it)."""
    return read_png_values(path) != 0


class MaskWriter(BasePredictionWriter):
    """Writes the outputs of ``FlowRVSModule.predict_step`` batch by batch (nothing is kept)."""

    def __init__(self, out_dir: str | Path):
        super().__init__(write_interval="batch")
        self.out_dir = Path(out_dir)
        self.expressions = 0
        self.frames = 0

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        for p in prediction:
            write_masks(self.out_dir, p["video_id"], p["exp_id"], p["frame_names"], p["pred"])
            self.expressions += 1
            self.frames += len(p["frame_names"])


MANIFEST = ".rvosflow-predictions.json"  # what a prediction run writes into its folder, listed before it writes


def predictions_dir(cfg, run_dir: Path) -> Path:
    """``predict.out_dir``, or ``<run dir>/predictions``."""
    return Path(cfg.predict.out_dir) if cfg.predict.out_dir else Path(run_dir) / "predictions"


def planned_masks(source) -> list[str]:
    """The PNGs a prediction of ``source`` writes, relative to its folder."""
    return [f"{e.video_id}/{e.exp_id}/{name}.png" for e in source.expressions for name in e.frame_names]


def prepare_predictions_dir(cfg, run_dir: Path, source) -> Path:
    """The prediction folder, made ready for ``source``'s masks, losing nothing rvosflow did not
    write: a folder holding any file that no earlier prediction listed in its manifest is refused
    (a folder of ground-truth PNGs is not overwritten, whatever the flags); one holding an earlier
    prediction is refused unless ``predict.overwrite=true``, which then deletes exactly the files
    that manifest lists. The new run's files are listed before they are written."""
    out_dir = predictions_dir(cfg, run_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"predict.out_dir: expected a folder, found a file at {out_dir}")
    files = [p for p in out_dir.rglob("*") if p.is_file()] if out_dir.exists() else []
    manifest = out_dir / MANIFEST
    ours = set(json.loads(manifest.read_text())["files"]) if manifest.is_file() else set()
    foreign = [p for p in files if p != manifest and str(p.relative_to(out_dir)) not in ours]
    if foreign:
        raise ConfigError(f"predict.out_dir: {out_dir} holds {len(foreign)} file(s) rvosflow did not write "
                          f"(e.g. {foreign[0]}): expected an empty folder or an earlier prediction's")
    if files and not cfg.predict.overwrite:
        raise ConfigError(f"predict.out_dir: expected an empty or new folder, found {len(files)} entries of an earlier "
                          f"prediction in {out_dir} (set predict.overwrite=true to replace them)")
    for rel in ours:
        (out_dir / rel).unlink(missing_ok=True)
    for d in sorted((p for p in out_dir.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        if not any(d.iterdir()):
            d.rmdir()
    atomic.write_text(manifest, json.dumps({"files": planned_masks(source)}))
    return out_dir
