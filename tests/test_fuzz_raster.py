"""Property tests on hostile input for the pure stroke functions: parse_drawing, simplify_drawing and the rasteriser.

parse_drawing either returns what the JSON says (float64 (n, 2|3) arrays, finite) or raises DrawingError; it is the
orjson path that has the last word on every row prepare_data.py packs, so prepare must count every bad row instead of
crashing. simplify_drawing either returns int64 points in 0..255 or raises ValueError. The rasteriser, on any valid
packed batch, never writes outside its own image (guard images around the output stay untouched, and drawing a batch
equals drawing each drawing alone), keeps ink within the brush of the drawing's points, mirrors exactly under flip, and
gives the same pixels on every call (no reads of uninitialised memory).
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from qdraw.augment import Augment, augment_arrays
from qdraw.prepare import PrepareOptions, prepare_input
from qdraw.raster import rasterize
from qdraw.simplify import normalize, simplify_drawing
from qdraw.strokes import DrawingError, parse_drawing

ROOT = Path(__file__).resolve().parents[1]
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Leaves of a drawing's coordinate lists: mostly numbers (huge, negative, fractional, 64-bit edge), then the values
# json.loads/numpy would quietly turn into numbers or extra dimensions (strings, booleans, nested lists, null).
NUMBER = st.one_of(st.integers(-5, 300), st.integers(-2**70, 2**70), st.sampled_from([2**63 - 1, 2**63, 2**64]),
                   st.floats(allow_nan=True, allow_infinity=True), st.floats(-1e3, 1e3))
LEAF = st.one_of(NUMBER, NUMBER, NUMBER, st.booleans(), st.text(max_size=2), st.none(),
                 st.lists(st.integers(0, 9), max_size=2), st.just({}))


@st.composite
def drawing_like(draw) -> object:
    """A list of strokes of 1..4 coordinate lists (mostly 2 or 3) of equal or mismatched lengths (0..6 points)."""
    dims = draw(st.sampled_from([2, 2, 3, 3, 1, 4]))
    strokes = []
    for _ in range(draw(st.integers(0, 4))):
        n = draw(st.integers(0, 6))
        axes = [draw(st.lists(LEAF, min_size=n, max_size=n)) for _ in range(dims)]
        if draw(st.integers(0, 7)) == 0:
            axes[-1].append(1)  # x/y/t length mismatch
        strokes.append(axes)
    return strokes


@st.composite
def hostile_text(draw) -> str | bytes:
    """JSON text of drawing-like or arbitrary JSON values, valid or not: truncated, deeply nested, non-UTF-8."""
    json_value = st.recursive(st.one_of(NUMBER, st.booleans(), st.none(), st.text(max_size=3)),
                              lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=2), inner,
                                                                                          max_size=2), max_leaves=16)
    value = draw(st.one_of(drawing_like(), drawing_like(), json_value))
    text = json.dumps(value)  # NaN and Infinity come out as the literals JSON forbids
    mutation = draw(st.integers(0, 6))
    if mutation == 0:
        return text[: draw(st.integers(0, len(text)))]
    if mutation == 1:
        depth = draw(st.integers(1, 3000))  # orjson stops at 1024 levels
        return "[" * depth + text + "]" * draw(st.sampled_from([0, depth]))
    if mutation == 2:
        raw = text.encode()
        cut = draw(st.integers(0, len(raw)))
        return raw[:cut] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00"])) + raw[cut:]
    if mutation == 3:
        return draw(st.binary(max_size=60))
    return text


def _check_parsed(text: str | bytes, strokes: list[np.ndarray]) -> None:
    """An accepted drawing: one float64 (n >= 1, 2|3) finite array per stroke, with exactly the JSON's values."""
    ref = json.loads(text)
    assert isinstance(strokes, list) and len(strokes) == len(ref) >= 1
    dims = {a.shape[1] for a in strokes}
    assert len(dims) == 1 and dims <= {2, 3}
    for a, r in zip(strokes, ref):
        assert a.dtype == np.float64 and a.ndim == 2 and a.shape[0] >= 1 and np.isfinite(a).all()
        assert all(type(v) in (int, float) for axis in r for v in axis)  # never a bool, str or list taken as a number
        assert np.array_equal(a, np.array(r, dtype=np.float64).T)


@FUZZ
@given(hostile_text())
def test_parse_drawing_returns_the_drawing_or_a_drawing_error(text):
    try:
        strokes = parse_drawing(text)
    except DrawingError as exc:
        assert str(exc)  # a short reason, counted per class by prepare
        return
    _check_parsed(text, strokes)


@pytest.mark.parametrize("text, reason", [
    ('[[["1", "2"], ["3", "4"]]]', "non-numeric coordinate"),
    ("[[[true, false], [1, 2]]]", "non-numeric coordinate"),
    ("[[[0], [false]]]", "non-numeric coordinate"),  # numpy makes an int array of [[0], [False]]
    ("[[[[1], [2]], [[3], [4]]]]", "non-numeric coordinate"),  # was a 3-d array that crashed the packer
    ("[[[[]], [[]]]]", "non-numeric coordinate"),
    ("[[[null], [1]]]", "non-numeric coordinate"),
    ("[" * 2000 + "]" * 2000, "bad JSON"),
    (b"[[[1], [2\xff]]]", "bad JSON"),
], ids=["strings", "booleans", "boolean among ints", "nested lists", "nested empty", "null", "2000 deep", "not utf-8"])
def test_values_json_would_coerce_are_refused(text, reason):
    with pytest.raises(DrawingError, match=reason):
        parse_drawing(text)


def test_a_million_nested_brackets_are_refused_not_a_crash():
    """orjson before 3.9.15 overflows the C stack here (CVE-2024-27454): run it in a child, so that a regression
    fails this test instead of killing pytest."""
    code = ("from qdraw.strokes import DrawingError, parse_drawing\n"
            "from qdraw.readers import ndjson_row\n"
            "deep = '[' * 10**6 + ']' * 10**6\n"
            "try:\n    parse_drawing(deep)\nexcept DrawingError as exc:\n    print(exc)\n"
            "print(ndjson_row('{\"key_id\": 1, \"drawing\": ' + deep + '}').error)\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.splitlines() == ["bad JSON", "bad JSON line"]


def test_parse_a_100k_point_stroke():
    xs = np.random.default_rng(0).integers(-10**6, 10**6, (3, 10**5))
    strokes = parse_drawing(json.dumps([xs.tolist()]))
    assert strokes[0].shape == (10**5, 3) and np.array_equal(strokes[0], xs.T)


COORD = st.one_of(st.floats(-1e6, 1e6), st.integers(-10**6, 10**6).map(float),
                  st.sampled_from([0.0, -0.0, 5e-324, 1e-300, 1e300, -1e300, 1.7e308, -1.7e308, 7e305, math.nan,
                                   math.inf, -math.inf]))


@st.composite
def raw_strokes(draw) -> list[np.ndarray]:
    """Strokes as arrays: mostly (n, 2|3) with n 0..40, sometimes a misshapen one (1-d, 1 or 4 columns)."""
    out = []
    for _ in range(draw(st.integers(0, 4))):
        cols = draw(st.sampled_from([2, 2, 3, 3, 1, 4]))
        n = draw(st.integers(0, 40))
        values = draw(st.lists(COORD, min_size=n * cols, max_size=n * cols))
        arr = np.array(values, dtype=np.float64).reshape(n, cols)
        out.append(arr.ravel() if draw(st.integers(0, 15)) == 0 else arr)
    return out


@FUZZ
@given(raw_strokes())
def test_simplify_gives_ints_in_0_255_or_a_value_error(strokes):
    try:
        out = simplify_drawing(strokes)
    except ValueError as exc:  # DrawingError is a ValueError too
        assert str(exc)
        return
    norm = normalize(strokes)
    assert len(out) == len(strokes)
    for s, n in zip(out, norm):
        assert s.dtype == np.int64 and s.ndim == 2 and s.shape[1] == 2 and len(s) >= 2
        assert s.min() >= 0 and s.max() <= 255
        assert np.array_equal(s[0], np.rint(n[0])) and np.array_equal(s[-1], np.rint(n[-1]))  # ends are kept


def test_simplify_extremes():
    """A 100k-point random walk, a drawing spanning more than float64 can scale, and points too close to tell."""
    walk = np.cumsum(np.random.default_rng(1).integers(-1, 2, (10**5, 2)), axis=0).astype(np.float64)
    (s,) = simplify_drawing([walk])
    assert s.min() >= 0 and s.max() == 255 and 2 <= len(s) < 10**5
    with pytest.raises(ValueError, match="spans"):
        simplify_drawing([np.array([[-1e308, 0.0], [1e308, 1.0]])])
    assert simplify_drawing([np.array([[5e-324, 0.0], [0.0, 0.0]])])[0].tolist() == [[255, 0], [0, 0]]


def _offsets(lengths: list[int]) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


@st.composite
def packed_batches(draw) -> dict:
    """A valid packed batch (strokes of >= 1 point, drawings of >= 0 strokes) and rasteriser settings.

    Structure and extremes come from hypothesis; bulk values from a NumPy generator seeded by it.
    """
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    drawing_lens = draw(st.lists(st.integers(0, 6), min_size=1, max_size=4))
    stroke_lens = [draw(st.integers(1, 12)) for _ in range(sum(drawing_lens))]
    p = sum(stroke_lens)
    xy = rng.integers(0, 256, (p, 2))
    edge = rng.random((p, 2)) < draw(st.sampled_from([0.0, 0.3, 1.0]))  # many points on the frame's edges
    xy[edge] = rng.choice([0, 255], int(edge.sum()))
    t_mode = draw(st.sampled_from(["increasing", "random", "constant", "extreme"]))
    t = {"increasing": np.cumsum(rng.integers(0, 500, p)), "random": rng.integers(-10**6, 10**6, p),
         "constant": np.zeros(p, np.int64), "extreme": rng.choice([-2**31, 0, 2**31 - 1], p)}[t_mode]
    size = draw(st.integers(64, 256))
    width = draw(st.one_of(st.integers(1, 8), st.integers(1, size), st.just(size)))
    margin = draw(st.one_of(st.none(), st.integers(0, size // 2 - 1)))
    return {"xy": xy.astype(np.uint8), "t": t.astype(np.int32), "strokes": _offsets(stroke_lens),
            "drawings": _offsets(drawing_lens), "size": size, "width": width, "margin": margin,
            "flip": rng.random(len(drawing_lens)) < 0.5, "encoding": draw(st.sampled_from(["grey", "rgb", "time"]))}


def _flipped(b: dict) -> np.ndarray:
    """xy with the drawings marked in b["flip"] mirrored by qdraw.augment's horizontal flip (probability 1)."""
    every = augment_arrays(b["xy"], None, b["strokes"], b["drawings"], np.arange(len(b["flip"])), 0, 0,
                           Augment(hflip=1.0).params)[0]
    point_flip = np.repeat(np.repeat(b["flip"], np.diff(b["drawings"])), np.diff(b["strokes"]))
    return np.where(point_flip[:, None], every, b["xy"])


def _draw(b: dict, out: np.ndarray | None = None, **over) -> np.ndarray:
    b = b | over
    t = b["t"] if b["encoding"] == "time" else None
    return rasterize(_flipped(b), t, b["strokes"], b["drawings"], b["encoding"], b["size"], b["width"], b["margin"],
                     out=out)


def _one(b: dict, i: int) -> dict:
    """Drawing i of batch b as a batch of its own."""
    s0, s1 = b["drawings"][i], b["drawings"][i + 1]
    p0, p1 = b["strokes"][s0], b["strokes"][s1]
    return b | {"xy": b["xy"][p0:p1], "t": b["t"][p0:p1], "strokes": b["strokes"][s0:s1 + 1] - p0,
                "drawings": np.array([0, s1 - s0]), "flip": b["flip"][i:i + 1]}


def _ink_box(b: dict, i: int) -> tuple[int, int, int, int]:
    """Rows and columns that drawing i may ink: its points' pixels (module docstring) grown by the widest span."""
    one = _one(b, i)
    p = one["xy"].astype(np.int64)
    size, width = b["size"], b["width"]
    margin = width // 2 + 1 if b["margin"] is None else b["margin"]
    ext = size - 1 - 2 * margin
    c = p.min(0) + p.max(0)
    sign = np.array([-1 if one["flip"][0] else 1, 1])
    pix = ((size - 1) * 255 + sign * (2 * p - c) * ext + 255) // 510
    span = int(width * math.sqrt(2) + 0.5)  # a diagonal step's span; the brush disc is narrower
    lo, hi = (span - 1) // 2, span // 2
    return pix[:, 1].min() - lo, pix[:, 1].max() + hi, pix[:, 0].min() - lo, pix[:, 0].max() + hi


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(packed_batches())
def test_rasterize_stays_inside_its_image(b):
    n, size = len(b["drawings"]) - 1, b["size"]
    if b["margin"] is None and b["width"] // 2 + 1 >= size // 2:
        with pytest.raises(ValueError, match="margin"):  # the default margin of a huge brush leaves no room
            _draw(b)
        return
    channels = 1 if b["encoding"] == "grey" else 3
    guarded = np.full((n + 2, channels, size, size), 7, np.uint8)
    img = _draw(b, out=guarded[1:-1])
    assert img.shape == (n, channels, size, size) and img.dtype == np.uint8
    assert (guarded[0] == 7).all() and (guarded[-1] == 7).all()
    assert np.array_equal(_draw(b), guarded[1:-1])  # the same pixels again, into fresh memory
    for i in range(n):
        assert np.array_equal(_draw(_one(b, i)), img[i : i + 1])  # no ink from or into a neighbour
        ink = img[i].max(0) > 0
        if b["drawings"][i] == b["drawings"][i + 1]:
            assert not ink.any()  # a drawing without strokes is blank
            continue
        rows, cols = np.flatnonzero(ink.any(1)), np.flatnonzero(ink.any(0))
        r0, r1, c0, c1 = _ink_box(b, i)
        assert rows.min() >= r0 and rows.max() <= r1 and cols.min() >= c0 and cols.max() <= c1


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(packed_batches())
def test_flip_equals_drawing_the_mirrored_points(b):
    """The augment's flip mirrors x about the bounding-box centre: pixel for pixel the drawing with
    x' = xmin + xmax - x (the geometry the draw kernel's own flip had before flips moved to qdraw.augment)."""
    assume(not (b["margin"] is None and b["width"] // 2 + 1 >= b["size"] // 2))
    mirrored = b["xy"].copy()
    for i in range(len(b["drawings"]) - 1):
        p0, p1 = b["strokes"][b["drawings"][i]], b["strokes"][b["drawings"][i + 1]]
        if p1 > p0 and b["flip"][i]:
            x = b["xy"][p0:p1, 0].astype(np.int64)
            mirrored[p0:p1, 0] = x.min() + x.max() - x
    no_flip = np.zeros_like(b["flip"])
    assert np.array_equal(_draw(b), _draw(b, xy=mirrored, flip=no_flip))


def _as_line(row: object, key: int) -> bytes:
    """One ndjson line: a record around a drawing-like value, or hostile text as the whole line (never blank)."""
    if not isinstance(row, (str, bytes)):
        return json.dumps({"word": "a", "countrycode": "US", "recognized": True, "key_id": str(key),
                           "drawing": row}).encode()
    line = (row if isinstance(row, bytes) else row.encode()).replace(b"\n", b" ").replace(b"\r", b" ")
    return line if line.strip() else b"?"


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(drawing_like(), hostile_text()), min_size=1, max_size=8))
def test_prepare_counts_every_hostile_row(tmp_path_factory, rows):
    """Every line of an ndjson file is either packed or counted under a reason; prepare never crashes."""
    src = tmp_path_factory.mktemp("src")
    lines = [_as_line([[[0, 255], [0, 255]]], 1)]  # one valid drawing, so that the kind can be detected
    lines += [_as_line(r, i + 2) for i, r in enumerate(rows)]
    (src / "a.ndjson").write_bytes(b"\n".join(lines) + b"\n")
    result = prepare_input(str(src), PrepareOptions(output=str(src / "store"), val_every=10**9, workers=1))
    counts = result["classes"]["a"]
    assert counts["read"] == len(lines)
    assert sum(counts["train"]) + sum(counts["val"]) + sum(Counter(counts["skipped"]).values()) == len(lines)
    assert sum(counts["train"]) >= 1
