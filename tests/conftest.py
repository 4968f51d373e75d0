"""Shared fixtures live in one module per area, so parallel work on them never collides."""

from fixtures_data import *  # noqa: F401,F403  (tiny synthetic benchmark on disk)
from fixtures_models import *  # noqa: F401,F403  (tiny Wan bundles)
