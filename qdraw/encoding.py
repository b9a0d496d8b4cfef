"""Encodings: the registry of colour schemes that turn packed strokes into image channels, and their shared helpers.

An :class:`Encoding` maps every point of a packed batch to a uint8 colour; :mod:`qdraw.raster` draws the segments
between points with those colours. The registry lives here; the encodings themselves are defined (and registered) by
the top-level ``data_loader_rgb.py`` (stroke order: grey, rgb, ...) and ``data_loader_time.py`` (raw timing), which
the scripts import. qdraw never imports them (imports go one way: scripts -> qdraw), so a library user who wants the
shipped encodings imports those two modules first, or registers encodings of their own with :func:`register_encoding`.

The helpers below are pure functions of packed arrays (numpy, or numba for per-point loops) that encodings share.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from numba import njit, types

ColorFn = Callable[[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray], np.ndarray]
_ENCODINGS: dict[str, "Encoding"] = {}

# The signature of a compiled colour kernel: (xy uint8 (P, 2), t int32 (P,) or empty, strokes int64, drawings int64,
# out uint8 (P, C)) -> None. Compiled with this exact signature (:func:`color_kernel`), a kernel is a first-class
# function the loaders' one-call-per-chunk producer (qdraw.render) can call, and numba can cache that producer on disk
# for every encoding at once (a plain jitted function passed as an argument is typed by its identity: no cache).
COLOR_SIG = types.void(types.Array(types.uint8, 2, "C"), types.Array(types.int32, 1, "C"),
                       types.Array(types.int64, 1, "C"), types.Array(types.int64, 1, "C"),
                       types.Array(types.uint8, 2, "C"))


def color_kernel(fn: Callable) -> Callable:
    """Decorator: compile fn(xy, t, strokes, drawings, out) as a colour kernel (COLOR_SIG, nogil, cached)."""
    return njit(COLOR_SIG, cache=True, nogil=True)(fn)


def kernel_colors(kernel: Callable, channels: int, needs_time: bool = False) -> ColorFn:
    """The ``colors(xy, t, strokes, drawings)`` function of a colour kernel: uint8 (P, channels) per point;
    ValueError when the kernel reads times and t is None or not one per point (it would read past them)."""

    def colors(xy: np.ndarray, t: np.ndarray | None, strokes: np.ndarray, drawings: np.ndarray) -> np.ndarray:
        if needs_time and (t is None or len(t) != len(xy)):
            raise ValueError("this encoding needs stroke timing (raw data), one time per point")
        out = np.empty((len(xy), channels), np.uint8)
        # np.array(copy=False) would pass a read-only memory map through, which the signature does not accept
        args = [np.require(a, dtype, "CW") for a, dtype in ((xy, np.uint8), (np.zeros(0, np.int32) if t is None
                                                                               else t, np.int32),
                                                           (strokes, np.int64), (drawings, np.int64))]
        kernel(*args, out)
        return out

    return colors


@dataclass(frozen=True)
class Encoding:
    """A named colour scheme: ``colors(xy, t, strokes, drawings)`` returns the uint8 colour (P, channels) of every
    point of a packed batch (``t`` is None for simplified data); a pure function (numpy or numba), no torch, no I/O."""

    name: str
    channels: int
    needs_time: bool
    colors: ColorFn
    channel_names: tuple[str, ...] = ()  # what each channel shows, for plots and logs
    # Draw the strokes of each drawing last to first, so the first stroke ends on top (see data_loader_rgb.THIRDS)
    reverse: bool = False
    # The compiled colour kernel behind colors (COLOR_SIG), when there is one: then a loader thread draws a chunk of
    # batches in one call that never takes the GIL (qdraw.render); without it batches go through colors() one by one.
    kernel: Callable | None = field(default=None, compare=False)

    @classmethod
    def compiled(cls, name: str, channels: int, needs_time: bool, kernel: Callable, channel_names: tuple[str, ...] = (),
                 reverse: bool = False) -> "Encoding":
        """An encoding from a colour kernel (:func:`color_kernel`); its ``colors`` function calls the kernel."""
        return cls(name, channels, needs_time, kernel_colors(kernel, channels, needs_time), channel_names, reverse,
                   kernel)


def register_encoding(enc: Encoding) -> Encoding:
    """Add an encoding to the registry; a second encoding of the same name is a ValueError."""
    if enc.name in _ENCODINGS and _ENCODINGS[enc.name] is not enc:
        raise ValueError(f"encoding {enc.name!r} is already registered")
    _ENCODINGS[enc.name] = enc
    return enc


def list_encodings() -> list[str]:
    """Sorted names of the registered encodings."""
    return sorted(_ENCODINGS)


def get_encoding(name: str | Encoding) -> Encoding:
    """The encoding called name (an Encoding passes through); ValueError listing the known names otherwise."""
    if isinstance(name, Encoding):
        return name
    if name not in _ENCODINGS:
        known = ", ".join(sorted(_ENCODINGS)) or ("none (the shipped ones are defined in data_loader_rgb.py and "
                                                  "data_loader_time.py: import those modules first)")
        raise ValueError(f"unknown encoding {name!r}; choose from {known}")
    return _ENCODINGS[name]


def check_time(enc: str | Encoding, has_time: bool, where: object = "this data") -> None:
    """ValueError when the encoding needs timing and the data has none (simplified strokes): the one place that
    says so, for the datasets, predict.py, export and the server alike."""
    enc = get_encoding(enc)
    if enc.needs_time and not has_time:
        raise ValueError(f"encoding {enc.name!r} needs stroke timing, but {where} is simplified (no t); "
                         f"use raw strokes (train_raw/, raw/, test_raw.csv) or one of: "
                         f"{', '.join(n for n in list_encodings() if not _ENCODINGS[n].needs_time)}")


def point_stroke(strokes: np.ndarray) -> np.ndarray:
    """Stroke id of every point: int64 (P,)."""
    return np.repeat(np.arange(len(strokes) - 1), np.diff(strokes))


def stroke_order(drawings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per stroke: its index within its drawing and its drawing's stroke count, both int64 (S,)."""
    counts = np.diff(drawings)
    first = np.repeat(drawings[:-1], counts)
    return np.arange(len(first)) - first, np.repeat(counts, counts)


@njit(cache=True, nogil=True, inline="always")
def step_length(xy: np.ndarray, p: int) -> float:
    """Distance from point p - 1 to point p in frame units (compiled: encodings call it per point)."""
    return np.sqrt((np.float64(xy[p, 0]) - xy[p - 1, 0]) ** 2 + (np.float64(xy[p, 1]) - xy[p - 1, 1]) ** 2)


@njit(cache=True, nogil=True)
def stroke_length(xy: np.ndarray, a: int, e: int) -> float:
    """Path length of points a..e-1 in frame units."""
    total = 0.0
    for p in range(a + 1, e):
        total += step_length(xy, p)
    return total


@njit(cache=True, nogil=True)
def level(f: float, lo: int = 0) -> np.uint8:
    """Map a fraction f in [0, 1] (clipped) to uint8 ``lo + round((255 - lo) * f)``, rounding half up."""
    return np.uint8(np.floor(lo + (255 - lo) * min(max(f, 0.0), 1.0) + 0.5))
