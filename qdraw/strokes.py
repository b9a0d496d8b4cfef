"""Pure stroke functions: parse a Quick, Draw! drawing from its JSON text and validate it.

A drawing is a list of strokes; Google and Kaggle write each stroke as ``[[x...], [y...]]`` (simplified) or
``[[x...], [y...], [t...]]`` (raw, t in ms from the first point). Here a stroke is a float64 array of shape (n, 2) or
(n, 3) with columns x, y[, t]; x grows to the right and y downwards, as on the drawing canvas. Nothing in this module
does I/O or imports torch, so it can be tested on hand-built inputs and reused by every reader.
"""
from __future__ import annotations

import numpy as np
import orjson


class DrawingError(ValueError):
    """A drawing that cannot be used; the message is a short reason that readers count per class."""


def _check_stroke(stroke: object, dims: int | None) -> int:
    """Validate one stroke's JSON structure and return its number of coordinate lists (2 or 3)."""
    if not isinstance(stroke, list) or len(stroke) not in (2, 3):
        raise DrawingError("stroke is not a list of 2 or 3 coordinate lists")
    if dims is not None and len(stroke) != dims:
        raise DrawingError("strokes mix 2 and 3 coordinate lists")
    n = None
    for axis in stroke:
        if not isinstance(axis, list):
            raise DrawingError("coordinate list is not a list")
        if n is None:
            n = len(axis)
        elif len(axis) != n:
            raise DrawingError("x/y/t lengths differ")
    if not n:
        raise DrawingError("empty stroke")
    return len(stroke)


def check_drawing(drawing: object) -> int:
    """Validate a parsed drawing's structure and return its coordinate lists per stroke (2 simplified, 3 raw).

    Values are not inspected here (the packer checks them vectorised); :func:`parse_drawing` checks them too.
    """
    if not isinstance(drawing, list) or not drawing:
        raise DrawingError("no strokes")
    dims = None
    for stroke in drawing:
        dims = _check_stroke(stroke, dims)
    return dims


def loads_drawing(text: str | bytes) -> list[list[list[float]]]:
    """Parse the drawing JSON and check its structure without converting to arrays (prepare_data's fast path).

    Raises:
        DrawingError: bad JSON (orjson also rejects NaN/Infinity literals, which JSON does not allow), no strokes,
            empty strokes, mismatched x/y/t lengths, strokes of mixed dimensions.
    """
    try:
        drawing = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise DrawingError("bad JSON") from exc
    check_drawing(drawing)
    return drawing


def to_arrays(drawing: list) -> list[np.ndarray]:
    """Convert a structurally valid drawing to float64 arrays (n, 2|3); DrawingError for non-numeric or non-finite."""
    out = []
    for stroke in drawing:
        try:
            arr = np.array(stroke, dtype=np.float64).T.copy()
        except (TypeError, ValueError, OverflowError) as exc:
            raise DrawingError("non-numeric coordinate") from exc
        if not np.isfinite(arr).all():
            raise DrawingError("non-finite coordinate")
        out.append(arr)
    return out


def parse_drawing(text: str | bytes) -> list[np.ndarray]:
    """Parse a drawing's JSON text into a list of float64 arrays of shape (n, 2) or (n, 3) (columns x, y[, t]).

    Raises:
        DrawingError: see :func:`loads_drawing` and :func:`to_arrays`.
    """
    return to_arrays(loads_drawing(text))


def format_drawing(strokes: list[np.ndarray]) -> str:
    """Write strokes back as Google's JSON (integers where the values are whole numbers)."""
    out = []
    for s in strokes:
        cols = []
        for col in np.asarray(s).T:
            cols.append([int(v) if float(v).is_integer() else float(v) for v in col])
        out.append(cols)
    return orjson.dumps(out).decode()
