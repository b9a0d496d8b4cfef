"""Rasteriser and encodings on hand-built strokes: exact pixels and exact ink counts, worked out by hand.

Geometry used throughout (qdraw/raster.py): with size 256 and margin 0 the pixel of x is
``X = (255 * (255 + 2x - c) + 255) // 510 = floor(128 + x - c / 2)``, c = xmin + xmax; a drawing spanning the whole
0..255 frame is drawn 1:1 (X = x) and a zero-height one lands on row 128.
"""
from __future__ import annotations

import numpy as np
import pytest

from data_loader_rgb import GREY, RGB
from data_loader_time import TIME
from qdraw.encoding import get_encoding, list_encodings
from qdraw.augment import Augment, augment_arrays
from qdraw.raster import Sources, check_geometry, default_line_width, draw, pack_strokes, rasterize
from qdraw.store import concat_blocks, make_block


def pts(*xy) -> np.ndarray:
    return np.array(xy, dtype=np.int64).reshape(-1, len(xy[0]))


def render(drawing: list[np.ndarray], encoding: str, size: int = 256, line_width: int = 1, margin: int = 0,
           flip: bool = False) -> np.ndarray:
    """One drawing → uint8 (C, size, size); flip mirrors it first (qdraw.augment's horizontal flip)."""
    xy, t, strokes, drawings = pack_strokes([drawing])
    if flip:
        xy, t, strokes, drawings = augment_arrays(xy, t, strokes, drawings, np.zeros(1), 0, 0,
                                                  Augment(hflip=1.0).params)
    return rasterize(xy, t, strokes, drawings, encoding, size, line_width, margin)[0]


def ink(img: np.ndarray) -> np.ndarray:
    """Pixels where any channel is non-zero: bool (S, S)."""
    return img.max(0) > 0


HLINE = [pts((0, 0), (255, 0))]  # one horizontal stroke across the frame: row 128, X = x


class TestEncodings:
    def test_registry(self):
        assert {"grey", "rgb", "time"} <= set(list_encodings())
        assert (get_encoding("grey").channels, get_encoding("rgb").channels, get_encoding("time").channels) == (1, 3, 3)
        assert get_encoding("time").needs_time and not get_encoding("rgb").needs_time
        with pytest.raises(ValueError, match="unknown encoding"):
            get_encoding("hsv")

    def test_rgb_colors(self):
        # three strokes: R = 0, round(127.5) = 128, 255; stroke 0 has steps of 5 and 6 → G = 0, round(255*5/11), 255
        xy, t, strokes, drawings = pack_strokes([[pts((0, 0), (3, 4), (3, 10)), pts((9, 9)), pts((1, 1), (1, 1))]])
        c = RGB.colors(xy, t, strokes, drawings)
        assert c.dtype == np.uint8
        assert c[:, 0].tolist() == [0, 0, 0, 128, 255, 255]
        assert c[:, 1].tolist() == [0, 116, 255, 0, 0, 0]  # 255 * 5 / 11 = 115.9; dots and zero-length strokes: 0
        assert c[:, 2].tolist() == [255] * 6

    def test_grey_colors(self):
        drawing = [pts((i, 0)) for i in range(12)]
        xy, t, strokes, drawings = pack_strokes([drawing, [pts((5, 5))]])
        c = GREY.colors(xy, t, strokes, drawings)
        assert c.shape == (13, 1)
        assert c[:, 0].tolist() == [255 - 13 * min(i, 10) for i in range(12)] + [255]

    def test_time_colors(self):
        # stroke A: 255 units in 1275 ms (speed 0.2 → f = 1/2 → 155); stroke B: zero-length after a 400 ms pause
        # (f = 1/2 → 155); T = 2550, so R runs 55 → 155 along A and is 55 + 200 * 1675/2550 = 186.4 → 186 at B[0]
        xy, t, strokes, drawings = pack_strokes([[pts((0, 0, 0), (255, 0, 1275)), pts((0, 255, 1675), (0, 255, 2550))]])
        c = TIME.colors(xy, t, strokes, drawings)
        assert c.tolist() == [[55, 155, 55], [155, 155, 55], [186, 55, 155], [255, 55, 155]]

    def test_time_needs_t(self):
        xy, t, strokes, drawings = pack_strokes([HLINE])
        with pytest.raises(ValueError, match="timing"):
            rasterize(xy, t, strokes, drawings, "time")
        with pytest.raises(ValueError, match="timing"):
            TIME.colors(xy, None, strokes, drawings)


class TestGeometry:
    @pytest.mark.parametrize("width, count", [(1, 1), (2, 4), (3, 9), (4, 12), (5, 21)])
    def test_dot(self, width, count):
        # c = 200 and 100 → X = 128 + 100 - 100 = 128, Y = 128 + 50 - 50 = 128
        img = render([pts((100, 50))], "rgb", line_width=width)
        assert ink(img).sum() == count
        assert img[:, 128, 128].tolist() == [0, 0, 255]
        if width == 4:  # offsets -1..2, corners cut
            assert not img[2, 127, 127] and not img[2, 130, 130] and img[2, 127, 128] == 255
        grey = render([pts((100, 50))], "grey", line_width=width)
        assert grey.shape == (1, 256, 256) and (grey[0] == 255).sum() == count

    def test_horizontal_line_width_1(self):
        img = render(HLINE, "rgb")
        assert ink(img).sum() == 256 and ink(img)[128].all()
        assert img[1, 128].tolist() == list(range(256))  # G = round(255 * x / 255) = x
        assert (img[0, 128] == 0).all() and (img[2, 128] == 255).all()

    def test_horizontal_line_width_3(self):
        # start disc (cols -1..1, clipped) in colour 0, spans 1..254 in G = x, end disc cols 254..256 (clipped) = 255
        img = render(HLINE, "rgb", line_width=3)
        assert ink(img).sum() == 3 * 256 and ink(img)[127:130].all()
        for row in (127, 128, 129):
            assert img[1, row].tolist() == list(range(254)) + [255, 255]

    def test_margin_and_small_image(self):
        # size 64, margin 6: E = 51, X(0) = 3315 // 510 = 6, X(255) = 29325 // 510 = 57, row (16065 + 255) // 510 = 32
        img = render(HLINE, "grey", size=64, margin=6)
        assert np.flatnonzero(img[0, 32]).tolist() == list(range(6, 58))
        assert ink(img).sum() == 52

    def test_two_strokes_later_on_top(self):
        # horizontal A on row 0 and vertical B on column 128: bbox 0..255 both ways, so X = x and Y = y
        drawing = [pts((0, 0), (255, 0)), pts((128, 0), (128, 255))]
        img = render(drawing, "rgb")
        assert ink(img).sum() == 256 + 256 - 1
        assert img[:, 0, 128].tolist() == [255, 0, 255]  # B's start: R = 255 (last stroke), G = 0
        assert img[:, 0, 127].tolist() == [0, 127, 255]
        assert img[:, 255, 128].tolist() == [255, 255, 255]
        grey = render(drawing, "grey")[0]
        assert grey[0, 127] == 255 and grey[0, 128] == 242 and grey[200, 128] == 242

    def test_aspect_ratio_kept_and_centred(self):
        # 255 x 51 rectangle: X = x, Y = floor(102.5 + y) → rows 102 and 153; 102 empty rows above and below
        rect = [pts((0, 0), (255, 0), (255, 51), (0, 51), (0, 0))]
        img = ink(render(rect, "grey"))
        assert img.sum() == 2 * 256 + 2 * 50
        assert np.flatnonzero(img.any(1)).tolist() == list(range(102, 154))
        assert img[102].all() and img[153].all() and img[102:154, 0].all() and img[102:154, 255].all()
        tall = ink(render([p[:, ::-1] for p in rect], "grey"))
        assert (tall == img.T).all()
        # size 64, margin 6: columns 6..57; rows (16065 - 2601 + 255) // 510 = 26 and 18921 // 510 = 37
        small = ink(render(rect, "grey", size=64, margin=6))
        assert np.flatnonzero(small.any(1)).tolist() == list(range(26, 38))
        assert np.flatnonzero(small.any(0)).tolist() == list(range(6, 58))

    def test_flip(self):
        img = render(HLINE, "rgb", flip=True)
        assert img[1, 128].tolist() == list(range(255, -1, -1))
        drawing = [pts((0, 0), (200, 90)), pts((30, 120))]
        a, b = render(drawing, "rgb", line_width=2), render(drawing, "rgb", line_width=2, flip=True)
        assert ink(a).sum() == ink(b).sum()
        # mirrored about the bounding box centre: the dot at x = 30 (X = 128 + 30 - 100 = 58) → X = 128 - 30 + 100
        assert a[2, 128 + 120 - 60, 58] == 255 and b[2, 128 + 120 - 60, 198] == 255

    def test_time_pixels(self):
        drawing = [pts((0, 0, 0), (255, 0, 1275)), pts((0, 255, 1675), (0, 255, 2550))]
        img = render(drawing, "time")
        assert img[:, 0, 0].tolist() == [55, 155, 55] and img[:, 0, 255].tolist() == [155, 155, 55]
        assert img[0, 0, 51] == 55 + 20  # 55 + round(100 * 51 / 255)
        assert img[:, 255, 0].tolist() == [255, 55, 155]  # the dot, in its later point's colour
        assert ink(img).sum() == 257
        assert (render([p[:, :2] for p in drawing], "rgb") > 0).any()  # raw strokes in rgb: t ignored


class TestRobustness:
    def test_arguments(self):
        assert check_geometry(128, None) == (3, 2) and default_line_width(64) == 2 and default_line_width(256) == 6
        for bad in [(4, 1), (128, 0), (128, 129), (2000, 3)]:
            with pytest.raises(ValueError):
                check_geometry(*bad)
        with pytest.raises(ValueError):
            pack_strokes([[pts((0, 0), (256, 0))]])

    def test_empty_inputs(self):
        xy, t, strokes, drawings = pack_strokes([])
        assert rasterize(xy, t, strokes, drawings, "rgb", 64).shape == (0, 3, 64, 64)
        blank = draw(np.zeros((0, 2), np.uint8), np.zeros(1, np.int64), np.zeros(2, np.int64),
                     np.zeros((0, 3), np.uint8), 64, out=np.full((1, 3, 64, 64), 9, np.uint8))
        assert not blank.any()  # a drawing without strokes is a blank image, whatever out held

    @pytest.mark.parametrize("size", [64, 256])
    @pytest.mark.parametrize("width", [1, 2, 7, "half", "full"])
    def test_never_outside_the_image(self, size, width):
        """Random drawings (many on the frame's edges), margin 0 and huge brushes: guard images either side of the
        batch stay untouched, and ink stays within the drawing's points' box grown by the brush."""
        width = {"half": size // 2, "full": size}.get(width, width)
        rng = np.random.default_rng(size + width)
        batch = []
        for _ in range(12):
            drawing = []
            for _ in range(rng.integers(1, 4)):
                p = rng.integers(0, 256, (rng.integers(1, 6), 2))
                p[rng.random(p.shape) < 0.4] = rng.choice([0, 255])
                drawing.append(p)
            batch.append(drawing)
        xy, t, strokes, drawings = pack_strokes(batch)
        guarded = np.full((len(batch) + 2, 3, size, size), 7, np.uint8)
        rasterize(xy, t, strokes, drawings, "rgb", size, width, 0, out=guarded[1:-1])
        assert (guarded[0] == 7).all() and (guarded[-1] == 7).all()
        span = int(width * np.sqrt(2) + 0.5)
        lo, hi = (span - 1) // 2, span // 2
        for b, img in enumerate(guarded[1:-1]):
            x0, x1 = strokes[drawings[b]], strokes[drawings[b + 1]]
            p = xy[x0:x1].astype(np.int64)
            c = p.min(0) + p.max(0)
            pix = ((size - 1) * 255 + (2 * p - c) * (size - 1) + 255) // 510
            cols = np.flatnonzero(ink(img).any(0))
            rows = np.flatnonzero(ink(img).any(1))
            assert rows.min() >= pix[:, 1].min() - lo and rows.max() <= pix[:, 1].max() + hi
            assert cols.min() >= pix[:, 0].min() - lo and cols.max() <= pix[:, 0].max() + hi


def test_sources_gather_equals_select():
    rng = np.random.default_rng(0)
    blocks = []
    for n in (3, 5):
        lens = rng.integers(1, 4, 2 * n)
        p = int(lens.sum())
        blocks.append(make_block(rng.integers(0, 256, (p, 2)), rng.integers(0, 9999, p), lens, np.full(n, 2),
                                 np.zeros(n), np.arange(n), np.full(n, b"US"), np.ones(n)))
    src, idx = np.array([1, 0, 1, 1, 0]), np.array([4, 2, 0, 4, 1])
    xy, t, strokes, drawings = Sources(blocks).gather(src, idx)
    want = concat_blocks([blocks[s].select([i]) for s, i in zip(src, idx)])
    assert (xy == want.xy).all() and (t == want.t).all()
    assert (strokes == want.strokes).all() and (drawings == want.drawings).all()
    for bad_src, bad_idx in ((0, 3), (1, 5), (0, -1), (2, 0), (-1, 0)):  # past a block, before it, no such block
        with pytest.raises(IndexError, match="drawing index out of range"):
            Sources(blocks).gather(np.array([1, bad_src]), np.array([0, bad_idx]))
