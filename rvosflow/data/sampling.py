"""Training-clip frame samplers: which ``num_frames`` frame indices of a video form one clip, and
how many clips an epoch draws from one expression.

All return sorted indices (repeats allowed when the video is shorter than the clip, and by
``release`` at the video's ends). ``release`` is the public FlowRVS code's sampler; its facts are
in :mod:`rvosflow.data.augment`'s docstring, with the release's files and functions.
"""

from __future__ import annotations

import numpy as np

FRAME_SAMPLERS = ("global", "uniform", "random_sorted", "first", "release")

# release: the local frames lie 1..3 frames before and after the anchor (``random.randint(1, 3)``
# in its ``sample_global_frames``; its ``--max_skip 3`` flag is never read by the MeViS dataset).
RELEASE_MAX_SKIP = 3


def clip_starts(num_video_frames: int, num_frames: int, how: str) -> list[int | None]:
    """The clips one expression contributes to an epoch, as their anchor frames: ``release`` makes
    one per ``num_frames``-frame chunk of the video (anchored at the chunk's first frame, as its
    ``MeViSDataset.prepare_metas``); every other sampler makes one clip, unanchored (None)."""
    if how == "release":
        return list(range(0, num_video_frames, num_frames))
    return [None]


def sample_frames(num_video_frames: int, num_frames: int, how: str, rng: np.random.Generator,
                  anchor: int | None = None) -> list[int]:
    """``global``: one random frame from each of ``num_frames`` equal segments spanning the whole
    video; ``uniform``: evenly spaced over the video; ``random_sorted``: random frames sorted in time
    (REM); ``first``: the first k frames; ``release``: the release's clip around ``anchor``
    (:func:`release_frames`)."""
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
    elif how == "release":
        if anchor is None:
            raise ValueError("data.frame_sampler: release samples around an anchor frame (clip_starts), got none")
        idx = release_frames(anchor, n, k, rng)
    else:
        raise ValueError(f"data.frame_sampler: unknown '{how}'; allowed: {list(FRAME_SAMPLERS)}")
    return [int(i) for i in idx]


def release_frames(anchor: int, num_video_frames: int, num_frames: int, rng: np.random.Generator) -> list[int]:
    """The release's ``FrameSampler.sample_global_frames`` (``datasets/mevis.py``): the anchor, one
    local frame 1..3 before and one 1..3 after it (clamped to the video, so the anchor repeats at
    the ends), then ``num_frames - 3`` global frames drawn without replacement from outside the
    local window — its last frame stays drawable, as the release slices ``all_inds[max(local):]``
    — or from the whole video when that pool is too small, or with replacement when the video
    itself is; sorted."""
    n, k = num_video_frames, num_frames
    if k == 2:  # the release would return 3 frames (anchor + 2 local) for 2
        raise ValueError("data.num_frames: expected 1 or >= 3 frames for the release sampler, got 2")
    idx = [anchor]
    if k == 1:
        return idx
    lo = max(0, anchor - int(rng.integers(1, RELEASE_MAX_SKIP + 1)))
    hi = min(n - 1, anchor + int(rng.integers(1, RELEASE_MAX_SKIP + 1)))
    idx += [lo, hi]
    rest = k - 3
    if rest > 0:
        pool = np.r_[0:lo, hi:n]
        if len(pool) > rest:
            idx += rng.choice(pool, size=rest, replace=False).tolist()
        elif n >= rest:
            idx += rng.choice(n, size=rest, replace=False).tolist()
        else:
            idx += rng.integers(0, n, size=rest).tolist()
    return sorted(idx)
