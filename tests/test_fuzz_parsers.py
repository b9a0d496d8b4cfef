"""Property tests: hostile rows never crash the packer, and the numba fast path agrees with the orjson path.

Each generated row goes through qdraw.pack's chunk parser (numba, with its orjson fallback) and through the pure orjson
path (rows_to_block); both must keep exactly the same drawings with the same values and count the same rejections.
"""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qdraw.pack import _Parser, rows_to_block
from qdraw.readers import TRAIN_COLUMNS, csv_columns, kaggle_row, ndjson_row, split_csv_line

HEADER = "countrycode,drawing,key_id,recognized,timestamp,word"

number = st.one_of(
    st.integers(-5, 300), st.integers(-2**40, 2**40),
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.floats(-1000, 1000).map(lambda v: round(v, 3)))


@st.composite
def stroke(draw, dims: int):
    n = draw(st.integers(0, 6))
    cols = [draw(st.lists(number, min_size=n, max_size=n)) for _ in range(dims)]
    if draw(st.integers(0, 9)) == 0:  # a length mismatch now and then
        cols[-1] = cols[-1] + [1]
    return cols


@st.composite
def drawing_text(draw):
    dims = draw(st.sampled_from([2, 3]))
    strokes = draw(st.lists(stroke(dims), min_size=0, max_size=4))
    text = json.dumps(strokes)
    mutation = draw(st.integers(0, 7))
    if mutation == 0:
        text = text[: draw(st.integers(0, len(text)))]  # truncated
    elif mutation == 1:
        text = text.replace("1", "NaN", 1)
    elif mutation == 2:
        text = "[" * draw(st.integers(1, 40)) + text + "]" * draw(st.integers(0, 40))  # deep nesting
    elif mutation == 3:
        text = text.replace(", ", ",  ").replace("[", "[ ")  # unusual whitespace, still valid JSON
    return text


def _both(lines: list[bytes], fmt: str, kind: str):
    skipped_fast, skipped_slow = Counter(), Counter()
    p = _Parser("<fuzz>", fmt, kind, skipped_fast)
    if fmt == "kaggle_train":
        p._csv_header(HEADER.encode())
        cols = csv_columns(HEADER.split(","), TRAIN_COLUMNS)
        rows = [kaggle_row(cols, split_csv_line(ln.decode("utf-8", "replace"))) for ln in lines if ln.strip()]
    else:
        rows = [ndjson_row(ln.decode("utf-8", "replace")) for ln in lines if ln.strip()]
    fast = p._parse(b"".join(ln + b"\n" for ln in lines), None)
    slow, _ = rows_to_block(rows, kind, skipped_slow)
    return fast, slow, +skipped_fast, +skipped_slow


def _assert_same(fast, slow):
    for name in ("xy", "t", "strokes", "drawings", "key_id", "country", "recognized"):
        a, b = getattr(fast, name), getattr(slow, name)
        assert (a is None and b is None) or np.array_equal(a, b), name
    assert fast.xy.dtype == np.uint8  # coordinates stay inside the 0..255 frame by construction


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(drawing_text(), min_size=1, max_size=5), st.sampled_from(["simplified", "raw"]))
def test_csv_rows_fast_equals_orjson(texts, kind):
    lines = [f'US,"{t}",{1000 + i},True,2017-01-01,a'.encode() for i, t in enumerate(texts)]
    fast, slow, sf, ss = _both(lines, "kaggle_train", kind)
    _assert_same(fast, slow)
    assert sf == ss


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(drawing_text(), min_size=1, max_size=5), st.sampled_from(["simplified", "raw"]))
def test_ndjson_rows_fast_equals_orjson(texts, kind):
    lines = [('{"word":"a","countrycode":"DE","recognized":false,"key_id":"%d","drawing":%s}' % (5 + i, t)).encode()
             for i, t in enumerate(texts)]
    fast, slow, sf, ss = _both(lines, "ndjson", kind)
    _assert_same(fast, slow)
    assert sf == ss


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(max_size=80), min_size=1, max_size=6))
def test_random_bytes_never_crash(blobs):
    lines = [b.replace(b"\n", b" ") for b in blobs]
    for fmt in ("kaggle_train", "ndjson"):
        fast, slow, sf, ss = _both(lines, fmt, "raw")
        _assert_same(fast, slow)
        assert sum(sf.values()) == sum(1 for ln in lines if ln.strip()) - len(fast)


def test_long_stroke():
    n = 10**5
    xs = np.random.default_rng(0).integers(0, 256, n).tolist()
    line = f'US,"{json.dumps([[xs, xs[::-1]]])}",1,True,2017,a'.encode()
    fast, slow, _, _ = _both([line], "kaggle_train", "simplified")
    _assert_same(fast, slow)
    assert len(fast.xy) == n
