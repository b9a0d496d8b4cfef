"""Batch rasteriser: packed drawings (flat uint8 points + offsets) to uint8 images (B, C, S, S), in compiled code.

Why: the original solution drew each segment with a Python call (PIL/cv2), ~100 calls a drawing; here one numba call
draws a whole batch and Python work is per batch, not per point or per image.

Geometry (every drawing, every encoding), all integer or exactly rounded, so tests can work pixels out by hand:
    * Coordinates are the store's 0..255 frame. The frame is scaled uniformly (aspect ratio kept) by
      ``E / 255`` with ``E = size - 1 - 2 * margin``, and the drawing is centred on its bounding box, so pixel centres
      lie in ``[margin, size - 1 - margin]``. With ``c = xmin + xmax``:
      ``X = ((size - 1) * 255 + (2 * x - c) * E + 255) // 510`` (round half up), and likewise for y.
      (A horizontal flip is a stroke transform, qdraw.augment: x becomes ``c - x``, so a flipped drawing stays
      centred and draws as the mirror image.)
    * The brush is a disc of diameter ``w = line_width``: offsets ``o`` in ``[-(w - 1) // 2, w // 2]`` with
      ``(2 o_x - m)^2 + (2 o_y - m)^2 <= w^2``, ``m`` the sum of the range ends (w=1: one pixel, w=2: 2x2, w=3: 3x3,
      w=4: 12 px, w=5: 21 px). It is stamped at every point of a stroke, first point first, so a one-point stroke (a
      dot) is one stamp and joints are round.
    * Between two points, step ``i`` of ``n = max(|dX|, |dY|)`` (for 0 < i < n) sits at ``X0 + round(dX * i / n)``
      along the minor axis (round half up) and draws a span across the major axis of ``round(w * length / n)`` pixels
      (offsets as for the brush), so a line is w pixels thick when horizontal or vertical and about w at any angle.
    * Colours are given per point (see :class:`Encoding`); at step i each channel is ``round(c0 + (c1 - c0) * i / n)``
      (round half up); the point's own stamp uses its colour. Later pixels overwrite earlier ones, so later points and
      strokes are on top. Everything is clipped to the image.
    * The background is 0, so an encoding should keep ink non-zero in at least one channel.

The default ``line_width`` is ``round(3 * size / 128)`` (2 at 64 px, 3 at 128, 6 at 256) and the default margin is
``line_width // 2 + 1``, so the brush never touches the border.
"""
from __future__ import annotations

import numpy as np
from numba import njit
from numba.typed import List

from .encoding import Encoding, check_time, get_encoding
from .store import Block, StoreError, make_block


def default_line_width(size: int) -> int:
    return max(1, int(3 * size / 128 + 0.5))


def check_geometry(size: int, line_width: int | None, margin: int | None = None) -> tuple[int, int]:
    """Validate image size, line width and margin; return (line_width, margin) with the defaults filled in."""
    if not 8 <= size <= 1024:
        raise ValueError(f"image size must be 8..1024 px, got {size}")
    line_width = default_line_width(size) if line_width is None else int(line_width)
    if not 1 <= line_width <= size:
        raise ValueError(f"line width must be 1..{size} px (the image size), got {line_width}")
    margin = line_width // 2 + 1 if margin is None else int(margin)
    if not 0 <= margin < size // 2:
        raise ValueError(f"margin must be 0..{size // 2 - 1} px, got {margin}")
    return line_width, margin


# Rounding half up in floats is exact here: the true value v + 0.5 (v = c0 + dc * i / n) is a multiple of 1 / (2n),
# n < 1024, so it is either an integer or at least 1/2048 from one, while float error is below 1e-10; the 1e-6
# nudge moves exact integers that float error left just below back up. A float multiply-add per step and channel
# measured 20% faster than an integer division or exact integer accumulators.
_HALF_UP = 0.5 + 1e-6
_KERNEL = dict(cache=True, nogil=True, error_model="numpy")  # no ZeroDivisionError checks: divisors are > 0


@njit(**_KERNEL)
def _brush(width):
    """Offsets (dx, dy) of the round brush of diameter width (module docstring), row by row."""
    lo, hi = -((width - 1) // 2), width // 2
    mid = lo + hi
    bx = np.empty(width * width, np.int64)
    by = np.empty(width * width, np.int64)
    n = 0
    for oy in range(lo, hi + 1):
        for ox in range(lo, hi + 1):
            if (2 * ox - mid) ** 2 + (2 * oy - mid) ** 2 <= width * width:
                bx[n] = ox
                by[n] = oy
                n += 1
    return bx[:n], by[:n]


# Indices are cast to uint64 where pixels are written: numba then skips its negative-index wraparound test (13%
# faster); every such index has been checked to lie inside the image.
@njit(inline="always", **_KERNEL)
def _disc(out, b, x, y, colors, p, bx, by, lo, hi):
    """Stamp the brush centred at pixel (x, y) in the colour of point p, clipped to the image."""
    size = out.shape[3]
    inside = x + lo >= 0 and y + lo >= 0 and x + hi < size and y + hi < size
    for ch in range(out.shape[1]):
        v = colors[p, ch]
        for k in range(len(bx)):
            px, py = x + bx[k], y + by[k]
            if inside or (0 <= px < size and 0 <= py < size):
                out[np.uint64(b), np.uint64(ch), np.uint64(py), np.uint64(px)] = v


@njit(inline="always", **_KERNEL)
def _segment(out, b, x0, y0, x1, y1, colors, p, width, acc):
    """Interior steps 1..n-1 of the segment from point p-1 at (x0, y0) to point p at (x1, y1).

    Each step draws a span across the major axis, round(width * length / n) pixels long, so that a line is about
    width pixels thick at any angle (exactly width when horizontal or vertical); the end points' discs, drawn by the
    caller, round the joints.
    """
    size, n_ch = out.shape[3], out.shape[1]
    dx, dy = x1 - x0, y1 - y0
    xmajor = abs(dx) >= abs(dy)
    n = abs(dx) if xmajor else abs(dy)
    if n < 2:
        return
    span = max(1, int(width * np.sqrt(dx * dx + dy * dy) / n + 0.5))
    lo, hi = -((span - 1) // 2), span // 2
    step = (1 if dx > 0 else -1) if xmajor else (1 if dy > 0 else -1)
    slope = (dy if xmajor else dx) / n
    for ch in range(n_ch):  # colour of step i: floor(acc[0] + acc[1] * i)
        acc[0, ch] = colors[p - 1, ch] + _HALF_UP
        acc[1, ch] = (np.float64(colors[p, ch]) - np.float64(colors[p - 1, ch])) / n
    for i in range(1, n):
        m = int(np.floor(slope * i + _HALF_UP))
        if xmajor:
            x, yc = x0 + step * i, y0 + m
            if 0 <= x < size:
                ya, yb = max(yc + lo, 0), min(yc + hi, size - 1) + 1
                for ch in range(n_ch):
                    v = np.uint8(np.floor(acc[0, ch] + acc[1, ch] * i))
                    for y in range(ya, yb):
                        out[np.uint64(b), np.uint64(ch), np.uint64(y), np.uint64(x)] = v
        else:
            y, xc = y0 + step * i, x0 + m
            if 0 <= y < size:
                xa, xb = max(xc + lo, 0), min(xc + hi, size - 1) + 1
                for ch in range(n_ch):
                    v = np.uint8(np.floor(acc[0, ch] + acc[1, ch] * i))
                    for x in range(xa, xb):
                        out[np.uint64(b), np.uint64(ch), np.uint64(y), np.uint64(x)] = v


@njit(**_KERNEL)
def _draw_kernel(xy, strokes, drawings, colors, width, margin, reverse, out):
    size = out.shape[3]
    ext = max(size - 1 - 2 * margin, 0)
    bx, by = _brush(width)
    lo, hi = -((width - 1) // 2), width // 2
    acc = np.empty((2, colors.shape[1]), np.float64)
    px = np.empty(len(xy), np.int64)
    py = np.empty(len(xy), np.int64)
    for b in range(len(drawings) - 1):
        out[b] = 0  # zeroed here, image by image, while it is in cache (cheaper than a separate pass)
        p0, p1 = strokes[drawings[b]], strokes[drawings[b + 1]]
        if p1 <= p0:
            continue
        xmin, xmax, ymin, ymax = 255, 0, 255, 0
        for p in range(p0, p1):
            xmin, xmax = min(xmin, xy[p, 0]), max(xmax, xy[p, 0])
            ymin, ymax = min(ymin, xy[p, 1]), max(ymax, xy[p, 1])
        xsum, ysum = np.int64(xmin) + xmax, np.int64(ymin) + ymax
        for p in range(p0, p1):
            px[p] = ((size - 1) * 255 + (2 * np.int64(xy[p, 0]) - xsum) * ext + 255) // 510
            py[p] = ((size - 1) * 255 + (2 * np.int64(xy[p, 1]) - ysum) * ext + 255) // 510
        for j in range(drawings[b], drawings[b + 1]):
            s = drawings[b] + drawings[b + 1] - 1 - j if reverse else j  # one branch per stroke, not per pixel
            a, e = strokes[s], strokes[s + 1]
            if e <= a:
                continue
            _disc(out, b, px[a], py[a], colors, a, bx, by, lo, hi)
            for k in range(a + 1, e):
                _segment(out, b, px[k - 1], py[k - 1], px[k], py[k], colors, k, width, acc)
                _disc(out, b, px[k], py[k], colors, k, bx, by, lo, hi)


# Status codes of _gather_kernel: everything about a batch's indices and offsets is checked in the kernel, one
# comparison per drawing, so a batch costs one call with no numpy passes around it (those held the GIL for ~2 % of
# a batch and kept two loader threads from drawing in parallel; measured with perf_counter around each step).
_GATHER_OK, _GATHER_INDEX, _GATHER_DAMAGED = 0, 1, 2


@njit(**_KERNEL)
def _gather_failed(status):
    """_gather_kernel's result for a refused batch: empty arrays and the status (made only when it fails)."""
    return np.empty((0, 2), np.uint8), np.empty(0, np.int32), np.empty(0, np.int64), np.empty(0, np.int64), status


@njit(**_KERNEL)
def _gather_kernel(xys, ts, strokess, drawingss, src, idx, with_t):
    n = len(src)
    n_s, n_p = 0, 0
    for j in range(n):
        if not (0 <= src[j] < len(xys)) or not (0 <= idx[j] < len(drawingss[src[j]]) - 1):
            return _gather_failed(_GATHER_INDEX)
        st, dr = strokess[src[j]], drawingss[src[j]]
        s0, s1 = dr[idx[j]], dr[idx[j] + 1]
        # Defence in depth (blocks are validated when opened): offsets that would read outside the source arrays
        # give a status instead of a read; one comparison per drawing, not per point.
        if not (0 <= s0 <= s1 < len(st)) or not (0 <= st[s0] <= st[s1] <= len(xys[src[j]])):
            return _gather_failed(_GATHER_DAMAGED)
        if with_t and len(ts[src[j]]) != len(xys[src[j]]):
            return _gather_failed(_GATHER_DAMAGED)
        n_s += s1 - s0
        n_p += st[s1] - st[s0]
    xy = np.empty((n_p, 2), np.uint8)
    t = np.empty(n_p if with_t else 0, np.int32)
    strokes = np.empty(n_s + 1, np.int64)
    drawings = np.empty(n + 1, np.int64)
    strokes[0], drawings[0] = 0, 0
    s_out, p_out = 0, 0
    for j in range(n):
        sxy, st, dr = xys[src[j]], strokess[src[j]], drawingss[src[j]]
        s0, s1 = dr[idx[j]], dr[idx[j] + 1]
        q0, q1 = st[s0], st[s1]
        for s in range(s0, s1):
            strokes[s_out + 1] = p_out + st[s + 1] - q0
            s_out += 1
        xy[p_out:p_out + q1 - q0] = sxy[q0:q1]
        if with_t:
            t[p_out:p_out + q1 - q0] = ts[src[j]][q0:q1]
        p_out += q1 - q0
        drawings[j + 1] = s_out
    return xy, t, strokes, drawings, _GATHER_OK


def _readonly(a: np.ndarray, dtype) -> np.ndarray:
    """A C-contiguous read-only view (or copy), so every source has one numba type and compiles once."""
    v = np.ascontiguousarray(np.asarray(a), dtype=dtype).view(np.ndarray)
    v.flags.writeable = False
    return v


class Sources:
    """Several blocks held where compiled code can index them by (source, drawing): one gather call per batch.

    The arrays sit in numba typed lists (views of the memory maps, no copy); building the first list in a process
    compiles numba's list code (~1 s, not cached on disk), which :func:`warm_up` pays before workers fork.
    """

    def __init__(self, blocks: list[Block]):
        if not blocks:
            raise ValueError("Sources needs at least one block")
        self.has_time = all(b.t is not None for b in blocks)
        empty_t = np.zeros(0, np.int32)
        self._xy = List([_readonly(b.xy.reshape(-1, 2), np.uint8) for b in blocks])
        self._t = List([_readonly(b.t if self.has_time else empty_t, np.int32) for b in blocks])
        self._strokes = List([_readonly(b.strokes, np.int64) for b in blocks])
        self._drawings = List([_readonly(b.drawings, np.int64) for b in blocks])
        self.lists = (self._xy, self._t, self._strokes, self._drawings)  # what compiled callers index

    def gather(self, src: np.ndarray, idx: np.ndarray,
               with_time: bool = True) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray]:
        """Packed (xy, t, strokes, drawings) of drawings ``idx[j]`` of sources ``src[j]``, in that order; t is None
        for simplified sources or when with_time is False."""
        src = np.ascontiguousarray(src, np.int64)
        idx = np.ascontiguousarray(idx, np.int64)
        if len(src) != len(idx):
            raise ValueError("src and idx differ in length")
        with_time = with_time and self.has_time
        xy, t, strokes, drawings, status = _gather_kernel(self._xy, self._t, self._strokes, self._drawings, src, idx,
                                                          with_time)
        if status == _GATHER_INDEX:
            raise IndexError("drawing index out of range")
        if status != _GATHER_OK:
            raise StoreError("a block's stroke or drawing offsets point outside its arrays (damaged block)")
        return xy, (t if with_time else None), strokes, drawings


def check_packed(xy: np.ndarray, t: np.ndarray | None, strokes: np.ndarray, drawings: np.ndarray) -> None:
    """ValueError unless the offsets index inside the arrays: strokes from 0 to len(xy) and drawings from 0 to the
    stroke count, never decreasing, and t (when given) one per point. The kernels trust this; checking it costs two
    vectorised passes over the offsets of a batch (microseconds), so it is done on every call."""
    for name, off, end in (("strokes", strokes, len(xy)), ("drawings", drawings, len(strokes) - 1)):
        if off.ndim != 1 or len(off) < 1 or off[0] != 0 or off[-1] != end or (len(off) > 1 and np.diff(off).min() < 0):
            raise ValueError(f"{name} offsets must run from 0 to {end} without decreasing")
    if xy.ndim != 2 or xy.shape[1] != 2 or (t is not None and len(t) != len(xy)):
        raise ValueError(f"xy must be (P, 2) and t (P,), got {xy.shape} and {None if t is None else t.shape}")


def draw(xy: np.ndarray, strokes: np.ndarray, drawings: np.ndarray, colors: np.ndarray, size: int = 128,
         line_width: int | None = None, margin: int | None = None, out: np.ndarray | None = None,
         reverse: bool = False) -> np.ndarray:
    """Draw packed drawings with per-point colours (P, C) uint8 into a uint8 array (B, C, size, size).

    out: optional uint8 (B, C, size, size) to draw into
    (C-contiguous; overwritten, so it may come from np.empty/torch.empty). reverse: draw each drawing's strokes last
    to first (the first stroke on top).
    """
    line_width, margin = check_geometry(size, line_width, margin)
    xy, strokes, drawings = (np.ascontiguousarray(xy, np.uint8), np.ascontiguousarray(strokes, np.int64),
                             np.ascontiguousarray(drawings, np.int64))
    check_packed(xy, None, strokes, drawings)
    n = len(drawings) - 1
    colors = np.ascontiguousarray(colors, np.uint8)
    if colors.ndim != 2 or len(colors) != len(xy):
        raise ValueError(f"colors must be (P, C) with P = {len(xy)} points, got {colors.shape}")
    if out is None:
        out = np.empty((n, colors.shape[1], size, size), np.uint8)
    elif out.shape != (n, colors.shape[1], size, size) or out.dtype != np.uint8 or not out.flags.c_contiguous:
        raise ValueError(f"out must be C-contiguous uint8 {(n, colors.shape[1], size, size)}, "
                         f"got {out.dtype} {out.shape}")
    _draw_kernel(xy, strokes, drawings, colors, line_width, margin, bool(reverse), out)
    return out


def rasterize(xy: np.ndarray, t: np.ndarray | None, strokes: np.ndarray, drawings: np.ndarray,
              encoding: str | Encoding, size: int = 128, line_width: int | None = None, margin: int | None = None,
              out: np.ndarray | None = None) -> np.ndarray:
    """Encode and draw a packed batch: uint8 (B, channels, size, size). See the module docstring for the geometry."""
    enc = get_encoding(encoding)
    check_time(enc, t is not None)
    xy, strokes, drawings = (np.ascontiguousarray(xy, np.uint8), np.ascontiguousarray(strokes, np.int64),
                             np.ascontiguousarray(drawings, np.int64))
    check_packed(xy, t, strokes, drawings)  # before the encoding's kernel indexes through the offsets
    return draw(xy, strokes, drawings, enc.colors(xy, t, strokes, drawings), size, line_width, margin, out,
                enc.reverse)


def warm_up(encoding: str | Encoding) -> None:
    """Compile (or load from numba's on-disk cache) the gather, encode and draw kernels in this process.

    DataLoader workers forked afterwards inherit the compiled code; otherwise each worker pays about a second
    (numba's typed lists are compiled per process, not cached) before its first batch.
    """
    enc = get_encoding(encoding)
    block = make_block(np.zeros((2, 2)), np.arange(2) if enc.needs_time else None, np.array([2]), np.array([1]),
                       np.zeros(1), np.zeros(1), np.array([b"US"]), np.ones(1))
    xy, t, strokes, drawings = Sources([block]).gather(np.zeros(1), np.zeros(1))
    rasterize(xy, t, strokes, drawings, enc, 16, 1)


def pack_strokes(drawings: list[list[np.ndarray]]) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray]:
    """Pack drawings given as lists of (n, 2|3) arrays in the 0..255 frame (x, y[, t]) into flat arrays."""
    pts = [np.asarray(s).reshape(len(s), -1) for d in drawings for s in d]
    if any(len(p) == 0 for p in pts):
        raise ValueError("empty stroke")
    has_t = bool(pts) and all(p.shape[1] >= 3 for p in pts)
    flat = np.concatenate(pts) if pts else np.zeros((0, 3))
    if len(flat) and (flat[:, :2].min() < 0 or flat[:, :2].max() > 255):
        raise ValueError("coordinates must lie in the 0..255 frame")
    strokes = np.concatenate([[0], np.cumsum([len(p) for p in pts], dtype=np.int64)]).astype(np.int64)
    drawings_off = np.concatenate([[0], np.cumsum([len(d) for d in drawings], dtype=np.int64)]).astype(np.int64)
    t = flat[:, 2].astype(np.int32) if has_t else None
    return flat[:, :2].astype(np.uint8).reshape(-1, 2), t, strokes, drawings_off
