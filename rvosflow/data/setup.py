"""A run's data, set up before any model is loaded: the synthetic benchmark written where it is
missing (``data.generate_if_missing``), the DataModule of ``data.format`` at the frame size the
model takes, and every file the splits of the run's mode reference checked (all problems at once)."""

from __future__ import annotations

import logging
from pathlib import Path

from rvosflow.data.check import check_sources
from rvosflow.data.datamodules import ReferringDataModule, from_config
from rvosflow.data.synthetic import SyntheticConfig, write_benchmark
from rvosflow.errors import ConfigError
from rvosflow.models.loader import bundle_spatial_multiple

log = logging.getLogger(__name__)


def ensure_data(cfg) -> None:
    """The synthetic benchmark at ``data.root`` (written once when missing and generate_if_missing)."""
    root = Path(cfg.data.root)
    if root.exists():
        return
    if not cfg.data.generate_if_missing:
        raise ConfigError(f"data.root: expected the {cfg.data.format} layout at {root}, found nothing there")
    tier = cfg.data.tier or "default"
    log.info("synthetic benchmark (%s tier) missing at %s: generating it (once)", tier, root)
    write_benchmark(root.parent, SyntheticConfig(tier=tier))


def size_multiple(cfg) -> int:
    """What frame sides are floored to: ``data.size_multiple`` (the release hard-codes 16), or the
    model's own (VAE spatial factor x DiT patch) when null; it must be a multiple of the model's."""
    own = bundle_spatial_multiple(cfg.model.path)
    chosen = cfg.data.size_multiple or own
    if chosen % own:
        raise ConfigError(f"data.size_multiple: expected a multiple of {own} (this model's VAE factor x patch), got {chosen}")
    return int(chosen)


def prepare_data(cfg, check_files: bool = True) -> ReferringDataModule:
    """The run's DataModule, its data present and (``check_files``) every file its mode reads checked."""
    ensure_data(cfg)
    datamodule = from_config(cfg.data, size_multiple(cfg), seed=cfg.seed)
    if check_files:
        check_sources(datamodule.sources_read(cfg.mode))
    return datamodule
