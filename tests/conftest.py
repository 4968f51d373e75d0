"""Shared fixtures live in one module per area, so parallel work on them never collides."""

import torch

# Test models are tiny: one intra-op thread is several times faster than two fighting over
# the same cores (and CI has two).
torch.set_num_threads(1)

from fixtures_data import *  # noqa: F401,F403  (tiny synthetic benchmark on disk)
from fixtures_models import *  # noqa: F401,F403  (tiny Wan bundles)
