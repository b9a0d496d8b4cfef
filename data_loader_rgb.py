"""Encodings of stroke order and drawing direction, for simplified strokes (raw stores work too: t is ignored).

Each encoding is a pure function over a packed batch (flat arrays as in qdraw/store.py: xy (P, 2) uint8, strokes and
drawings offsets) returning the uint8 colour of every point; qdraw/raster.py draws the segments between points with
these colours (linearly interpolated along each segment, later strokes on top) into uint8 (B, C, S, S) images with a
black (0) background; the 0..255 frame is scaled uniformly (aspect ratio kept) with a small margin and the drawing is
centred on its bounding box; dots are drawn; size and line width are parameters. Channels:

    grey  1 channel, Beluga-style stroke order: ink = 255 - 13 * min(stroke index, 10), so the first stroke is 255,
          the second 242, ... and the 11th and later strokes 125; later strokes are darker.
    rgb   R = stroke-order fraction: round(255 * i / (n - 1)) for stroke i of n (0 when n = 1), so the first stroke is
              0 and the last 255 whatever the stroke count;
          G = position along the stroke: round(255 * arc length travelled / stroke length) at each point, so each
              stroke runs from 0 at its start to 255 at its end (0 for a dot), i.e. the pen direction;
          B = ink: 255 wherever a stroke is drawn (the drawing's shape on its own).
          (The original's R = stroke index, G = 255 - R carried one number twice; here the three channels differ.)

  Two channel layouts of peer solutions (the Kaggle 2018 competition), as their write-ups describe them:

    points  (21st place) R = stroke index: round(255 * min(i, 15) / 15), the first stroke 0, the 16th and later 255;
            G = the stroke's number of points: round(255 * min(n, 64) / 64); B = 255 (constant ink).
    thirds  (14th place) cumulative thirds of the strokes: R = 255 on the first ceil(n / 3) strokes of n, G on the
            first ceil(2n / 3), B on all of them, 0 elsewhere. Each channel is the union of its strokes (a later
            stroke crossing an earlier one must not erase it), so this encoding is drawn last stroke first: every
            pixel takes the colour of the earliest stroke through it, and since the colours are nested (an earlier
            stroke's channels include a later one's) that equals the per-channel union exactly.

    python visualize.py --data data/kaggle_simplified --encodings grey,rgb --output grid.png
    python bench.py raster --encoding rgb --size 128 --data data/kaggle_simplified
"""
from __future__ import annotations

import numpy as np
from numba import njit

from qdraw.encoding import Encoding, level, point_stroke, register_encoding, step_length, stroke_length, stroke_order

GREY_STEP, GREY_MIN_AT = 13, 10


def grey_colors(xy: np.ndarray, t: np.ndarray | None, strokes: np.ndarray, drawings: np.ndarray) -> np.ndarray:
    """Grey level per point: uint8 (P, 1) = 255 - 13 * min(stroke index, 10)."""
    index, _ = stroke_order(drawings)
    per_stroke = (255 - GREY_STEP * np.minimum(index, GREY_MIN_AT)).astype(np.uint8)
    return per_stroke[point_stroke(strokes)][:, None]


@njit(cache=True, nogil=True)
def _rgb_kernel(xy, strokes, drawings, out):
    for d in range(len(drawings) - 1):
        s0, s1 = drawings[d], drawings[d + 1]
        for s in range(s0, s1):
            a, e = strokes[s], strokes[s + 1]
            red = level((s - s0) / max(s1 - s0 - 1, 1))
            total = stroke_length(xy, a, e)
            run = 0.0
            for p in range(a, e):
                if p > a:
                    run += step_length(xy, p)
                out[p, 0] = red
                out[p, 1] = level(run / total) if total > 0 else 0
                out[p, 2] = 255


def rgb_colors(xy: np.ndarray, t: np.ndarray | None, strokes: np.ndarray, drawings: np.ndarray) -> np.ndarray:
    """(stroke-order fraction, position along the stroke, ink) per point: uint8 (P, 3). Compiled (a loop over
    strokes), because numpy's dozen passes over the points cost as much as drawing them."""
    out = np.empty((len(xy), 3), np.uint8)
    _rgb_kernel(np.ascontiguousarray(xy), np.ascontiguousarray(strokes), np.ascontiguousarray(drawings), out)
    return out


POINTS_INDEX_MAX, POINTS_COUNT_MAX = 15, 64


def points_colors(xy: np.ndarray, t: np.ndarray | None, strokes: np.ndarray, drawings: np.ndarray) -> np.ndarray:
    """(stroke index, points in the stroke, ink) per point: uint8 (P, 3), as for ``points`` above."""
    index, _ = stroke_order(drawings)
    per_stroke = np.empty((len(index), 3), np.uint8)
    per_stroke[:, 0] = np.floor(255 * np.minimum(index, POINTS_INDEX_MAX) / POINTS_INDEX_MAX + 0.5)
    per_stroke[:, 1] = np.floor(255 * np.minimum(np.diff(strokes), POINTS_COUNT_MAX) / POINTS_COUNT_MAX + 0.5)
    per_stroke[:, 2] = 255
    return per_stroke[point_stroke(strokes)]


def thirds_colors(xy: np.ndarray, t: np.ndarray | None, strokes: np.ndarray, drawings: np.ndarray) -> np.ndarray:
    """255 in channel c (0, 1, 2) on the strokes of the first (c + 1) thirds of each drawing: uint8 (P, 3)."""
    index, count = stroke_order(drawings)
    per_stroke = np.empty((len(index), 3), np.uint8)
    per_stroke[:, 0] = np.where(index < -(-count // 3), 255, 0)
    per_stroke[:, 1] = np.where(index < -(-2 * count // 3), 255, 0)
    per_stroke[:, 2] = 255
    return per_stroke[point_stroke(strokes)]


GREY = register_encoding(Encoding("grey", 1, False, grey_colors, ("stroke order",)))
RGB = register_encoding(Encoding("rgb", 3, False, rgb_colors, ("stroke order", "along the stroke", "ink")))
POINTS = register_encoding(Encoding("points", 3, False, points_colors, ("stroke index", "points in stroke", "ink")))
THIRDS = register_encoding(Encoding("thirds", 3, False, thirds_colors, ("first third", "first two thirds", "all"),
                                    reverse=True))
