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

from qdraw.encoding import Encoding, color_kernel, level, register_encoding, step_length, stroke_length

GREY_STEP, GREY_MIN_AT = 13, 10
POINTS_INDEX_MAX, POINTS_COUNT_MAX = 15, 64


# Each encoding is one compiled loop over strokes (qdraw.encoding.color_kernel): a loader thread then calls it inside
# its one compiled call per chunk of batches, without the GIL; numpy's passes over the points cost as much as drawing.
@color_kernel
def grey_kernel(xy, t, strokes, drawings, out):
    """Grey level per point: 255 - 13 * min(stroke index, 10)."""
    for d in range(len(drawings) - 1):
        for s in range(drawings[d], drawings[d + 1]):
            ink = np.uint8(255 - GREY_STEP * min(s - drawings[d], GREY_MIN_AT))
            for p in range(strokes[s], strokes[s + 1]):
                out[p, 0] = ink


@color_kernel
def rgb_kernel(xy, t, strokes, drawings, out):
    """(stroke-order fraction, position along the stroke, ink) per point."""
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


@color_kernel
def points_kernel(xy, t, strokes, drawings, out):
    """(stroke index, points in the stroke, ink) per point, as for ``points`` in the module docstring."""
    for d in range(len(drawings) - 1):
        for s in range(drawings[d], drawings[d + 1]):
            a, e = strokes[s], strokes[s + 1]
            red = np.uint8(np.floor(255 * min(s - drawings[d], POINTS_INDEX_MAX) / POINTS_INDEX_MAX + 0.5))
            green = np.uint8(np.floor(255 * min(e - a, POINTS_COUNT_MAX) / POINTS_COUNT_MAX + 0.5))
            for p in range(a, e):
                out[p, 0], out[p, 1], out[p, 2] = red, green, 255


@color_kernel
def thirds_kernel(xy, t, strokes, drawings, out):
    """255 in channel c (0, 1, 2) on the strokes of the first (c + 1) thirds of each drawing."""
    for d in range(len(drawings) - 1):
        n = drawings[d + 1] - drawings[d]
        for s in range(drawings[d], drawings[d + 1]):
            i = s - drawings[d]
            red = np.uint8(255 if i < -(-n // 3) else 0)
            green = np.uint8(255 if i < -(-2 * n // 3) else 0)
            for p in range(strokes[s], strokes[s + 1]):
                out[p, 0], out[p, 1], out[p, 2] = red, green, 255


GREY = register_encoding(Encoding.compiled("grey", 1, False, grey_kernel, ("stroke order",)))
RGB = register_encoding(Encoding.compiled("rgb", 3, False, rgb_kernel, ("stroke order", "along the stroke", "ink")))
POINTS = register_encoding(Encoding.compiled("points", 3, False, points_kernel,
                                             ("stroke index", "points in stroke", "ink")))
THIRDS = register_encoding(Encoding.compiled("thirds", 3, False, thirds_kernel,
                                             ("first third", "first two thirds", "all"), reverse=True))
