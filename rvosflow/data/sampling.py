"""Training-clip frame samplers: which ``num_frames`` frame indices of a video form one clip.

All return sorted indices (repeats allowed when the video is shorter than the clip).
"""

from __future__ import annotations

import numpy as np

FRAME_SAMPLERS = ("global", "uniform", "random_sorted", "first")


def sample_frames(num_video_frames: int, num_frames: int, how: str, rng: np.random.Generator) -> list[int]:
    """``global``: the release's sparse global sampling (one random frame from each of
    ``num_frames`` equal segments spanning the whole video); ``uniform``: evenly spaced over the
    video; ``random_sorted``: random frames sorted in time (REM); ``first``: the first k frames."""
    n, k = num_video_frames, num_frames
    if n <= 0:
        raise ValueError("cannot sample frames from a video with no frames")
    if how == "first":
        idx = np.arange(k) if n >= k else np.concatenate([np.arange(n), np.full(k - n, n - 1)])
    elif how == "uniform":
        idx = np.round(np.linspace(0, n - 1, k)).astype(int)
    elif how == "random_sorted":
        idx = np.sort(rng.choice(n, size=k, replace=n < k))
    elif how == "global":
        edges = np.linspace(0, n, k + 1)
        lo = np.floor(edges[:-1]).astype(int)
        hi = np.maximum(np.floor(edges[1:]).astype(int), lo + 1)
        idx = np.minimum(rng.integers(lo, hi), n - 1)
    else:
        raise ValueError(f"data.frame_sampler: unknown '{how}'; allowed: {list(FRAME_SAMPLERS)}")
    return [int(i) for i in idx]
