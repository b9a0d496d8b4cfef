"""Pure stroke functions: parse a Quick, Draw! drawing from its JSON text and validate it.

A drawing is a list of strokes; Google and Kaggle write each stroke as ``[[x...], [y...]]`` (simplified) or
``[[x...], [y...], [t...]]`` (raw, t in ms from the first point). Here a stroke is a float64 array of shape (n, 2) or
(n, 3) with columns x, y[, t]; x grows to the right and y downwards, as on the drawing canvas. Nothing in this module
does I/O or imports torch, so it can be tested on hand-built inputs and reused by every reader.
"""
from __future__ import annotations

import numpy as np
import orjson


# orjson before 3.9.15 recurses without a limit and crashes the process on ~1e6 nested brackets (CVE-2024-27454,
# measured: a 2 MB line killed prepare_data.py with 3.8.3); later versions stop at 1024 levels. loads_json applies
# that limit itself, so no installed version can be crashed by a hostile line.
MAX_JSON_DEPTH = 1024


class DrawingError(ValueError):
    """A drawing that cannot be used; the message is a short reason that readers count per class."""


def loads_json(text: str | bytes) -> object:
    """orjson.loads, refusing text nested deeper than MAX_JSON_DEPTH with orjson.JSONDecodeError.

    Brackets are counted as if none stood inside a string, which can only overestimate the depth; the exact count
    runs only when the text holds more than MAX_JSON_DEPTH opening brackets (a drawing has 3 per stroke).
    """
    # surrogatepass: a lone surrogate becomes bytes that orjson refuses, instead of a UnicodeEncodeError here
    raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(text)
    if raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH:
        b = np.frombuffer(raw, np.uint8)
        step = (b == ord("[")).astype(np.int32) + (b == ord("{")) - (b == ord("]")) - (b == ord("}"))
        if np.cumsum(step).max() > MAX_JSON_DEPTH:
            raise orjson.JSONDecodeError(f"nested deeper than {MAX_JSON_DEPTH} levels", "", 0)
    return orjson.loads(raw)


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
        drawing = loads_json(text)
    except orjson.JSONDecodeError as exc:
        raise DrawingError("bad JSON") from exc
    check_drawing(drawing)
    return drawing


def to_arrays(drawing: list) -> list[np.ndarray]:
    """Convert a structurally valid drawing to float64 arrays (n, 2|3); DrawingError for non-numeric or non-finite."""
    out = []
    for stroke in drawing:
        try:
            arr = np.array(stroke)
        except (TypeError, ValueError, OverflowError) as exc:  # ragged lists nested inside a coordinate list
            raise DrawingError("non-numeric coordinate") from exc
        # Only ints and floats: a float64 cast would also take "1", true or [[1]] (a 3-d array that crashed the packer),
        # and numpy turns booleans among numbers into numbers, so look for those one by one.
        if arr.ndim != 2 or arr.dtype.kind not in "iuf" or any(type(v) is bool for axis in stroke for v in axis):
            raise DrawingError("non-numeric coordinate")
        arr = np.ascontiguousarray(arr.T, dtype=np.float64)
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
