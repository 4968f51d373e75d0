"""Data fixtures: a tiny synthetic benchmark written once per test session."""

from __future__ import annotations

import pytest

from rvosflow.data.synthetic import SyntheticConfig, write_benchmark

TINY_SYNTHETIC_CFG = SyntheticConfig(
    seed=0, frames=9, height=32, width=32, train_videos=6, valid_u_videos=3, valid_videos=3,
)


@pytest.fixture(scope="session")
def tiny_synthetic_cfg() -> SyntheticConfig:
    """Config of the tiny benchmark: 6/3/3 videos of 9 frames at 32x32."""
    return TINY_SYNTHETIC_CFG


@pytest.fixture(scope="session")
def tiny_benchmark(tmp_path_factory, tiny_synthetic_cfg):
    """Root Path of a tiny synthetic benchmark in all four formats (mevis/, ref_ytvos/, ...)."""
    return write_benchmark(tmp_path_factory.mktemp("synthetic") / "bench", tiny_synthetic_cfg, progress=False)
