"""Procedurally generated referring-video benchmark, written in the real datasets' formats.

    python -m rvosflow.data.synthetic --out data/synthetic

Public API: :class:`SyntheticConfig`, :func:`generate_split`, :func:`generate_video`,
:func:`vocabulary`, :func:`write_benchmark`, :func:`resolve_expression`. See ``world.py`` for the
scenes and the held-out combinations of the ``valid`` split, ``language.py`` for the grammar.
"""

from __future__ import annotations

from rvosflow.data.synthetic import writer
from rvosflow.data.synthetic.generate import (
    expression_kind,
    generate_split,
    generate_video,
    iter_split,
    resolve_expression,
    world_of,
)
from rvosflow.data.synthetic.language import vocabulary
from rvosflow.data.synthetic.world import (
    HELD_OUT_SHAPE_COLOUR,
    HELD_OUT_SHAPE_MOTION,
    SPLITS,
    TIERS,
    SyntheticConfig,
)

__all__ = [
    "expression_kind",
    "HELD_OUT_SHAPE_COLOUR",
    "HELD_OUT_SHAPE_MOTION",
    "SPLITS",
    "TIERS",
    "SyntheticConfig",
    "generate_split",
    "generate_video",
    "iter_split",
    "resolve_expression",
    "vocabulary",
    "world_of",
    "write_benchmark",
]


write_benchmark = writer.write_benchmark
