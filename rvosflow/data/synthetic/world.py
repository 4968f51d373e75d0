"""The synthetic world: sampling scenes of moving shapes, simulating them and rendering frames.

A scene is a few objects (shape, colour, size, texture, motion) over a textured background.
Objects are drawn in id order (object 1 at the bottom), so later objects occlude earlier ones and
each object's mask is its *visible* part. Trajectories are simulated in float pixel coordinates
and kept (``Video.meta["objects"][i]["track"]``) so expressions can be checked against them.

Two tiers (``SyntheticConfig.tier``, docs/design.md §5):

- ``default``: colour-led scenes that the tiny model grounds within a CPU run. 2 objects, or 3-4
  in a ``crowded_prob`` share of scenes, with pairwise distinct colours except that a scene of
  3-4 may hold one same-colour pair (the target of a plural, "the two red shapes"); no look-alike
  twins. Expressions name a colour (see ``language.colour_candidates``), so every target is
  picked out by what a single token sees. (Measured with the tiny model: 2-object scenes score
  J ~0.59 after 1,200 steps, 3-4-object scenes ~0.41, with a wrong object picked 3x as often.)
- ``hard``: the full motion-centric world (shape, motion, relations, time, look-alike twins), for
  long runs and GPUs.

Held-out combinations (never sampled in ``train`` / ``valid_u``; every ``valid`` video has at
least one object with one of them) -- see :data:`HELD_OUT_SHAPE_COLOUR` and
:data:`HELD_OUT_SHAPE_MOTION`:

- (shape, colour): ("triangle", "blue"), ("circle", "yellow")
- (shape, motion): ("square", "bounce"), ("diamond", "pause")
"""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass, field

import numpy as np

from rvosflow.errors import ConfigError

SHAPES = ("circle", "square", "triangle", "diamond")
COLOURS = {
    "red": (225, 45, 40),
    "green": (45, 200, 70),
    "blue": (55, 95, 240),
    "yellow": (240, 220, 45),
    "purple": (175, 65, 215),
    "orange": (250, 145, 35),
}
# radius as a fraction of min(H, W): objects ~17 and ~26 px across at 64x64 (the tiny 4x-downsampling
# VAE reconstructs their masks at J&F ~98; at 11/18 px, one pixel of boundary error cost ~30% J)
SIZES = {"small": 0.13, "big": 0.2}
TEXTURES = ("plain", "striped", "dotted")
DIRECTIONS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}
SPEEDS = {"slowly": 0.28, "fast": 0.5}  # distance over the whole clip, fraction of the frame side
MOTIONS = ("still", "move", "stop", "start", "pause", "bounce")
BACKGROUND_COLOURS = {"grey": (72, 72, 72), "brown": (92, 66, 44), "teal": (28, 78, 78), "navy": (34, 38, 78)}
BACKGROUND_PATTERNS = ("checkered", "wavy", "speckled")

HELD_OUT_SHAPE_COLOUR = frozenset({("triangle", "blue"), ("circle", "yellow")})
HELD_OUT_SHAPE_MOTION = frozenset({("square", "bounce"), ("diamond", "pause")})

SPLITS = ("train", "valid_u", "valid")
TIERS = ("default", "hard")


@dataclass(frozen=True)
class SyntheticConfig:
    """Everything that determines a synthetic benchmark (it is hashed into the cache manifest)."""

    tier: str = "default"  # one of TIERS
    seed: int = 0
    frames: int = 17
    height: int = 64
    width: int = 64
    train_videos: int = 240
    valid_u_videos: int = 48
    valid_videos: int = 48
    min_objects: int = 2
    max_objects: int = 4
    max_expressions: int = 6  # per video
    noise_std: float = 6.0  # per-pixel Gaussian noise on every frame
    twin_prob: float = 0.6  # hard tier: chance that a scene has two identical-looking objects
    pair_prob: float = 0.35  # default tier: chance that a scene of 3+ objects has a same-colour pair
    crowded_prob: float = 0.3  # default tier: chance of 3..max_objects objects rather than min_objects

    def __post_init__(self) -> None:

        if self.tier not in TIERS:
            raise ConfigError(f"tier: expected one of {', '.join(TIERS)}, got {self.tier!r}")
        least = {"frames": 1, "height": 16, "width": 16, "train_videos": 1, "valid_u_videos": 1, "valid_videos": 1,
                 "min_objects": 2, "max_expressions": 1}  # 2 objects: every expression needs a distractor
        for key, lo in least.items():
            if getattr(self, key) < lo:
                raise ConfigError(f"{key}: expected an integer >= {lo}, got {getattr(self, key)!r}")
        if self.max_objects < self.min_objects:
            raise ConfigError(f"max_objects: expected >= min_objects ({self.min_objects}), got {self.max_objects}")
        for key in ("twin_prob", "pair_prob", "crowded_prob"):
            if not 0 <= getattr(self, key) <= 1:
                raise ConfigError(f"{key}: expected a number in [0, 1], got {getattr(self, key)!r}")
        if self.noise_std < 0:
            raise ConfigError(f"noise_std: expected a number >= 0, got {self.noise_std!r}")

    def videos(self, split: str) -> int:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        return {"train": self.train_videos, "valid_u": self.valid_u_videos, "valid": self.valid_videos}[split]

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ObjectSpec:
    shape: str
    colour: str
    size: str
    texture: str
    motion: str  # one of MOTIONS (the simulated program; expressions use the derived trajectory)
    direction: str = "left"
    speed: str = "slowly"
    track: np.ndarray = field(default=None, repr=False)  # float [T, 2] centre (x, y)
    radius: float = 0.0

    def appearance(self) -> tuple[str, str, str, str]:
        return (self.size, self.texture, self.colour, self.shape)

    def to_meta(self) -> dict:
        d = {k: getattr(self, k) for k in ("shape", "colour", "size", "texture", "motion", "direction", "speed")}
        d["radius"] = float(self.radius)
        d["track"] = self.track.copy()
        return d


def split_rng(seed: int, split: str) -> np.random.Generator:
    """Deterministic generator for (seed, split), independent of Python's hash randomisation."""
    return np.random.default_rng([seed, zlib.crc32(split.encode())])


def is_held_out(o: ObjectSpec) -> bool:
    return (o.shape, o.colour) in HELD_OUT_SHAPE_COLOUR or (o.shape, o.motion) in HELD_OUT_SHAPE_MOTION


# ----------------------------------------------------------------------------------- sampling


def _sample_object(rng: np.random.Generator, motion: str) -> ObjectSpec:
    return ObjectSpec(
        shape=str(rng.choice(SHAPES)),
        colour=str(rng.choice(list(COLOURS))),
        size=str(rng.choice(list(SIZES))),
        texture=str(rng.choice(TEXTURES)),
        motion=motion,
        direction=str(rng.choice(list(DIRECTIONS))),
        speed=str(rng.choice(list(SPEEDS))),
    )


def _sample_specs(rng: np.random.Generator, cfg: SyntheticConfig, split: str, n: int | None) -> list[ObjectSpec]:
    if cfg.tier == "default":
        return _sample_specs_colour_led(rng, cfg, split, n)
    n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    # motions mostly distinct within a scene, so motion separates objects
    motions = list(rng.permutation(MOTIONS))
    if n > len(motions):
        motions += list(rng.choice(MOTIONS, n - len(motions)))
    specs: list[ObjectSpec] = []
    for i in range(n):
        for _ in range(100):
            o = _sample_object(rng, str(motions[i]))
            if split == "valid" or not is_held_out(o):
                break
        specs.append(o)
    if n >= 2 and rng.random() < cfg.twin_prob:
        # a twin: same appearance as another object, different motion (only motion tells them apart)
        a, b = (int(i) for i in rng.choice(n, 2, replace=False))
        specs[b].shape, specs[b].colour = specs[a].shape, specs[a].colour
        specs[b].size, specs[b].texture = specs[a].size, specs[a].texture
        if split != "valid" and is_held_out(specs[b]):
            specs[b].motion = next(str(m) for m in rng.permutation(MOTIONS)
                                   if m != specs[a].motion and (specs[b].shape, m) not in HELD_OUT_SHAPE_MOTION)
    if split == "valid" and not any(is_held_out(o) for o in specs):
        o = specs[int(rng.integers(n))]
        if rng.random() < 0.5:
            o.shape, o.colour = sorted(HELD_OUT_SHAPE_COLOUR)[int(rng.integers(len(HELD_OUT_SHAPE_COLOUR)))]
        else:
            o.shape, o.motion = sorted(HELD_OUT_SHAPE_MOTION)[int(rng.integers(len(HELD_OUT_SHAPE_MOTION)))]
    return specs


def _sample_specs_colour_led(rng: np.random.Generator, cfg: SyntheticConfig, split: str, n: int) -> list[ObjectSpec]:
    """Default tier: n objects of distinct colours (one same-colour pair at most, in scenes of 3+),
    any shape, size, texture and motion. ``valid`` keeps its held-out combinations."""
    colours = [str(c) for c in rng.permutation(list(COLOURS))[:n]]
    if n >= 3 and rng.random() < cfg.pair_prob:
        colours[1] = colours[0]
    motions = list(rng.permutation(MOTIONS))
    motions += list(rng.choice(MOTIONS, max(0, n - len(motions))))
    specs: list[ObjectSpec] = []
    for i in range(n):
        for _ in range(100):
            o = _sample_object(rng, str(motions[i]))
            o.colour = colours[i]
            if split == "valid" or not is_held_out(o):
                break
        specs.append(o)
    if split == "valid" and not any(is_held_out(o) for o in specs):
        o = specs[int(rng.integers(n))]
        if rng.random() < 0.5:  # keep the colours as sampled: change the shape to the held-out one
            shape = {c: s for s, c in HELD_OUT_SHAPE_COLOUR}.get(o.colour)
            if shape is not None:
                o.shape = shape
            else:
                o.shape, o.motion = sorted(HELD_OUT_SHAPE_MOTION)[int(rng.integers(len(HELD_OUT_SHAPE_MOTION)))]
        else:
            o.shape, o.motion = sorted(HELD_OUT_SHAPE_MOTION)[int(rng.integers(len(HELD_OUT_SHAPE_MOTION)))]
    return specs


# --------------------------------------------------------------------------------- simulation


def _moving_schedule(rng: np.random.Generator, motion: str, steps: int) -> np.ndarray:
    """bool [steps]: whether the object moves during step t -> t+1."""
    m = np.zeros(steps, dtype=bool)
    lo = max(2, steps // 4)
    if motion in ("move", "bounce"):
        m[:] = True
    elif motion == "stop":
        k = int(rng.integers(lo, steps - lo + 1))
        m[:k] = True
    elif motion == "start":
        k = int(rng.integers(lo, steps - lo + 1))
        m[k:] = True
    elif motion == "pause":
        a = int(rng.integers(2, max(3, steps // 3) + 1))
        b = int(rng.integers(2, max(3, steps // 3) + 1))
        a, b = min(a, steps - 4), min(b, steps - a - 2)
        m[:a] = True
        m[a + b:] = True
    return m


def _simulate(rng: np.random.Generator, o: ObjectSpec, cfg: SyntheticConfig, r: float) -> np.ndarray | None:
    T, H, W = cfg.frames, cfg.height, cfg.width
    steps = T - 1
    sched = _moving_schedule(rng, o.motion, steps)
    dx, dy = DIRECTIONS[o.direction]
    side = W if dx else H
    lo, hi = r + 1.0, side - r - 1.0
    if o.motion == "bounce":
        o.speed = "fast"
    v = SPEEDS[o.speed] * side / steps
    travel = v * sched.sum()
    if o.motion != "bounce" and travel > (hi - lo) * 0.95:
        o.speed = "slowly"
        v = SPEEDS[o.speed] * side / steps
        travel = v * sched.sum()
        if travel > (hi - lo) * 0.95:
            return None
    other_lo, other_hi = (r + 1.0, (H if dx else W) - r - 1.0)
    if other_hi <= other_lo or hi <= lo:
        return None
    other = rng.uniform(other_lo, other_hi)
    sign = dx + dy  # +1 or -1 along the moving axis
    if o.motion == "bounce":
        # start close enough to the wall ahead to hit it at some point in the middle of the clip
        wall_dist = rng.uniform(0.25, 0.6) * travel
        wall_dist = min(wall_dist, hi - lo - 1.0)
        start = hi - wall_dist if sign > 0 else lo + wall_dist
    else:
        start = rng.uniform(lo, hi - travel) if sign > 0 else rng.uniform(lo + travel, hi)
    pos = np.empty(T)
    pos[0] = start
    p, s = start, sign
    for t in range(steps):
        if sched[t]:
            p = p + s * v
            if p > hi:
                p, s = 2 * hi - p, -s
            elif p < lo:
                p, s = 2 * lo - p, -s
        pos[t + 1] = p
    track = np.empty((T, 2))
    if dx:
        track[:, 0], track[:, 1] = pos, other
    else:
        track[:, 0], track[:, 1] = other, pos
    return track


# ---------------------------------------------------------------------------------- rendering


def shape_mask(shape: str, cx: float, cy: float, r: float, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """bool mask of a shape of 'radius' r centred at (cx, cy), on pixel centres."""
    dx, dy = xx + 0.5 - cx, yy + 0.5 - cy
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        h = 0.86 * r
        return (np.abs(dx) <= h) & (np.abs(dy) <= h)
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= 1.15 * r
    if shape == "triangle":
        top, bottom = -1.05 * r, 0.85 * r
        frac = (dy - top) / (bottom - top)
        return (dy >= top) & (dy <= bottom) & (np.abs(dx) <= frac * 1.05 * r)
    raise ValueError(f"unknown shape {shape!r}")


def _texture(texture: str, cx: float, cy: float, yy: np.ndarray, xx: np.ndarray, scale: float) -> np.ndarray:
    """float [H, W] brightness factor, attached to the object (moves with it)."""
    if texture == "plain":
        return np.ones(yy.shape)
    rx, ry = np.floor(xx - cx + 100.0), np.floor(yy - cy + 100.0)
    w = max(1, int(round(2 * scale)))
    if texture == "striped":
        return np.where(((rx + ry) // w) % 2 == 0, 1.0, 0.45)
    if texture == "dotted":
        return np.where(((rx // w) % 2 == 0) & ((ry // w) % 2 == 0), 0.4, 1.0)
    raise ValueError(f"unknown texture {texture!r}")


def _background(rng: np.random.Generator, cfg: SyntheticConfig, colour: str, pattern: str) -> np.ndarray:
    H, W = cfg.height, cfg.width
    yy, xx = np.mgrid[0:H, 0:W].astype(float)
    scale = min(H, W) / 64.0
    if pattern == "checkered":
        c = max(2, int(round(8 * scale)))
        ox, oy = rng.integers(0, c, 2)
        f = (((xx + ox) // c + (yy + oy) // c) % 2) * 2 - 1
    elif pattern == "wavy":
        a, b = rng.uniform(0.15, 0.35, 2) / scale
        f = np.sin(xx * a + 2.0 * np.sin(yy * b) + rng.uniform(0, 6.3))
    else:  # speckled: smooth random blotches
        g = rng.normal(size=(H // 4 + 2, W // 4 + 2))
        f = np.kron(g, np.ones((4, 4)))[:H, :W]
        f = (f + np.roll(f, 2, 0) + np.roll(f, 2, 1)) / 3.0
        f = np.clip(f, -1, 1)
    base = np.array(BACKGROUND_COLOURS[colour], dtype=float)
    return base[None, None, :] * (1.0 + 0.35 * f[..., None])


@dataclass
class Scene:
    objects: list[ObjectSpec]
    frames: np.ndarray  # uint8 [T, H, W, 3]
    masks: dict[int, np.ndarray]  # visible masks
    full_masks: dict[int, np.ndarray]  # unoccluded masks
    background: tuple[str, str]  # (colour, pattern)


def render(rng: np.random.Generator, cfg: SyntheticConfig, objects: list[ObjectSpec], background: tuple[str, str]) -> Scene:
    T, H, W = cfg.frames, cfg.height, cfg.width
    yy, xx = np.mgrid[0:H, 0:W].astype(float)
    scale = min(H, W) / 64.0
    bg = _background(rng, cfg, *background)
    frames = np.empty((T, H, W, 3))
    full = {i + 1: np.zeros((T, H, W), dtype=bool) for i in range(len(objects))}
    for t in range(T):
        img = bg.copy()
        for i, o in enumerate(objects):
            cx, cy = o.track[t]
            m = shape_mask(o.shape, cx, cy, o.radius, yy, xx)
            full[i + 1][t] = m
            tex = _texture(o.texture, cx, cy, yy, xx, scale)
            col = np.array(COLOURS[o.colour], dtype=float)
            img[m] = col[None, :] * tex[m][:, None]
        frames[t] = img
    frames += rng.normal(0.0, cfg.noise_std, frames.shape)
    frames = np.clip(np.round(frames), 0, 255).astype(np.uint8)
    visible = {}
    above = np.zeros((T, H, W), dtype=bool)
    for k in sorted(full, reverse=True):
        visible[k] = full[k] & ~above
        above |= full[k]
    visible = {k: visible[k] for k in sorted(visible)}
    return Scene(objects, frames, visible, full, background)


def sample_scene(rng: np.random.Generator, cfg: SyntheticConfig, split: str) -> Scene:
    """Sample objects, simulate their motion and render; retried until every object is visible.

    The default tier draws the object count once per scene (``crowded_prob``), so that crowded
    scenes are not thinned out by the retries (the hard tier keeps its version-2 sampling)."""
    n = None
    if cfg.tier == "default":
        crowded = cfg.max_objects > cfg.min_objects and rng.random() < cfg.crowded_prob
        n = int(rng.integers(cfg.min_objects + 1, cfg.max_objects + 1)) if crowded else cfg.min_objects
    for _attempt in range(1000):
        specs = _sample_specs(rng, cfg, split, n)
        ok = True
        for o in specs:
            o.radius = SIZES[o.size] * min(cfg.height, cfg.width)
            track = _simulate(rng, o, cfg, o.radius)
            if track is None:
                ok = False
                break
            o.track = track
        if not ok:
            continue
        # keep objects apart at the start so occlusion is partial
        starts = np.array([o.track[0] for o in specs])
        radii = np.array([o.radius for o in specs])
        d = np.linalg.norm(starts[:, None] - starts[None], axis=-1)
        np.fill_diagonal(d, np.inf)
        if (d < 0.9 * (radii[:, None] + radii[None])).any():
            continue
        background = (str(rng.choice(list(BACKGROUND_COLOURS))), str(rng.choice(BACKGROUND_PATTERNS)))
        scene = render(rng, cfg, specs, background)
        # every object mostly visible in most frames
        good = True
        for k, m in scene.masks.items():
            area = scene.full_masks[k].sum(axis=(1, 2))
            vis = m.sum(axis=(1, 2))
            if (vis >= 0.4 * area).mean() < 0.7 or vis.min() == 0:
                good = False
                break
        if good:
            return scene
    raise RuntimeError(f"could not sample a valid scene for split {split!r} with {cfg}")
