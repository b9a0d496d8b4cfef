"""Procedural hand-drawn doodles in Google's raw Quick, Draw! format, so the whole toolkit runs with no download.

Each class is a small template function that returns strokes in unit coordinates (roughly [-1, 1], y down) with its
own random variations: stroke count, start corner, pen direction, over- or undershoot where a closed shape meets
itself. :func:`draw` then makes the template look hand-made (shuffled or reversed strokes, random rotation, scale,
aspect, shear and position, low-frequency wobble plus pixel jitter) and samples it the way a browser does: points
every ~12-22 ms along the path, slower at the ends of a stroke, with pauses between strokes. The output is Google's raw
layout, a list of strokes ``[[x...], [y...], [t...]]`` in canvas pixels with t in ms from the first point. Classes
overlap on purpose (circle / spiral / cloud, zigzag / wave, star / sun, square / house), so a small CNN learns them
well but not perfectly. All randomness comes from an explicit ``np.random.Generator``.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import orjson

from .atomic import atomic_write

TAU = 2 * math.pi
Template = list[np.ndarray]  # strokes as (k, 2) float arrays in unit coordinates, y down

# Key ids: pack (seed, class, index) into one integer, then scramble it with a bijection of [0, _KEY_SPAN) so ids look
# random but never collide. _KEY_MUL is coprime with _KEY_SPAN = 2^15 * 3^2 * 5^15 (tests check it).
_KEY_SPAN = 9 * 10**15
_KEY_MUL = 6_364_136_223_846_793
_KEY_ADD = 1_442_695_040_888_963
_MAX_INDEX = 10**9
_SEED_SLOTS = _KEY_SPAN // (100 * _MAX_INDEX)

# Rough share of Google's country codes; only used to make records look like the real files.
_COUNTRIES = ["US", "GB", "DE", "RU", "CA", "BR", "AU", "FR", "PL", "KR", "TH", "SE", "IT", "ID", "JP"]
_COUNTRY_CDF = np.cumsum([40, 8, 6, 6, 5, 5, 4, 4, 4, 4, 3, 3, 3, 3, 2]) / 100.0
_EPOCH = np.datetime64("2017-01-15T00:00:00", "us")
_BATCH = 128  # drawings rendered together; fixed, so that record i never depends on n


def _sign(rng: np.random.Generator) -> float:
    return 1.0 if rng.random() < 0.5 else -1.0  # rng.choice costs ~15 us a call, this ~0.5 us


def _ramp(a: float, b: float, n: int) -> np.ndarray:
    return a + (b - a) / (n - 1) * np.arange(n)  # np.linspace has ~10 us of Python overhead


def _xy(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(n, 2) points from coordinate arrays (cheaper than np.stack(..., axis=1))."""
    return np.array([x, y]).T


def _arc(cx: float, cy: float, rx: float, ry: float, a0: float, span: float) -> np.ndarray:
    """Elliptic arc from angle a0 over span radians, dense enough (~24 points a turn) to stay round when resampled."""
    a = a0 + _ramp(0.0, span, max(6, int(24 * abs(span) / TAU) + 2))
    return _xy(cx + rx * np.cos(a), cy + ry * np.sin(a))


def _ring(rng: np.random.Generator, cx: float = 0.0, cy: float = 0.0, rx: float = 1.0, ry: float = 1.0) -> np.ndarray:
    """One-stroke ellipse from a random start, either direction, stopping a little short of or past the start."""
    span = TAU * rng.uniform(0.95, 1.12) * _sign(rng)
    return _arc(cx, cy, rx, ry, rng.uniform(0, TAU), span)


def _loop(rng: np.random.Generator, pts: np.ndarray) -> np.ndarray:
    """Closed polygon as one stroke from a random vertex in a random direction, with over- or undershoot."""
    pts = np.asarray(pts, dtype=float)
    if rng.random() < 0.5:
        pts = pts[::-1]
    pts = np.roll(pts, -int(rng.integers(len(pts))), axis=0)
    f = rng.uniform(-0.1, 0.25)
    end = pts[0] + f * (pts[1] - pts[0]) if f > 0 else pts[0] - f * (pts[-1] - pts[0])
    return np.vstack([pts, pts[:1], end[None]]) if f > 0 else np.vstack([pts, end[None]])


def _sides(pts: np.ndarray) -> Template:
    """Closed polygon drawn one side per stroke."""
    return [pts[[i, (i + 1) % len(pts)]] for i in range(len(pts))]


def _rot(pts: np.ndarray, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return pts @ np.array([[c, s], [-s, c]])


def _circle(rng: np.random.Generator) -> Template:
    if rng.random() < 0.1:  # two half circles, as some players draw
        a0 = rng.uniform(0, TAU)
        return [_arc(0, 0, 1, 1, a0, math.pi * 1.05), _arc(0, 0, 1, 1, a0, -math.pi * 1.05)]
    return [_ring(rng)]


def _square(rng: np.random.Generator) -> Template:
    c = np.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]]) + rng.normal(0, 0.06, (4, 2))
    r = rng.random()
    if r < 0.6:
        return [_loop(rng, c)]
    return [c[[0, 1, 2]], c[[2, 3, 0]]] if r < 0.85 else _sides(c)


def _triangle(rng: np.random.Generator) -> Template:
    c = np.array([[rng.normal(0, 0.3), -1.0], [1.0, 0.8], [-1.0, 0.8]]) + rng.normal(0, 0.06, (3, 2))
    return [_loop(rng, c)] if rng.random() < 0.75 else _sides(c)


def _star(rng: np.random.Generator) -> Template:
    a = -math.pi / 2 + np.arange(5) * TAU / 5 + rng.normal(0, 0.06, 5)
    outer = _xy(np.cos(a), np.sin(a))
    if rng.random() < 0.6:  # pentagram in one stroke
        return [_loop(rng, outer[[0, 2, 4, 1, 3]])]
    inner = rng.uniform(0.3, 0.5) * _rot(outer, math.pi / 5)  # halfway to the next point
    return [_loop(rng, np.hstack([outer, inner]).reshape(10, 2))]


def _line(rng: np.random.Generator) -> Template:
    u = _ramp(-1.6, 1.6, 6)  # real raw lines span ~570 px, about twice the other shapes
    pts = _rot(_xy(u, rng.normal(0, 0.06) * (1 - u**2)), rng.uniform(0, math.pi))
    return [pts[:3], pts[2:]] if rng.random() < 0.1 else [pts]


def _zigzag(rng: np.random.Generator) -> Template:
    k = int(rng.integers(4, 9))
    y = rng.uniform(0.2, 0.6) * (np.arange(k) % 2 * 2.0 - 1.0) + rng.normal(0, 0.05, k)
    return [_xy(_ramp(-1.3, 1.3, k) + rng.normal(0, 0.03, k), y)]


def _spiral(rng: np.random.Generator) -> Template:
    turns = rng.uniform(1.5, 3.5)
    a = _ramp(0.0, turns * TAU, int(24 * turns))
    r = (a / a[-1]) ** rng.uniform(0.8, 1.2)
    pts = _xy(r * np.cos(a), r * np.sin(a) * _sign(rng))
    return [pts if rng.random() < 0.75 else pts[::-1]]


def _house(rng: np.random.Generator) -> Template:
    w, top = rng.uniform(0.6, 1.0), rng.uniform(-0.3, 0.1)
    body = np.array([[-w, top], [-w, 1.0], [w, 1.0], [w, top]])
    apex = np.array([[-w, top], [rng.normal(0, 0.1), -1.0], [w, top]])
    strokes = [_loop(rng, body), apex] if rng.random() < 0.5 else [body, np.vstack([apex, apex[:1]])]
    if rng.random() < 0.6:  # door
        dx, dw, dy = rng.normal(0, 0.2) * w, rng.uniform(0.12, 0.25), rng.uniform(0.3, 0.6)
        strokes.append(np.array([[dx - dw, 1.0], [dx - dw, dy], [dx + dw, dy], [dx + dw, 1.0]]))
    if rng.random() < 0.35:  # window
        cx, cy, s = 0.5 * _sign(rng) * w, top + 0.3, rng.uniform(0.1, 0.18)
        strokes.append(_loop(rng, np.array([[cx - s, cy - s], [cx + s, cy - s], [cx + s, cy + s], [cx - s, cy + s]])))
    return strokes


def _smiley(rng: np.random.Generator) -> Template:
    strokes = [_ring(rng)]
    for ex in (-0.35, 0.35):
        x, y = ex + rng.normal(0, 0.05), -0.3 + rng.normal(0, 0.05)
        r = rng.random()
        if r < 0.3:  # a single tap
            strokes.append(np.array([[x, y]]))
        elif r < 0.7:
            strokes.append(np.array([[x, y - 0.08], [x, y + 0.08]]))
        else:
            strokes.append(_ring(rng, x, y, 0.12, 0.12))
    half = rng.uniform(0.25, 0.4) * math.pi
    strokes.append(_arc(0, rng.normal(0.0, 0.08), 0.55, 0.5, math.pi / 2 + half, -2 * half))
    return strokes


def _arrow(rng: np.random.Generator) -> Template:
    h, w = rng.uniform(0.3, 0.55), rng.uniform(0.5, 0.9)
    tip = np.array([1.0, 0.0])
    left, right = np.array([1 - h, -h * w]), np.array([1 - h, h * w])
    r = rng.random()
    if r < 0.4:
        strokes = [np.array([[-1.0, 0.0], tip]), np.array([left, tip, right])]
    elif r < 0.7:
        strokes = [np.array([[-1.0, 0.0], tip, left]), np.array([tip, right])]
    else:
        strokes = [np.array([[-1.0, 0.0], tip]), np.array([tip, left]), np.array([tip, right])]
    angle = rng.uniform(0, TAU)
    return [_rot(s, angle) for s in strokes]


def _cross(rng: np.random.Generator) -> Template:
    cy = rng.uniform(-0.5, 0.0) if rng.random() < 0.3 else 0.0  # sometimes a Latin cross
    arm = rng.uniform(0.6, 1.0)
    strokes = [np.array([[0.0, -1.0], [0.0, 1.0]]), np.array([[-arm, cy], [arm, cy]])]
    angle = (0.0 if rng.random() < 0.5 else math.pi / 4) + rng.normal(0, 0.1)
    return [_rot(s + rng.normal(0, 0.04, s.shape), angle) for s in strokes]


def _wave(rng: np.random.Generator) -> Template:
    x = _ramp(-1.0, 1.0, 48)
    y = rng.uniform(0.2, 0.5) * np.sin(rng.uniform(1.2, 3.2) * math.pi * (x + 1) + rng.uniform(0, TAU))
    return [_xy(x, y)]


def _cloud(rng: np.random.Generator) -> Template:
    k = int(rng.integers(5, 10))
    a = rng.uniform(0, TAU) + _ramp(0.0, TAU * rng.uniform(0.97, 1.08), 12 * k)
    r = 0.75 + rng.uniform(0.15, 0.3) * np.abs(np.sin(k * a / 2))  # scallops with cusps between the lobes
    return [_xy(r * np.cos(a), 0.65 * r * np.sin(a)) * [_sign(rng), _sign(rng)]]


def _heart(rng: np.random.Generator) -> Template:
    t = _ramp(0.0, math.pi, 28)
    dip = rng.uniform(3.0, 7.0)  # depth of the notch between the lobes (the classic curve uses 5)
    half = _xy(np.sin(t) ** 3, -(13 * np.cos(t) - dip * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)) / 16)
    other = half * [-1.0, 1.0]
    if rng.random() < 0.6:
        return [np.vstack([half, other[::-1]])]
    return [half, other]


def _moon(rng: np.random.Generator) -> Template:
    d = rng.uniform(0.3, 0.6)
    tip = math.acos(d / 2)  # unit circles centred at (0, 0) and (d, 0) cross at x = d / 2, i.e. at angles +-tip
    outer = _arc(0, 0, 1, 1, tip, TAU - 2 * tip)
    inner = _arc(d, 0, 1, 1, math.pi + tip, -2 * tip)
    flip = [_sign(rng), 1.0]
    if rng.random() < 0.7:
        return [np.vstack([outer, inner]) * flip]
    return [outer * flip, inner * flip]


def _sun(rng: np.random.Generator) -> Template:
    r0 = rng.uniform(0.35, 0.6)
    strokes = [_ring(rng, rx=r0, ry=r0)]
    k = int(rng.integers(6, 13))
    for ai in rng.uniform(0, TAU) + np.arange(k) * TAU / k:
        d = np.array([math.cos(ai), math.sin(ai)])
        strokes.append(np.array([d * (r0 + 0.12), d * rng.uniform(0.8, 1.0)]))
    return strokes


_TEMPLATES: dict[str, Callable[[np.random.Generator], Template]] = {
    "circle": _circle, "square": _square, "triangle": _triangle, "star": _star, "line": _line, "zigzag": _zigzag,
    "spiral": _spiral, "house": _house, "smiley face": _smiley, "arrow": _arrow, "cross": _cross, "wave": _wave,
    "cloud": _cloud, "heart": _heart, "moon": _moon, "sun": _sun,
}
SYNTHETIC_CLASSES: list[str] = list(_TEMPLATES)


def _perturb_order(strokes: Template, rng: np.random.Generator) -> Template:
    """Reverse some strokes, sometimes shuffle their order; rarely drop one or stop early (ambiguous samples).

    Stopping early mimics the real game, where a round ends when time runs out or the model guesses the word.
    """
    strokes = [s[::-1] if rng.random() < 0.15 else s for s in strokes]
    if len(strokes) > 1 and rng.random() < 0.15:
        strokes = [strokes[i] for i in rng.permutation(len(strokes))]
    if len(strokes) > 2 and rng.random() < 0.05:
        del strokes[int(rng.integers(len(strokes)))]
    if rng.random() < 0.04 and len(strokes[-1]) > 2:
        strokes[-1] = strokes[-1][: max(2, int(len(strokes[-1]) * rng.uniform(0.3, 0.8)))]
    return strokes


def _affine(scale: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Hand-like 2x2 maps (2, 2, D) from normals z (3, D): rotation (sd ~14 degrees), aspect, shear; times px size."""
    c, s = np.cos(0.25 * z[0]), np.sin(0.25 * z[0])
    aspect, shear = np.exp(0.2 * z[1]), 0.1 * z[2]
    # rotation @ [[1, shear], [0, 1]] @ diag(aspect, 1 / aspect), multiplied out
    return scale * np.array([[c * aspect, (c * shear - s) / aspect], [s * aspect, (s * shear + c) / aspect]])


def _arc_length(px: np.ndarray, py: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative length along concatenated strokes (points), and each stroke's start on it and length (strokes)."""
    ends = np.cumsum(sizes)
    seg = np.hypot(px[1:] - px[:-1], py[1:] - py[:-1]) + 1e-6
    seg[ends[:-1] - 1] = 1.0  # a 1 px step between strokes keeps the cumulative length strictly increasing
    cum = np.concatenate([[0.0], np.cumsum(seg)])
    start = cum[ends - sizes]
    return cum, start, cum[ends - 1] - start


def _sample(px: np.ndarray, py: np.ndarray, arc: tuple[np.ndarray, np.ndarray, np.ndarray], step: np.ndarray,
            ease: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Resample concatenated strokes at one point per time step: returns x, y, u (0-1 along the stroke), n per stroke.

    ``arc`` comes from :func:`_arc_length`; ``step`` is each stroke's mean px per time step; ``ease`` in [0, 1) slows
    both ends of a stroke (s = u - ease sin(2 pi u) / 2 pi has derivative 1 - ease cos > 0: points stay in order).
    """
    cum, start, length = arc
    n = np.where(length < 1.0, 1, np.minimum(np.maximum(np.rint(length / step), 2), 250)).astype(np.int64)
    which = np.repeat(np.arange(len(n)), n)
    u = (np.arange(len(which)) - (np.cumsum(n) - n)[which]) / np.maximum(n - 1, 1)[which]
    target = start[which] + length[which] * (u - ease[which] * np.sin(TAU * u) / TAU)
    return np.interp(target, cum, px), np.interp(target, cum, py), u, n


def _render(templates: list[Template], rng: np.random.Generator) -> list[list[list[list[float]]]]:
    """Place templates on canvases and sample them in time like a browser; one Google raw drawing per template.

    Vectorised over all strokes of all drawings (per-drawing and per-stroke values broadcast by index), because numpy
    call overhead, not arithmetic, dominated a per-drawing version (~3x slower).
    """
    strokes = [s for t in templates for s in t]
    k = np.array([len(t) for t in templates])
    sizes, s_draw = np.array([len(s) for s in strokes]), np.repeat(np.arange(len(templates)), k)
    u8, z4 = rng.random((8, len(templates))), rng.standard_normal((4, len(templates)))
    r5, z2 = rng.random((5, len(strokes))), rng.standard_normal((2, len(strokes)))
    scale = 60 + 200 * u8[0]  # half-size in px; real raw circles, squares, stars span ~300-330 px
    m, p = _affine(scale, z4)[:, :, np.repeat(s_draw, sizes)], np.concatenate(strokes)
    px, py = m[0, 0] * p[:, 0] + m[0, 1] * p[:, 1], m[1, 0] * p[:, 0] + m[1, 1] * p[:, 1]
    # points arrive every dt ms; bigger drawings and longer strokes are drawn faster. Real raw medians: a circle spans
    # ~316 px and takes ~1.4 s for ~85 points (~0.7 px/ms); a sun's ray takes ~190 ms for ~11 points
    sc, dt = scale[s_draw], 12 + 10 * u8[1]
    arc = _arc_length(px, py, sizes)
    length = arc[2]  # px per stroke
    speed = 0.55 * (sc / 160) ** 0.7 * (length / 600 + 0.01) ** 0.35 * np.exp(0.35 * z4[3][s_draw] + 0.2 * z2[0])
    x, y, u, n = _sample(px, py, arc, speed * dt[s_draw], 0.7 * r5[0])
    which, offsets = np.repeat(np.arange(len(n)), n), np.cumsum(n) - n
    p_draw, first = s_draw[which], offsets[np.cumsum(k) - k]
    # low-frequency wobble (1-3.5 % of the size, x3 for a few sloppy drawings) plus sub-pixel tremor; short strokes
    # wobble less, as a hand shakes in proportion to the distance travelled
    amp = sc * (0.01 + 0.025 * u8[2][s_draw]) * np.where(u8[3][s_draw] < 0.04, 3.0, 1.0)
    amp *= np.minimum(1.0, length / (2 * sc))
    zp = rng.standard_normal((3, len(which)))
    x += amp[which] * np.sin(TAU * (0.3 + 1.7 * r5[1][which]) * u + TAU * r5[3][which]) + 0.4 * zp[0]
    y += amp[which] * np.sin(TAU * (0.3 + 1.7 * r5[2][which]) * u + TAU * r5[4][which]) + 0.4 * zp[1]
    x += (5 + 345 * u8[4] - np.minimum.reduceat(x, first))[p_draw]
    y += (5 + 195 * u8[5] - np.minimum.reduceat(y, first))[p_draw]
    steps = np.maximum(1, np.rint(dt[p_draw] * np.exp(0.25 * zp[2])))
    steps[offsets] = np.rint(400 * np.exp(0.6 * z2[1]))  # pen-up pauses: real medians 300-700 ms
    steps[first] = 0
    t = np.cumsum(steps)
    return _split(x, y, (t - t[first][p_draw]).astype(np.int64).tolist(), offsets, k, u8[6] < 0.8)


def _split(x: np.ndarray, y: np.ndarray, t: list[int], offsets: np.ndarray, k: np.ndarray, whole: np.ndarray
           ) -> list[list[list[list[float]]]]:
    """Cut the concatenated points into drawings of strokes; ``whole`` drawings get integer pixels, the others two
    decimals (most devices report whole pixels, touch screens fractions: 1,451 of 8,266 real raw drawings)."""
    xi, yi = np.rint(x).astype(np.int64).tolist(), np.rint(y).astype(np.int64).tolist()
    xf, yf = np.round(x, 2).tolist(), np.round(y, 2).tolist()
    bounds, out, s = offsets.tolist() + [len(t)], [], 0
    for kd, w in zip(k.tolist(), whole.tolist()):
        xs, ys = (xi, yi) if w else (xf, yf)
        out.append([[xs[a:b], ys[a:b], t[a:b]] for a, b in zip(bounds[s:s + kd], bounds[s + 1:s + kd + 1])])
        s += kd
    return out


def draw(name: str, rng: np.random.Generator) -> list[list[list[float]]]:
    """Draw one doodle of class ``name`` as Google raw strokes ``[[x...], [y...], [t...]]`` (px, px, ms from 0).

    Raises:
        ValueError: ``name`` is not in :data:`SYNTHETIC_CLASSES`.
    """
    _check_class(name)
    return _render([_perturb_order(_TEMPLATES[name](rng), rng)], rng)[0]


def _key_id(class_index: int, index: int, seed: int) -> str:
    """16-digit id, unique per (class, index < 1e9, seed mod 90000) because it is a bijection of the packed triple."""
    packed = ((seed % _SEED_SLOTS) * 100 + class_index) * _MAX_INDEX + index
    return str(10**15 + (packed * _KEY_MUL + _KEY_ADD) % _KEY_SPAN)


def _check_class(name: str) -> int:
    if name not in _TEMPLATES:
        raise ValueError(f"unknown synthetic class {name!r}; expected one of {SYNTHETIC_CLASSES}")
    return SYNTHETIC_CLASSES.index(name)


def generate_records(name: str, n: int, seed: int) -> Iterator[dict]:
    """Yield ``n`` Google ndjson-style records of class ``name``; the same (name, n, seed) gives the same records.

    Each class draws from its own stream ``default_rng([seed, class_index])`` in fixed batches of 128 drawings, so a
    class's records depend neither on the other classes nor on ``n`` (a shorter run is a prefix of a longer one).

    Raises:
        ValueError: unknown class, negative ``n`` or ``seed``, or ``n`` above 1e9 (key ids would repeat).
    """
    class_index = _check_class(name)
    if not 0 <= n <= _MAX_INDEX or seed < 0:
        raise ValueError(f"need 0 <= n <= {_MAX_INDEX} and seed >= 0, got n={n}, seed={seed}")
    rng, template = np.random.default_rng([seed, class_index]), _TEMPLATES[name]
    for first in range(0, n, _BATCH):
        drawings = _render([_perturb_order(template(rng), rng) for _ in range(_BATCH)], rng)
        meta = rng.random((3, _BATCH))
        stamps = np.datetime_as_string(_EPOCH + (meta[0] * 90 * 86400e6).astype("timedelta64[us]"), unit="us")
        countries = np.searchsorted(_COUNTRY_CDF, meta[1]).tolist()
        for j in range(min(_BATCH, n - first)):
            yield {
                "word": name,
                "countrycode": _COUNTRIES[countries[j]],
                "timestamp": f"{stamps[j][:10]} {stamps[j][11:25]} UTC",  # Google's "2017-01-29 02:42:16.31846 UTC"
                "recognized": bool(meta[2][j] < 0.92),
                "key_id": _key_id(class_index, first + j, seed),
                "drawing": drawings[j],
            }


def write_ndjson(out_dir: Path, n_per_class: int, seed: int = 0, classes: Iterable[str] | None = None) -> list[Path]:
    """Write ``<word>.ndjson`` per class into ``out_dir`` in Google's raw layout; returns the paths in class order.

    Each file is written atomically (qdraw.atomic), so a reader never sees half a file.

    Raises:
        ValueError: an unknown class name (checked before anything is written), or bad ``n_per_class`` / ``seed``.
    """
    names = SYNTHETIC_CLASSES if classes is None else list(classes)
    for name in names:
        _check_class(name)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names:
        path = out_dir / f"{name}.ndjson"
        with atomic_write(path) as f:
            f.writelines(orjson.dumps(rec) + b"\n" for rec in generate_records(name, n_per_class, seed))
        paths.append(path)
    return paths
