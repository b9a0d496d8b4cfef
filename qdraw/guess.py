"""One drawing from a web request to the image a model sees, through the code prepare_data.py packs with.

A request carries Google's ``drawing`` field: raw strokes ``[[x...], [y...], [t...]]`` (canvas pixels, t in ms from
the first point, as the game records them) or simplified ones ``[[x...], [y...]]`` (integers 0..255). It is checked
here (structure, point count, finite numbers in range) and turned into a packed Block by qdraw.pack.rows_to_block,
the very function that packs a file's rows, so a drawing is prepared as the model's training data was:

- a model trained on simplified strokes gets raw strokes simplified by qdraw.simplify (Google's algorithm: align to
  the top-left, scale to 0..255, resample at 1 px, RDP epsilon 2), and simplified strokes as they are;
- a model trained on raw strokes (every time encoding) gets raw strokes aligned and scaled (prepare's raw step),
  times kept; simplified strokes only when its encoding needs no time.

Then the model's render stage (qdraw.render) turns a batch of them into its input. Nothing here does I/O.
"""
from __future__ import annotations

import base64
import datetime
import re
import secrets
from collections import Counter
from dataclasses import dataclass

import cv2
import numpy as np
import orjson

from .batch import StrokeBatch
from .pack import rows_to_block
from .render import InputSpec, make_render
from .readers import Row
from .simplify import simplify_drawing, to_google_lists
from .store import Block, concat_blocks
from .strokes import DrawingError, check_drawing, loads_json, to_arrays

WORD_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 '\-]{0,63}$")  # a class name that is also a safe file name


class RequestError(ValueError):
    """A request the server refuses: an HTTP status (4xx) and a one-line reason."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Limits:
    """What one request may hold. Coordinates may be negative: the game records the pen outside its canvas (191 of
    the 6,346 shared raw/simplified pairs go below 0, down to -1013), and simplification aligns them; the bound only
    keeps numbers canvas-sized (the slice spans -1013..2755)."""

    max_body_bytes: int = 1 << 20
    max_points: int = 20_000  # the slice's longest raw drawing has 1,170 points
    max_coord: float = 100_000.0  # canvas pixels, either sign
    max_time: float = 86_400_000.0  # ms: a day


def parse_body(body: bytes, limits: Limits) -> dict:
    """The request's JSON object (orjson, depth-limited; NaN and Infinity are not JSON and are refused)."""
    if len(body) > limits.max_body_bytes:
        raise RequestError(413, f"request body over {limits.max_body_bytes} bytes")
    try:
        obj = loads_json(body)
    except orjson.JSONDecodeError as exc:
        raise RequestError(400, f"body is not JSON ({str(exc).splitlines()[0][:120]})") from None
    if not isinstance(obj, dict) or "drawing" not in obj:
        raise RequestError(422, "body must be a JSON object with a 'drawing' field")
    return obj


def read_drawing(drawing: object, limits: Limits) -> list[np.ndarray]:
    """Validated strokes, float64 (n, 2) or (n, 3) each (columns x, y[, t]); RequestError with the reason."""
    try:
        dims = check_drawing(drawing)
        points = sum(len(stroke[0]) for stroke in drawing)
        if points > limits.max_points:
            raise RequestError(413, f"drawing has {points} points; at most {limits.max_points}")
        arrays = to_arrays(drawing)
    except DrawingError as exc:
        raise RequestError(422, f"bad drawing: {exc}") from None
    xy = np.concatenate([a[:, :2] for a in arrays])
    if dims == 2 and (xy.min() < 0 or xy.max() > 255 or (xy != np.floor(xy)).any()):
        raise RequestError(422, "simplified strokes (no t) must hold integers in 0..255; send raw strokes with t "
                                "for canvas coordinates")
    if np.abs(xy).max() > limits.max_coord:
        raise RequestError(422, f"coordinate {np.abs(xy).max():.4g} is out of range (|x|, |y| <= {limits.max_coord:g})")
    if dims == 3:
        t = np.concatenate([a[:, 2] for a in arrays])
        if t.min() < 0 or t.max() > limits.max_time:
            raise RequestError(422, f"times must be ms in 0..{limits.max_time:g}, got {t.min():g}..{t.max():g}")
    return arrays


def to_block(strokes: list[np.ndarray], data_kind: str, spec: InputSpec) -> Block:
    """The drawing packed as the model's training data was (module docstring): a one-drawing Block."""
    raw = strokes[0].shape[1] == 3
    try:
        make_render(spec).check_data(raw, "this drawing")
    except ValueError as exc:
        raise RequestError(422, str(exc)) from None
    if raw and data_kind == "simplified":
        strokes, raw = simplify_drawing(strokes), False
    lists = [np.asarray(s).T.tolist() for s in strokes] if raw else to_google_lists(strokes)
    skipped: Counter = Counter()
    block, _ = rows_to_block([Row(0, lists)], "raw" if raw else "simplified", skipped)
    if len(block) != 1:
        raise RequestError(422, f"bad drawing: {', '.join(skipped) or 'not packable'}")
    return block


def render(blocks: list[Block], spec: InputSpec) -> np.ndarray:
    """The model's input for the drawings, rendered as its loader renders them (qdraw.render): uint8 pictures
    (B, C, S, S) or float32 point sequences (B, L, F)."""
    block = concat_blocks(blocks)
    n = len(block)
    batch = StrokeBatch(block.xy, block.t, block.strokes, block.drawings, np.full(n, -1, np.int64), np.arange(n))
    return make_render(spec)(batch)


def top_guesses(probs: np.ndarray, classes: list[str], k: int = 3) -> list[dict]:
    """The k most probable words of one row of probabilities, best first."""
    order = np.argsort(-probs, kind="stable")[:k]
    return [{"word": classes[i], "probability": round(float(probs[i]), 6)} for i in order]


def png_data_url(image: np.ndarray) -> str:
    """One uint8 (C, S, S) image as a PNG data URL: channels as R, G, B (one channel: grey), as visualize.py
    shows them."""
    pic = image[0] if image.shape[0] == 1 else np.ascontiguousarray(image[:3].transpose(1, 2, 0)[:, :, ::-1])
    ok, buf = cv2.imencode(".png", pic)
    assert ok, "cv2 could not encode a uint8 image"
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode()


def check_word(word: object) -> str:
    """The word a user gave a drawing, if it can name a class (and its <word>.ndjson file)."""
    if not isinstance(word, str) or not WORD_RE.match(word):
        raise RequestError(422, "word must be 1-64 letters, digits, spaces, hyphens or apostrophes")
    return word


def raw_record(drawing: list, word: str, recognized: bool) -> bytes:
    """One line of Google's raw ndjson for a drawing a user labelled (key_id random, country unknown: "ZZ")."""
    word = check_word(word)
    now = datetime.datetime.now(datetime.timezone.utc)
    rec = {"word": word, "countrycode": "ZZ", "timestamp": now.strftime("%Y-%m-%d %H:%M:%S.%f UTC"),
           "recognized": bool(recognized), "key_id": str(secrets.randbelow(9 * 10**15) + 10**15), "drawing": drawing}
    return orjson.dumps(rec) + b"\n"
