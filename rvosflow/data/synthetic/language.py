"""The closed language of the synthetic world: expressions, captions, vocabulary and a resolver.

Expressions are generated from the *simulated trajectories* (not from the motion program that
produced them), and every generated expression is re-checked by :func:`resolve`, an independent
interpreter of the grammar below, which must return exactly the expression's targets.

Grammar (all lower-case, no punctuation)::

    the <np> [<motion>]                     appearance / motion   "the red circle", "the shape that stops"
    the <num> <np-plural> [<motion-plural>] several objects       "the two shapes moving right"
    the bigger|smaller <np>                 relation (size)       "the bigger triangle"
    the <np> left of|right of|above|below the <np>   relation    "the circle left of the red square"
    the leftmost|rightmost|highest|lowest <np> at the start      relation at the first frame
    the first shape to move | the last shape to start moving | the first shape to stop   temporal
    <np> = [small|big] [plain|striped|dotted] [<colour>] <shape>|shape

A spatial relation holds (clearly, with a margin) in every frame for the target and never for the
other candidates. ``single_frame_resolvable`` is True iff some single frame, looked at alone (its
appearance and positions, no motion), picks out exactly the target set.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rvosflow.data.synthetic.world import (
    BACKGROUND_COLOURS,
    BACKGROUND_PATTERNS,
    COLOURS,
    DIRECTIONS,
    SHAPES,
    SIZES,
    SPEEDS,
    TEXTURES,
)

ATTRS = ("size", "texture", "colour", "shape")  # phrase order of a noun phrase
DESCRIPTORS = (  # from least to most specific
    (),
    ("shape",),
    ("colour",),
    ("colour", "shape"),
    ("size", "shape"),
    ("texture", "shape"),
    ("size", "colour", "shape"),
    ("texture", "colour", "shape"),
    ("size", "texture", "colour", "shape"),
)
NUMBERS = {2: "two", 3: "three"}
# motion predicate -> (singular phrase, plural phrase)
MOTION_PHRASES = {
    **{f"dir_{d}": (f"moving {d}", f"moving {d}") for d in DIRECTIONS},
    "stops": ("that stops", "that stop"),
    "starts": ("that starts moving", "that start moving"),
    "pauses": ("that stops and moves again", "that stop and move again"),
    "bounces": ("that bounces back", "that bounce back"),
    "still": ("that stays still", "that stay still"),
    "fast": ("moving fast", "moving fast"),
    "slow": ("moving slowly", "moving slowly"),
}
RELATIONS = {"left of": (0, -1), "right of": (0, 1), "above": (1, -1), "below": (1, 1)}
SUPERLATIVES = {"leftmost": (0, -1), "rightmost": (0, 1), "highest": (1, -1), "lowest": (1, 1)}
TEMPORAL = {
    "the first shape to move": "first_move",
    "the last shape to start moving": "last_start",
    "the first shape to stop": "first_stop",
}
CAPTION_MOTION = {
    "still": "staying still",
    "move": "moving {dir} {speed}",
    "stop": "moving {dir} then stopping",
    "start": "staying still then moving {dir}",
    "pause": "moving {dir} then pausing then moving again",
    "bounce": "moving {dir} and bouncing back",
}
_OTHER_WORDS = "the a and of at start over background shape shapes bigger smaller"


def vocabulary() -> list[str]:
    """Every word that can appear in an expression or a caption, sorted."""
    words: set[str] = set(_OTHER_WORDS.split())
    words.update(SHAPES, (s + "s" for s in SHAPES), COLOURS, SIZES, TEXTURES, DIRECTIONS, SPEEDS)
    words.update(BACKGROUND_COLOURS, BACKGROUND_PATTERNS, NUMBERS.values(), SUPERLATIVES)
    for phrases in (*(p for pair in MOTION_PHRASES.values() for p in pair), *RELATIONS, *TEMPORAL,
                    *CAPTION_MOTION.values()):
        words.update(w for w in phrases.split() if not w.startswith("{"))
    return sorted(words)


# ------------------------------------------------------------------------------ motion facts


@dataclass(frozen=True)
class MotionFacts:
    moving: tuple[bool, ...]  # per step t -> t+1
    dirs: frozenset
    pattern: str  # run-length pattern of moving (M) / still (S) steps, e.g. "MS"
    first_move: int | None
    first_stop: int | None  # first still step after having moved
    speed: float  # median moving-step length as a fraction of the frame side per clip


def motion_facts(track: np.ndarray, height: int, width: int) -> MotionFacts:
    d = np.diff(np.asarray(track, dtype=float), axis=0)
    steps = len(d)
    mag = np.abs(d).max(axis=1)
    moving = mag > 1e-6
    dirs = set()
    for (ddx, ddy), m in zip(d, moving):
        if m:
            if abs(ddx) >= abs(ddy):
                dirs.add("right" if ddx > 0 else "left")
            else:
                dirs.add("down" if ddy > 0 else "up")
    pattern = ""
    for m in moving:
        c = "M" if m else "S"
        if not pattern or pattern[-1] != c:
            pattern += c
    idx = np.flatnonzero(moving)
    first_move = int(idx[0]) if len(idx) else None
    first_stop = None
    if first_move is not None:
        still_after = np.flatnonzero(~moving[first_move:])
        first_stop = int(first_move + still_after[0]) if len(still_after) else None
    speed = 0.0
    if len(idx):
        horizontal = abs(d[idx[0], 0]) >= abs(d[idx[0], 1])
        side = width if horizontal else height
        speed = float(np.median(mag[idx])) * steps / side
    return MotionFacts(tuple(bool(m) for m in moving), frozenset(dirs), pattern, first_move, first_stop, speed)


_SPEED_SPLIT = (SPEEDS["slowly"] + SPEEDS["fast"]) / 2


def motion_predicates(f: MotionFacts) -> set[str]:
    out = set()
    if len(f.dirs) == 1:
        out.add(f"dir_{next(iter(f.dirs))}")
    if f.pattern == "MS":
        out.add("stops")
    if f.pattern == "SM":
        out.add("starts")
    if f.pattern == "MSM":
        out.add("pauses")
    if f.pattern == "M" and len(f.dirs) == 2:
        out.add("bounces")
    if f.pattern == "S":
        out.add("still")
    if f.first_move is not None:
        out.add("fast" if f.speed > _SPEED_SPLIT * 1.0 else "slow")
    return out


# ------------------------------------------------------------------------------ world view


class World:
    """What the language talks about: object attributes, tracks and derived motion facts."""

    def __init__(self, objects: list[dict], height: int, width: int):
        self.objects = {i + 1: o for i, o in enumerate(objects)}
        self.ids = sorted(self.objects)
        self.H, self.W = height, width
        self.facts = {k: motion_facts(o["track"], height, width) for k, o in self.objects.items()}
        self.preds = {k: motion_predicates(f) for k, f in self.facts.items()}

    def match(self, desc: dict) -> set[int]:
        return {k for k, o in self.objects.items() if all(o[a] == v for a, v in desc.items())}

    def desc_of(self, k: int, attrs: tuple[str, ...]) -> dict:
        return {a: self.objects[k][a] for a in attrs}

    def with_pred(self, pred: str) -> set[int]:
        return {k for k in self.ids if pred in self.preds[k]}

    def centre(self, k: int) -> np.ndarray:
        return np.asarray(self.objects[k]["track"], dtype=float)

    def relation(self, x: int, a: int, rel: str, strict: bool) -> np.ndarray:
        """bool [T]: x is <rel> a in each frame (strict: with a margin of half the radii)."""
        axis, sign = RELATIONS[rel]
        diff = (self.centre(x)[:, axis] - self.centre(a)[:, axis]) * sign  # > 0 when it holds
        margin = 0.5 * (self.objects[x]["radius"] + self.objects[a]["radius"]) if strict else 0.0
        return diff > margin


def noun_phrase(desc: dict, plural: bool = False) -> str:
    words = [desc[a] for a in ("size", "texture", "colour") if a in desc]
    noun = desc.get("shape", "shape")
    return " ".join(words + [noun + ("s" if plural else "")])


@dataclass(frozen=True)
class Candidate:
    text: str
    targets: frozenset
    kind: str  # colour | appearance | motion | relation | temporal | multi-object (schema.EXPRESSION_KINDS)
    single_frame_resolvable: bool
    first_frame: bool = False  # describes the object as seen in the first frame (Ref-DAVIS sets 0/2)


def candidates(w: World) -> list[Candidate]:
    """Every correct, unambiguous expression this world supports (single- and multi-object)."""
    out: list[Candidate] = []
    n = len(w.ids)

    # appearance, single object: the two least specific unique descriptors
    for k in w.ids:
        found = 0
        for attrs in DESCRIPTORS[1:]:
            if w.match(w.desc_of(k, attrs)) == {k}:
                out.append(Candidate("the " + noun_phrase(w.desc_of(k, attrs)), frozenset({k}), "appearance", True, True))
                found += 1
                if found == 2:
                    break
    # appearance, several objects
    for attr in ("shape", "colour"):
        for value in sorted({o[attr] for o in w.objects.values()}):
            s = w.match({attr: value})
            if 2 <= len(s) < n and len(s) in NUMBERS:
                out.append(Candidate(f"the {NUMBERS[len(s)]} {noun_phrase({attr: value}, True)}", frozenset(s), "appearance", True))
    # motion, single object: least specific descriptor that, with the motion, is unique
    for k in w.ids:
        for pred in sorted(w.preds[k]):
            for attrs in DESCRIPTORS:
                desc = w.desc_of(k, attrs)
                static = w.match(desc)
                if static & w.with_pred(pred) == {k}:
                    text = f"the {noun_phrase(desc)} {MOTION_PHRASES[pred][0]}"
                    out.append(Candidate(text, frozenset({k}), "motion", static == {k}))
                    break
    # motion, several objects
    for pred in MOTION_PHRASES:
        s = w.with_pred(pred)
        if 2 <= len(s) < n and len(s) in NUMBERS:
            text = f"the {NUMBERS[len(s)]} shapes {MOTION_PHRASES[pred][1]}"
            out.append(Candidate(text, frozenset(s), "motion", False))
    # relation: size within a shape
    for shape in SHAPES:
        s = sorted(w.match({"shape": shape}))
        if len(s) == 2 and w.objects[s[0]]["size"] != w.objects[s[1]]["size"]:
            big = s[0] if w.objects[s[0]]["size"] == "big" else s[1]
            small = s[1] if big == s[0] else s[0]
            out.append(Candidate(f"the bigger {shape}", frozenset({big}), "relation", True, True))
            out.append(Candidate(f"the smaller {shape}", frozenset({small}), "relation", True, True))
    # relation: spatial, holding in every frame
    anchors = {}
    for a in w.ids:
        for attrs in DESCRIPTORS[1:]:
            if w.match(w.desc_of(a, attrs)) == {a}:
                anchors[a] = w.desc_of(a, attrs)
                break
    for a, adesc in anchors.items():
        for k in w.ids:
            if k == a:
                continue
            for rel in RELATIONS:
                if not w.relation(k, a, rel, strict=True).all():
                    continue
                for attrs in DESCRIPTORS:
                    desc = w.desc_of(k, attrs)
                    others = w.match(desc) - {a, k}
                    if any(w.relation(x, a, rel, strict=False).any() for x in others):
                        continue
                    cands = w.match(desc) - {a}
                    sfr = any(
                        {x for x in cands if w.relation(x, a, rel, strict=False)[t]} == {k}
                        for t in range(len(w.centre(k)))
                    )
                    text = f"the {noun_phrase(desc)} {rel} the {noun_phrase(adesc)}"
                    out.append(Candidate(text, frozenset({k}), "relation", sfr, True))
                    break
    # relation at the first frame: superlatives among a group
    for sup, (axis, sign) in SUPERLATIVES.items():
        for k in w.ids:
            for attrs in DESCRIPTORS:  # least specific group in which k is clearly the extreme
                group = w.match(w.desc_of(k, attrs))
                if len(group) < 2:
                    continue
                vals = {x: w.centre(x)[0, axis] * sign for x in group}
                best = max(vals, key=vals.get)
                rest = max(v for x, v in vals.items() if x != best)
                if best == k and vals[k] - rest >= 2.0:
                    text = f"the {sup} {noun_phrase(w.desc_of(k, attrs))} at the start"
                    out.append(Candidate(text, frozenset({k}), "relation", True, True))
                    break
    # temporal
    movers = {k: f.first_move for k, f in w.facts.items() if f.first_move is not None}
    if len(movers) >= 2:
        order = sorted(movers.values())
        first = [k for k, v in movers.items() if v == order[0]]
        if len(first) == 1 and order[1] > order[0]:
            out.append(Candidate("the first shape to move", frozenset(first), "temporal", n == 1))
        last = [k for k, v in movers.items() if v == order[-1]]
        if len(last) == 1 and order[-1] > order[-2] and order[-1] > 0:
            out.append(Candidate("the last shape to start moving", frozenset(last), "temporal", n == 1))
    stoppers = {k: f.first_stop for k, f in w.facts.items() if f.first_stop is not None}
    if len(stoppers) >= 2:
        order = sorted(stoppers.values())
        first = [k for k, v in stoppers.items() if v == order[0]]
        if len(first) == 1 and order[1] > order[0]:
            out.append(Candidate("the first shape to stop", frozenset(first), "temporal", False))

    return _verified(out, w)


def colour_candidates(w: World) -> list[Candidate]:
    """The default tier's expressions: what a colour alone resolves.

    A single object of a colour no other object has: "the red shape" or "the red circle" (kind
    ``colour``); a same-colour pair, when another object is there too: "the two red shapes"
    (kind ``multi-object``). Every target therefore leaves a non-target object in its video.
    """
    out: list[Candidate] = []
    for colour in sorted({o["colour"] for o in w.objects.values()}):
        s = w.match({"colour": colour})
        if len(s) == 1:
            (k,) = s
            for attrs in (("colour",), ("colour", "shape")):
                out.append(Candidate("the " + noun_phrase(w.desc_of(k, attrs)), frozenset(s), "colour", True, True))
        elif len(s) in NUMBERS and len(s) < len(w.ids):
            out.append(Candidate(f"the {NUMBERS[len(s)]} {noun_phrase({'colour': colour}, True)}", frozenset(s),
                                 "multi-object", True))
    return _verified(out, w)


def candidates_for(w: World, tier: str) -> list[Candidate]:
    """Every expression of a tier's grammar that this world supports."""
    return colour_candidates(w) if tier == "default" else candidates(w)


def select_colour(cands: list[Candidate], rng: np.random.Generator) -> list[Candidate]:
    """Default tier: one expression per target set (a random one of its phrasings)."""
    by_target: dict[frozenset, list[Candidate]] = {}
    for c in cands:
        by_target.setdefault(c.targets, []).append(c)
    return [group[int(rng.integers(len(group)))] for group in by_target.values()]


def _verified(out: list[Candidate], w: World) -> list[Candidate]:
    """De-duplicate texts (keep the first) and re-verify each with the independent resolver."""
    seen: dict[str, Candidate] = {}
    for c in out:
        if c.text in seen:
            continue
        got = resolve(c.text, w)
        if got != set(c.targets):
            raise AssertionError(f"expression {c.text!r}: generated {set(c.targets)}, resolves to {got}")
        seen[c.text] = c
    return list(seen.values())


def select(cands: list[Candidate], rng: np.random.Generator, k: int, non_sfr_share: float = 0.6) -> list[Candidate]:
    """Pick up to k expressions: mostly not single-frame resolvable, kinds balanced."""
    pool = list(cands)
    rng.shuffle(pool)
    chosen: list[Candidate] = []
    quota = int(np.ceil(non_sfr_share * k))
    while pool and len(chosen) < k:
        n_non = sum(not c.single_frame_resolvable for c in chosen)
        want_sfr = n_non >= quota
        sub = [c for c in pool if c.single_frame_resolvable == want_sfr] or pool
        kinds_used = {kd: sum(c.kind == kd for c in chosen) for kd in {c.kind for c in sub}}
        least = min(kinds_used.values())
        sub = [c for c in sub if kinds_used[c.kind] == least]
        c = sub[0]
        chosen.append(c)
        pool.remove(c)
    return chosen


def caption(objects: list[dict], background: tuple[str, str]) -> str:
    parts = []
    for o in objects:
        motion = CAPTION_MOTION[o["motion"]].format(dir=o["direction"], speed=o["speed"])
        parts.append(f"a {o['size']} {o['texture']} {o['colour']} {o['shape']} {motion}")
    colour, pattern = background
    return " and ".join(parts) + f" over a {pattern} {colour} background"


# ------------------------------------------------------------------------------ resolver


_ADJ = {"size": set(SIZES), "texture": set(TEXTURES), "colour": set(COLOURS)}


def _parse_np(words: list[str], plural: bool = False) -> tuple[dict, list[str]]:
    desc: dict = {}
    i = 0
    for attr in ("size", "texture", "colour"):
        if i < len(words) and words[i] in _ADJ[attr]:
            desc[attr] = words[i]
            i += 1
    if i >= len(words):
        raise ValueError(f"no noun in {' '.join(words)!r}")
    noun = words[i]
    if plural:
        if not noun.endswith("s"):
            raise ValueError(f"expected a plural noun, got {noun!r}")
        noun = noun[:-1]
    if noun != "shape":
        if noun not in SHAPES:
            raise ValueError(f"unknown noun {noun!r}")
        desc["shape"] = noun
    return desc, words[i + 1:]


def resolve(text: str, w: World) -> set[int]:
    """Interpret an expression of the closed grammar in a world; returns the referred object ids.

    Raises ValueError when the text is not in the grammar or does not refer to anything uniquely.
    """
    if text in TEMPORAL:
        key = TEMPORAL[text]
        if key == "first_stop":
            vals = {k: f.first_stop for k, f in w.facts.items() if f.first_stop is not None}
            best = min(vals.values())
        else:
            vals = {k: f.first_move for k, f in w.facts.items() if f.first_move is not None}
            best = min(vals.values()) if key == "first_move" else max(vals.values())
        out = {k for k, v in vals.items() if v == best}
        if len(out) != 1 or len(vals) < 2:
            raise ValueError(f"{text!r} is ambiguous")
        return out
    words = text.split()
    if words[0] != "the":
        raise ValueError(f"expression must start with 'the': {text!r}")
    words = words[1:]
    if words[0] in ("bigger", "smaller"):
        desc, rest = _parse_np(words[1:])
        group = w.match(desc)
        if rest or len(group) != 2 or len({w.objects[k]["size"] for k in group}) != 2:
            raise ValueError(f"{text!r}: needs exactly two objects of different sizes")
        want = "big" if words[0] == "bigger" else "small"
        return {k for k in group if w.objects[k]["size"] == want}
    if words[0] in SUPERLATIVES:
        desc, rest = _parse_np(words[1:])
        if rest != ["at", "the", "start"]:
            raise ValueError(f"{text!r}: superlative needs 'at the start'")
        axis, sign = SUPERLATIVES[words[0]]
        group = w.match(desc)
        vals = {x: w.centre(x)[0, axis] * sign for x in group}
        best = max(vals, key=vals.get)
        if len(group) < 2 or sorted(vals.values())[-2] > vals[best] - 2.0:
            raise ValueError(f"{text!r} is ambiguous")
        return {best}
    if words[0] in ("two", "three"):
        count = 2 if words[0] == "two" else 3
        desc, rest = _parse_np(words[1:], plural=True)
        s = w.match(desc)
        if rest:
            phrase = " ".join(rest)
            preds = [p for p, (_, pl) in MOTION_PHRASES.items() if pl == phrase]
            if not preds:
                raise ValueError(f"unknown motion phrase {phrase!r}")
            s = s & w.with_pred(preds[0])
        if len(s) != count:
            raise ValueError(f"{text!r} matches {len(s)} objects")
        return s
    desc, rest = _parse_np(words)
    s = w.match(desc)
    rest_s = " ".join(rest)
    for rel in RELATIONS:
        if rest_s.startswith(rel + " the "):
            adesc, tail = _parse_np(rest_s[len(rel) + 5:].split())
            anchor = w.match(adesc)
            if tail or len(anchor) != 1:
                raise ValueError(f"{text!r}: the anchor must be unique")
            (a,) = anchor
            holds = {x for x in s - {a} if w.relation(x, a, rel, strict=True).all()}
            touches = {x for x in s - {a} if w.relation(x, a, rel, strict=False).any()}
            if len(holds) != 1 or touches != holds:
                raise ValueError(f"{text!r} is ambiguous")
            return holds
    if rest_s:
        preds = [p for p, (sg, _) in MOTION_PHRASES.items() if sg == rest_s]
        if not preds:
            raise ValueError(f"unknown motion phrase {rest_s!r}")
        s = s & w.with_pred(preds[0])
    if len(s) != 1:
        raise ValueError(f"{text!r} matches {len(s)} objects")
    return s
