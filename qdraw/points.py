"""Point sequences: packed drawings (flat uint8 points + offsets) to padded float32 per-point features (B, L, F).

Why: the stroke networks (qdraw.strokenets) read the pen's path, not a picture; this turns the batch a loader gathers
(:meth:`qdraw.raster.Sources.gather`, :func:`qdraw.raster.pack_strokes`) into their one input tensor in a single
compiled call that releases the GIL, so loader threads run it side by side. Pure numpy/numba: no torch, no I/O.

Layout (a contract the models, export and serving build on). Row ``i`` of drawing ``b`` is its ``i``-th kept point,
features in this order, with (X, Y) the point in the store's 0..255 frame and "previous" the previous kept point of
the same drawing (across stroke boundaries; the drawing's first point has none, so its offsets are 0):

    ====  =========  ==================================================================================
    0     valid      1.0 for a real point, 0.0 for padding. Padding rows are all zeros and come after the
                     real points, so the valid points of a drawing are a prefix of its row block.
    1     x          X / 255
    2     y          Y / 255
    3     dx         (X - X_prev) / 255
    4     dy         (Y - Y_prev) / 255
    5     pen_up     1.0 at the last kept point of a stroke (the pen lifts after it), else 0.0
    6     dt         min(t - t_prev, 5000) / 1000: seconds since the previous kept point, capped at 5 s (long
                     pauses carry no more information); only when times are given (raw data), so F = 7 with
                     time and F = 6 without (simplified data has none)
    ====  =========  ==================================================================================

A single float tensor (the mask is ``x[..., 0] > 0``) keeps predict, ONNX export and serving to one input.

Resampling: a drawing with n points (over all its strokes, in drawing order) and n <= L keeps every point. With
n > L it keeps points ``k_i = floor(i * n / L)``, i = 0..L-1 (evenly spread, the first point always kept), and a kept
point's pen_up is 1 when its stroke ends before the next kept point, so no pen lift is lost even when the points in
between are dropped; the last kept point always has pen_up 1. A drawing with no points gives an all-zero block.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .raster import check_packed

FEATURES = ("valid", "x", "y", "dx", "dy", "pen_up", "dt")
DT_CAP_MS = 5000


def num_features(with_time: bool) -> int:
    """F, the features per point: 7 with time (dt), 6 without."""
    return 7 if with_time else 6


@njit(cache=True, nogil=True)
def _pack_kernel(xy, t, strokes, drawings, with_t, out):
    max_len = out.shape[1]
    for b in range(len(drawings) - 1):
        out[b] = 0.0
        p0, p1 = strokes[drawings[b]], strokes[drawings[b + 1]]
        n = p1 - p0
        m = min(n, max_len)
        s = drawings[b]  # stroke holding the current point; empty strokes are stepped over below
        for i in range(m):
            k = p0 + (i * n) // max_len if n > max_len else p0 + i
            nxt = p0 + ((i + 1) * n) // max_len if n > max_len else p0 + i + 1
            if i + 1 == m:
                nxt = p1
            while strokes[s + 1] <= k:
                s += 1
            row = out[b, i]
            row[0] = 1.0
            row[1] = xy[k, 0] / 255.0
            row[2] = xy[k, 1] / 255.0
            if i > 0:
                q = p0 + ((i - 1) * n) // max_len if n > max_len else k - 1
                row[3] = (np.int64(xy[k, 0]) - np.int64(xy[q, 0])) / 255.0
                row[4] = (np.int64(xy[k, 1]) - np.int64(xy[q, 1])) / 255.0
                if with_t:
                    row[6] = min(np.int64(t[k]) - np.int64(t[q]), DT_CAP_MS) / 1000.0
            # The stroke ends (exclusive) at strokes[s + 1]; if that is at or before the next kept point, the pen
            # lifts somewhere between this kept point and the next, so this point carries the lift.
            row[5] = 1.0 if strokes[s + 1] <= nxt else 0.0


def pack_points(xy: np.ndarray, t: np.ndarray | None, strokes: np.ndarray, drawings: np.ndarray, max_len: int,
                out: np.ndarray | None = None) -> np.ndarray:
    """Pack a batch of drawings into padded per-point features: float32 (B, max_len, F), layout in the module doc.

    Args:
        xy: uint8 (P, 2) points in the 0..255 frame.
        t: int32 (P,) ms since each drawing's first point, or None (then F = 6 and there is no dt).
        strokes: int64 (S + 1,) point offsets of each stroke.
        drawings: int64 (B + 1,) stroke offsets of each drawing.
        max_len: L, rows per drawing; longer drawings are resampled (module doc).
        out: optional C-contiguous float32 (B, max_len, F) to fill (overwritten entirely, so np.empty will do).

    Raises:
        ValueError: offsets that do not index inside the arrays (qdraw.raster.check_packed), max_len < 1, or an
            `out` of the wrong shape, dtype or layout.
    """
    if isinstance(max_len, bool) or not isinstance(max_len, (int, np.integer)) or max_len < 1:
        raise ValueError(f"max_len must be a positive integer, got {max_len!r}")
    xy = np.ascontiguousarray(xy, np.uint8)
    strokes = np.ascontiguousarray(strokes, np.int64)
    drawings = np.ascontiguousarray(drawings, np.int64)
    with_t = t is not None
    t = np.ascontiguousarray(t, np.int32) if with_t else np.zeros(0, np.int32)
    check_packed(xy, t if with_t else None, strokes, drawings)
    shape = (len(drawings) - 1, int(max_len), num_features(with_t))
    if out is None:
        out = np.empty(shape, np.float32)
    elif out.shape != shape or out.dtype != np.float32 or not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError(f"out must be a writeable C-contiguous float32 array of shape {shape}, "
                         f"got {out.dtype} {out.shape}")
    _pack_kernel(xy, t, strokes, drawings, with_t, out)
    return out
