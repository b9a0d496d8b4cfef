"""Stroke augmentation: what a drawing could have looked like, applied to packed strokes between gather and render.

Pure functions of packed arrays (qdraw.batch.StrokeBatch), compiled (numba, GIL released), and deterministic: every
random number is splitmix64's stream from a hash of (seed, epoch, item key), so an item is augmented alike whatever
the batch, the thread count, the backend or a resume. The horizontal flip keeps the exact coin the loaders always
used (the top bit of ``mix(mix(mix(seed) ^ epoch) ^ key)``), so with only the flip on, batches are those of the
earlier draw-kernel flip, pixel for pixel. Per drawing, in this order:

1. **stroke dropout** (``stroke_drop`` = p): each stroke is dropped with probability p; when that would drop every
   stroke, the one with the most points stays (the first of equals), so a drawing is never emptied.
2. **random affine** about the drawing's bounding-box centre c: ``q = A (x - c)`` with
   ``A = R(rotate) [[1, shear], [0, 1]] diag(s sqrt(a), s / sqrt(a))``, scale s in [1 - scale, 1 + scale], aspect
   a in [1 - aspect, 1 + aspect], rotation in +-rotate degrees, shear in +-shear, each uniform. A result wider or
   taller than the frame (255) is shrunk uniformly to fit; it is centred on c moved by ``translate * u * 127.5`` per
   axis (u uniform in [-1, 1]), then shifted back inside the frame where it sticks out, and rounded half up. So
   points always stay in the 0..255 frame. (The raster centres every drawing on its bounding box, so a translation
   changes only what point models see; scale, aspect, rotation and shear change both.)
3. **point jitter** (``jitter`` = j frame units): each point moves by a uniform offset in [-j, j] per axis, rounded
   half up and clipped to the frame.
4. **time-scale jitter** (raw data, ``time_scale`` = f): a drawing's times are multiplied by a factor uniform in
   [1 - f, 1 + f] and rounded half up (slower or faster drawing, same order).
5. **horizontal flip** (``hflip`` = probability): x becomes ``xmin + xmax - x`` (mirrored about its bounding box,
   exact in the integer frame); drawn iff ``u >= 1 - hflip`` with u the flip hash's top 53 bits as a unit float,
   which at 0.5 is the hash's top bit, the loaders' flip since the first release.

A drawing whose parameters are all 0 is copied unchanged. Config: :meth:`Augment.from_config` takes a preset name
(``none``, ``light``, ``medium``, ``strong``) or a mapping of the fields below (``{rotate: 10, stroke_drop: 0.1}``).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

import numpy as np
from numba import njit

from .batch import StrokeBatch
from .store import GAMMA, mix, mix64, unit

# Index of each field in the parameter vector the kernels read (Augment.params), in field order.
HFLIP, SCALE, ASPECT, ROTATE, SHEAR, TRANSLATE, STROKE_DROP, JITTER, TIME_SCALE = range(9)
# Salts that keep each transform's stream apart from the others' (and from the flip coin, the item hash itself).
_DROP, _AFFINE, _JITTER, _TIME = (np.uint64(0xD1B54A32D192ED03), np.uint64(0xAEF17502108EF2D9),
                                  np.uint64(0x8CB92BA72F3D8DD7), np.uint64(0xDB4F0B9175AE2165))


@dataclass(frozen=True)
class Augment:
    """Strengths of the stroke augmentations (module docstring); a callable transform ``(batch, seed, epoch)``.

    Each field is a strength, 0 = off: hflip a probability, scale / aspect / shear / translate fractions, rotate in
    degrees, stroke_drop a probability, jitter in frame units (0..255), time_scale a fraction.
    """

    hflip: float = 0.0
    scale: float = 0.0
    aspect: float = 0.0
    rotate: float = 0.0
    shear: float = 0.0
    translate: float = 0.0
    stroke_drop: float = 0.0
    jitter: float = 0.0
    time_scale: float = 0.0

    def __post_init__(self) -> None:
        bounded = {"hflip": 1, "scale": 0.9, "aspect": 0.9, "rotate": 180, "shear": 2, "translate": 1,
                   "stroke_drop": 0.9, "jitter": 32, "time_scale": 0.9}
        for name, top in bounded.items():
            value = getattr(self, name)
            if not (isinstance(value, int | float) and 0 <= value <= top):
                raise ValueError(f"augment {name} must be a number in [0, {top}], got {value!r}")

    @classmethod
    def from_config(cls, value: "str | dict | Augment | None", hflip: float = 0.0) -> "Augment":
        """An Augment from a preset name or a mapping of fields (YAML / flag value); ``hflip`` fills the flip
        probability unless the mapping sets it (train.py passes 0.5 for --hflip)."""
        if isinstance(value, Augment):
            return value
        if value is None or isinstance(value, str):
            name = value or "none"
            if name not in PRESETS:
                raise ValueError(f"unknown augment preset {name!r}; choose from {', '.join(PRESETS)} or give a "
                                 f"mapping of {', '.join(f.name for f in fields(cls))}")
            return replace(PRESETS[name], hflip=hflip)
        if not isinstance(value, dict):
            raise ValueError(f"augment must be a preset name or a mapping, got {value!r}")
        unknown = sorted(set(value) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown augment field(s) {', '.join(unknown)}; known: "
                             f"{', '.join(f.name for f in fields(cls))}")
        return cls(**({"hflip": hflip} | value))

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @property
    def params(self) -> np.ndarray:
        """float64 (9,) in field order: what the compiled kernels read."""
        return np.array([getattr(self, f.name) for f in fields(self)], np.float64)

    def __call__(self, batch: StrokeBatch, seed: int, epoch: int) -> StrokeBatch:
        xy, t, strokes, drawings = augment_arrays(batch.xy, batch.t, batch.strokes, batch.drawings, batch.keys,
                                                  seed, epoch, self.params)
        return batch.with_points(xy, t, strokes, drawings)


# Presets: strengths that keep a drawing recognisable (checked by eye with visualize.py --augment NAME).
PRESETS = {
    "none": Augment(),
    "light": Augment(scale=0.1, aspect=0.1, rotate=5, shear=0.1, translate=0.2, jitter=1, time_scale=0.1),
    "medium": Augment(scale=0.15, aspect=0.2, rotate=10, shear=0.2, translate=0.5, stroke_drop=0.05, jitter=1.5,
                      time_scale=0.2),
    "strong": Augment(scale=0.25, aspect=0.3, rotate=15, shear=0.3, translate=1.0, stroke_drop=0.1, jitter=2,
                      time_scale=0.3),
}


def parse_augment(text: str) -> str | dict[str, float]:
    """The --augment flag's value: a preset name, or ``name=value,...`` per transform (checked by from_config)."""
    if "=" not in text:
        return text.strip()
    out = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise ValueError(f"--augment {text!r}: {part!r} is not name=number") from None
    return out


def flip_bits(seed: int, epoch: int, keys: np.ndarray) -> np.ndarray:
    """The flip coin at probability 0.5 per item, in numpy: bool array like keys (the kernels draw the same)."""
    keys = np.asarray(keys, np.int64).astype(np.uint64)
    base = mix64(mix64(np.uint64(seed)) ^ np.uint64(epoch))
    return (mix64(base ^ keys) >> np.uint64(63)).astype(bool)


def augment_arrays(xy: np.ndarray, t: np.ndarray | None, strokes: np.ndarray, drawings: np.ndarray,
                   keys: np.ndarray, seed: int, epoch: int,
                   params: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray]:
    """The augmented packed arrays (new arrays; the inputs are not changed). keys: int64 (B,) item keys."""
    keys = np.ascontiguousarray(keys, np.int64)
    if len(keys) != len(drawings) - 1 or seed < 0 or epoch < 0:
        raise ValueError("augment needs one key per drawing and seed, epoch >= 0")
    t_in = np.zeros(0, np.int32) if t is None else np.ascontiguousarray(t, np.int32)
    out = _augment_kernel(np.ascontiguousarray(xy, np.uint8), t_in, np.ascontiguousarray(strokes, np.int64),
                          np.ascontiguousarray(drawings, np.int64), keys, np.uint64(seed), np.uint64(epoch),
                          np.ascontiguousarray(params, np.float64))
    return out[0], (None if t is None else out[1]), out[2], out[3]


def affine(xy: np.ndarray, strokes: np.ndarray, drawings: np.ndarray, matrices: np.ndarray,
           shifts: np.ndarray) -> np.ndarray:
    """Apply an explicit affine map per drawing, as step 2 does with its random draws: ``A (x - c)`` fitted into
    the frame, centred on ``c + shift`` and kept inside it, rounded half up. matrices float (B, 2, 2), shifts float
    (B, 2) in frame units; returns the new uint8 (P, 2). For tests and for users composing transforms by hand."""
    out = np.array(xy, np.uint8, copy=True)
    m = np.ascontiguousarray(matrices, np.float64).reshape(-1, 4)
    sh = np.ascontiguousarray(shifts, np.float64).reshape(-1, 2)
    if len(m) != len(drawings) - 1 or len(sh) != len(m):
        raise ValueError("one 2x2 matrix and one shift per drawing")
    for b in range(len(m)):
        _affine_one(out, strokes[drawings[b]], strokes[drawings[b + 1]], m[b, 0], m[b, 1], m[b, 2], m[b, 3],
                    sh[b, 0], sh[b, 1])
    return out


@njit(cache=True, nogil=True)
def _affine_one(xy, p0, p1, a00, a01, a10, a11, sx, sy):
    """Map points p0..p1-1 of xy in place: A (x - c), fitted into 255, centred at c + (sx, sy), kept inside."""
    if p1 <= p0:
        return
    xmin, xmax, ymin, ymax = 255, 0, 255, 0
    for p in range(p0, p1):
        xmin, xmax = min(xmin, xy[p, 0]), max(xmax, xy[p, 0])
        ymin, ymax = min(ymin, xy[p, 1]), max(ymax, xy[p, 1])
    cx, cy = (np.float64(xmin) + xmax) / 2, (np.float64(ymin) + ymax) / 2
    # two passes over the points (bounds, then placement) instead of a temporary array per drawing
    lox, hix, loy, hiy = np.inf, -np.inf, np.inf, -np.inf
    for p in range(p0, p1):
        dx, dy = xy[p, 0] - cx, xy[p, 1] - cy
        qx, qy = a00 * dx + a01 * dy, a10 * dx + a11 * dy
        lox, hix, loy, hiy = min(lox, qx), max(hix, qx), min(loy, qy), max(hiy, qy)
    span = max(hix - lox, hiy - loy)
    fit = 255.0 / span if span > 255.0 else 1.0
    # centre of the mapped box at the target, then moved back inside the frame where it sticks out
    ox = cx + sx - fit * (lox + hix) / 2
    oy = cy + sy - fit * (loy + hiy) / 2
    ox += max(0.0, -(ox + fit * lox)) - max(0.0, ox + fit * hix - 255.0)
    oy += max(0.0, -(oy + fit * loy)) - max(0.0, oy + fit * hiy - 255.0)
    for p in range(p0, p1):
        dx, dy = xy[p, 0] - cx, xy[p, 1] - cy
        qx, qy = a00 * dx + a01 * dy, a10 * dx + a11 * dy
        xy[p, 0] = np.uint8(min(max(np.floor(ox + fit * qx + 0.5), 0.0), 255.0))
        xy[p, 1] = np.uint8(min(max(np.floor(oy + fit * qy + 0.5), 0.0), 255.0))


@njit(cache=True, nogil=True, inline="always")
def _uniform(state):
    """(next state, a float uniform in [-1, 1))."""
    return state + GAMMA, 2.0 * unit(mix(state)) - 1.0


@njit(cache=True, nogil=True)
def _keep_strokes(strokes, drawings, keys, base, drop):
    """Bool (S,): the strokes stroke dropout keeps (never all of a drawing's)."""
    keep = np.ones(len(strokes) - 1, np.bool_)
    if drop <= 0:
        return keep
    for b in range(len(drawings) - 1):
        state = mix(base ^ np.uint64(keys[b])) ^ _DROP
        s0, s1 = drawings[b], drawings[b + 1]
        best, kept = s0, 0
        for s in range(s0, s1):
            u = unit(mix(state))
            state += GAMMA
            keep[s] = u >= drop
            kept += keep[s]
            if strokes[s + 1] - strokes[s] > strokes[best + 1] - strokes[best]:
                best = s
        if kept == 0 and s1 > s0:
            keep[best] = True
    return keep


@njit(cache=True, nogil=True)
def _augment_kernel(xy, t, strokes, drawings, keys, seed, epoch, p):
    with_t = len(t) == len(xy)
    base = mix(mix(seed) ^ epoch)  # the loaders' flip key per (seed, epoch)
    keep = _keep_strokes(strokes, drawings, keys, base, p[STROKE_DROP])
    n_s, n_p = 0, 0
    for s in range(len(strokes) - 1):
        if keep[s]:
            n_s += 1
            n_p += strokes[s + 1] - strokes[s]
    oxy = np.empty((n_p, 2), np.uint8)
    ot = np.empty(n_p if with_t else 0, np.int32)
    ostrokes = np.empty(n_s + 1, np.int64)
    odrawings = np.empty(len(drawings), np.int64)
    ostrokes[0], odrawings[0] = 0, 0
    so, po = 0, 0
    do_affine = p[SCALE] > 0 or p[ASPECT] > 0 or p[ROTATE] > 0 or p[SHEAR] > 0 or p[TRANSLATE] > 0
    for b in range(len(drawings) - 1):
        h = mix(base ^ np.uint64(keys[b]))
        p_start = po
        for s in range(drawings[b], drawings[b + 1]):
            if keep[s]:
                a, e = strokes[s], strokes[s + 1]
                oxy[po:po + e - a] = xy[a:e]
                if with_t:
                    ot[po:po + e - a] = t[a:e]
                po += e - a
                so += 1
                ostrokes[so] = po
        odrawings[b + 1] = so
        if do_affine:
            state = h ^ _AFFINE
            state, us = _uniform(state)
            state, ua = _uniform(state)
            state, ur = _uniform(state)
            state, uh = _uniform(state)
            state, ux = _uniform(state)
            state, uy = _uniform(state)
            scale, aspect = 1.0 + p[SCALE] * us, 1.0 + p[ASPECT] * ua
            theta, shear = math.radians(p[ROTATE] * ur), p[SHEAR] * uh
            mx, my = scale * math.sqrt(aspect), scale / math.sqrt(aspect)
            c, sn = math.cos(theta), math.sin(theta)
            # R(theta) @ [[1, shear], [0, 1]] @ diag(mx, my)
            _affine_one(oxy, p_start, po, c * mx, (c * shear - sn) * my, sn * mx, (sn * shear + c) * my,
                        p[TRANSLATE] * ux * 127.5, p[TRANSLATE] * uy * 127.5)
        if p[JITTER] > 0:
            state = h ^ _JITTER
            for q in range(p_start, po):
                state, ux = _uniform(state)
                state, uy = _uniform(state)
                oxy[q, 0] = np.uint8(min(max(np.floor(oxy[q, 0] + p[JITTER] * ux + 0.5), 0.0), 255.0))
                oxy[q, 1] = np.uint8(min(max(np.floor(oxy[q, 1] + p[JITTER] * uy + 0.5), 0.0), 255.0))
        if with_t and p[TIME_SCALE] > 0:
            state, uf = _uniform(h ^ _TIME)
            f = 1.0 + p[TIME_SCALE] * uf
            for q in range(p_start, po):
                ot[q] = np.int32(np.floor(ot[q] * f + 0.5))
        if p[HFLIP] > 0 and unit(h) >= 1.0 - p[HFLIP] and po > p_start:
            xmin, xmax = 255, 0
            for q in range(p_start, po):
                xmin, xmax = min(xmin, oxy[q, 0]), max(xmax, oxy[q, 0])
            for q in range(p_start, po):
                oxy[q, 0] = np.uint8(np.int64(xmin) + xmax - oxy[q, 0])
    return oxy, ot, ostrokes, odrawings
