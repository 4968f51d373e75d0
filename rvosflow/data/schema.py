"""In-memory records shared by the synthetic generator, the format writers and the readers."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# What resolves an expression (synthetic benchmark only; docs/design.md §5). Stored beside the real-format
# files (``expression_kinds.json``), never inside them; scores are reported per kind.
EXPRESSION_KINDS = ("colour", "appearance", "motion", "relation", "temporal", "multi-object")


@dataclass
class Expression:
    """One referring expression. Several `obj_ids` means the target is their union."""

    exp_id: str
    text: str
    obj_ids: list[int]
    # Synthetic-only metadata: which cue resolves it (one of EXPRESSION_KINDS) and whether any
    # single frame suffices. Written beside the real formats (expression_kinds.json), not inside.
    kind: str = ""
    single_frame_resolvable: bool = True


@dataclass
class Video:
    """A generated clip: frames, per-object visible masks and its expressions."""

    video_id: str
    frames: np.ndarray  # uint8 [T, H, W, 3]
    masks: dict[int, np.ndarray]  # obj_id (>= 1) -> bool [T, H, W], visible part after occlusion
    expressions: list[Expression]
    caption: str = ""  # whole-scene caption, the text-to-video pretraining condition
    frame_names: list[str] = field(default_factory=list)
    # Generator-side ground truth (synthetic only): per-object attributes and trajectories, the
    # background, ... Never written to the real formats; used to verify expressions.
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.frame_names:
            self.frame_names = [f"{i:05d}" for i in range(len(self.frames))]

    def target(self, obj_ids: list[int]) -> np.ndarray:
        """Union of the objects' masks, bool [T, H, W]."""
        out = np.zeros(self.frames.shape[:3], dtype=bool)
        for obj_id in obj_ids:
            out |= self.masks[obj_id]
        return out
