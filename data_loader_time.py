"""Encodings of drawing time, for raw strokes with timing (t in ms since the drawing's first point).

A pure function over a packed batch (flat arrays as in qdraw/store.py, with t) returns the uint8 colour of every
point; qdraw/raster.py draws the segments with these colours (linearly interpolated along each segment, later strokes
on top) into uint8 (B, 3, S, S) images with a black (0) background, with the same geometry as data_loader_rgb.py
(aspect ratio kept, centred, dots drawn). Every channel maps a value f in [0, 1] to
``55 + round(200 * f)``, so ink is never darker than 55 in any channel and each channel alone shows the shape:

    time  R = global time fraction: t / T at each point (T = the drawing's last time stamp; 0 when T = 0), so the
              drawing fades in from 55 at the first point to 255 at the last, along and across strokes;
          G = stroke speed: stroke length / stroke duration, in 0..255-frame units per ms, mapped as v / (v + 0.2)
              (0.2 units/ms is about the median stroke speed in Google's raw data; it lands at 155); a stroke with no
              length is 0, one with length but no duration 1;
          B = pause before the stroke: ms from the previous stroke's last point to this stroke's first point,
              mapped as p / (p + 400) (400 ms is about the median pause); 0 for the first stroke.

Asking a simplified store for this encoding is a ValueError (no timing to encode); the stroke-order encodings of
data_loader_rgb.py read raw stores as well.

    python visualize.py --data data/raw --encodings grey,rgb,time --output grid.png
    python bench.py raster --encoding time --size 128 --data data/raw
"""
from __future__ import annotations

import numpy as np

from qdraw.encoding import Encoding, color_kernel, level, register_encoding, stroke_length

INK_FLOOR = 55
SPEED_HALF = 0.2  # frame units per ms: median stroke speed of the raw data (measured on the shared slice)
PAUSE_HALF = 400.0  # ms: about the median pause between strokes


@color_kernel
def time_kernel(xy, t, strokes, drawings, out):
    """(global time fraction, stroke speed, pause before the stroke) per point; t is required."""
    for d in range(len(drawings) - 1):
        s0, s1 = drawings[d], drawings[d + 1]
        t_end = 0
        for s in range(s0, s1):
            if strokes[s + 1] > strokes[s]:  # an empty stroke (never in a store) has no last time
                t_end = max(t_end, t[strokes[s + 1] - 1])
        prev_end = 0
        for s in range(s0, s1):
            a, e = strokes[s], strokes[s + 1]
            if e <= a:
                continue
            length = stroke_length(xy, a, e)
            duration = t[e - 1] - t[a]
            if length <= 0:
                speed = 0.0
            elif duration <= 0:
                speed = 1.0
            else:
                v = length / duration
                speed = v / (v + SPEED_HALF)
            pause = max(t[a] - prev_end, 0) if s > s0 else 0
            green = level(speed, INK_FLOOR)
            blue = level(pause / (pause + PAUSE_HALF), INK_FLOOR)
            for p in range(a, e):
                out[p, 0] = level(t[p] / t_end if t_end > 0 else 0.0, INK_FLOOR)
                out[p, 1] = green
                out[p, 2] = blue
            prev_end = t[e - 1]


TIME = register_encoding(Encoding.compiled("time", 3, True, time_kernel, ("time", "stroke speed", "pause before")))

