"""qdraw/points.py: hand-made drawings → exact feature rows (offsets, pen lifts, dt, padding, the resampling rule),
worked out by hand below; a slow reference loop on random drawings; argument checks."""
from __future__ import annotations

import numpy as np
import pytest

from qdraw.points import FEATURES, num_features, pack_points
from qdraw.raster import pack_strokes


def pts(*rows) -> np.ndarray:
    return np.array(rows, dtype=np.int64).reshape(len(rows), -1)


def rows(*r) -> np.ndarray:
    """Expected rows as float32, computed in float64 first (as the kernel does) and rounded once."""
    return np.array(r, dtype=np.float64).astype(np.float32)


def test_layout_names():
    assert FEATURES[:6] == ("valid", "x", "y", "dx", "dy", "pen_up") and FEATURES[6] == "dt"
    assert (num_features(False), num_features(True)) == (6, 7)


def test_offsets_pen_lifts_dt_and_padding():
    a = [pts((10, 20, 0), (40, 20, 100), (40, 60, 250)), pts((0, 255, 7000))]
    empty: list = []
    dot = [pts((128, 128, 0))]
    out = pack_points(*pack_strokes([a, empty, dot]), max_len=6)
    assert out.shape == (3, 6, 7) and out.dtype == np.float32
    np.testing.assert_array_equal(out[0], rows(
        [1, 10 / 255, 20 / 255, 0, 0, 0, 0],
        [1, 40 / 255, 20 / 255, 30 / 255, 0, 0, 0.1],  # 100 ms
        [1, 40 / 255, 60 / 255, 0, 40 / 255, 1, 0.15],  # the pen lifts: end of stroke 0
        [1, 0, 1, -40 / 255, 195 / 255, 1, 5.0],  # offsets cross the stroke boundary; 6750 ms capped at 5 s
        [0] * 7, [0] * 7,  # padding: all zero
    ))
    np.testing.assert_array_equal(out[1], np.zeros((6, 7), np.float32))  # no points at all
    np.testing.assert_array_equal(out[2, 0], rows([1, 128 / 255, 128 / 255, 0, 0, 1, 0])[0])
    assert not out[2, 1:].any()


def test_without_time_has_six_features():
    xy, t, strokes, drawings = pack_strokes([[pts((0, 0), (255, 51))]])
    assert t is None
    out = pack_points(xy, None, strokes, drawings, max_len=3)
    assert out.shape == (1, 3, 6)
    np.testing.assert_array_equal(out[0], rows([1, 0, 0, 0, 0, 0], [1, 1, 0.2, 1, 0.2, 1], [0] * 6))


def test_empty_stroke_is_stepped_over():
    # strokes [0, 2, 2, 3]: the middle stroke has no points; point 1 still ends stroke 0
    xy = np.array([[0, 0], [5, 0], [5, 5]], np.uint8)
    out = pack_points(xy, None, np.array([0, 2, 2, 3]), np.array([0, 3]), max_len=4)
    assert out[0, :, 5].tolist() == [0, 1, 1, 0]


def test_resampling_keeps_floor_i_n_over_l_and_every_pen_lift():
    # n = 7 points in strokes {0, 1}, {2, 3, 4, 5}, {6}; L = 3 keeps floor(i * 7 / 3) = 0, 2, 4.
    xy = [(10 * i, 5 * i) for i in range(7)]
    t = [0, 10, 1000, 1010, 7020, 7030, 9000]
    p = [pts(*[(*xy[i], t[i]) for i in idx]) for idx in ([0, 1], [2, 3, 4, 5], [6])]
    out = pack_points(*pack_strokes([p]), max_len=3)
    np.testing.assert_array_equal(out[0], rows(
        [1, 0, 0, 0, 0, 1, 0],  # stroke 0 ends (after point 1) before the next kept point 2: the lift moves here
        [1, 20 / 255, 10 / 255, 20 / 255, 10 / 255, 0, 1.0],  # stroke 1 runs past kept point 4: no lift
        [1, 40 / 255, 20 / 255, 20 / 255, 10 / 255, 1, 5.0],  # the drawing's last kept point; 6020 ms capped
    ))


def test_resampling_boundary():
    line = [pts(*[(i, 0) for i in range(5)])]
    keep_all = pack_points(*pack_strokes([line]), max_len=5)
    assert (keep_all[0, :, 1] * 255).round().tolist() == [0, 1, 2, 3, 4]
    # n = 5 > L = 4: floor(i * 5 / 4) = 0, 1, 2, 3; point 4 is dropped and point 3 takes the lift
    cut = pack_points(*pack_strokes([line]), max_len=4)
    assert (cut[0, :, 1] * 255).round().tolist() == [0, 1, 2, 3]
    assert cut[0, :, 5].tolist() == [0, 0, 0, 1]


def _reference(drawing: list[np.ndarray], max_len: int) -> np.ndarray:
    """The module docstring's rule, one point at a time in Python (rows of one drawing, with time)."""
    flat = np.concatenate(drawing)
    ends = np.cumsum([len(s) for s in drawing])  # exclusive end of each stroke
    n = len(flat)
    keep = [i * n // max_len for i in range(max_len)] if n > max_len else list(range(n))
    out = np.zeros((max_len, 7), np.float64)
    for i, k in enumerate(keep):
        nxt = keep[i + 1] if i + 1 < len(keep) else n
        end = ends[np.searchsorted(ends, k, side="right")]
        q = keep[i - 1] if i else k
        out[i] = [1, flat[k, 0] / 255, flat[k, 1] / 255, (flat[k, 0] - flat[q, 0]) / 255,
                  (flat[k, 1] - flat[q, 1]) / 255, float(end <= nxt), min(flat[k, 2] - flat[q, 2], 5000) / 1000]
    return out.astype(np.float32)


@pytest.mark.parametrize("max_len", [1, 7, 32])
def test_matches_reference_on_random_drawings(max_len: int):
    rng = np.random.default_rng(max_len)
    batch = []
    for _ in range(20):
        strokes = [rng.integers(0, 256, (rng.integers(1, 12), 2)) for _ in range(rng.integers(1, 6))]
        batch.append([np.column_stack([s, rng.integers(0, 20000, len(s))]) for s in strokes])
    out = pack_points(*pack_strokes(batch), max_len=max_len)
    for b, drawing in enumerate(batch):
        np.testing.assert_array_equal(out[b], _reference(drawing, max_len))


def test_out_is_filled_in_place():
    packed = pack_strokes([[pts((1, 2), (3, 4))], [pts((9, 9))]])
    buf = np.full((2, 3, 6), np.nan, np.float32)
    assert pack_points(*packed, max_len=3, out=buf) is buf
    np.testing.assert_array_equal(buf, pack_points(*packed, max_len=3))


def test_bad_inputs_raise_value_error():
    xy, t, strokes, drawings = pack_strokes([[pts((1, 2, 0), (3, 4, 5))]])
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="max_len"):
            pack_points(xy, t, strokes, drawings, max_len=bad)
    with pytest.raises(ValueError, match="strokes offsets"):
        pack_points(xy, t, np.array([0, 3]), drawings, max_len=4)  # past the last point
    with pytest.raises(ValueError, match="drawings offsets"):
        pack_points(xy, t, strokes, np.array([0, 2]), max_len=4)  # more strokes than there are
    with pytest.raises(ValueError, match="t \\(P,\\)"):
        pack_points(xy, t[:1], strokes, drawings, max_len=4)
    with pytest.raises(ValueError, match="xy must be"):
        pack_points(xy[:, :1], t, strokes, drawings, max_len=4)
    with pytest.raises(ValueError, match="out must be"):
        pack_points(xy, t, strokes, drawings, max_len=4, out=np.zeros((1, 4, 6), np.float32))  # F = 7 with time
    with pytest.raises(ValueError, match="out must be"):
        pack_points(xy, t, strokes, drawings, max_len=4, out=np.zeros((1, 4, 7), np.float64))
