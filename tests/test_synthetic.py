"""The embedded doodle generator: deterministic, valid Google raw drawings, unique key ids, atomic ndjson files."""
import itertools
import math
import re

import numpy as np
import orjson
import pytest

from qdraw import synthetic
from qdraw.strokes import loads_drawing
from qdraw.synthetic import SYNTHETIC_CLASSES, draw, generate_records, write_ndjson

GOOGLE_FIELDS = ["word", "countrycode", "timestamp", "recognized", "key_id", "drawing"]


def _splat(drawing: list, size: int = 16) -> np.ndarray:
    """Point histogram of a drawing on a size x size grid after fitting its bounding box (a crude raster)."""
    pts = np.concatenate([np.asarray(s[:2], dtype=float).T for s in drawing])
    pts = (pts - pts.min(0)) / max(np.ptp(pts, axis=0).max(), 1e-9) * (size - 1)
    img = np.zeros((size, size))
    np.add.at(img, (pts[:, 1].round().astype(int), pts[:, 0].round().astype(int)), 1.0)
    return (img / img.sum()).ravel()


def test_class_list():
    assert len(SYNTHETIC_CLASSES) >= 12
    assert len(set(SYNTHETIC_CLASSES)) == len(SYNTHETIC_CLASSES)
    assert all(c == c.lower() and c.strip() == c for c in SYNTHETIC_CLASSES)
    assert any(" " in c for c in SYNTHETIC_CLASSES)  # exercises spaces in class names and file names


def test_same_seed_same_records_and_other_seed_differs():
    for name in ("circle", "smiley face"):
        a = list(generate_records(name, 20, seed=3))
        assert a == list(generate_records(name, 20, seed=3))
        b = list(generate_records(name, 20, seed=4))
        assert all(x["drawing"] != y["drawing"] for x, y in zip(a, b))
        assert {x["key_id"] for x in a}.isdisjoint(y["key_id"] for y in b)
    # a prefix of a longer run is the shorter run: a class's stream does not depend on n
    assert list(generate_records("star", 5, seed=0)) == list(generate_records("star", 9, seed=0))[:5]


@pytest.mark.parametrize("name", SYNTHETIC_CLASSES)
def test_every_class_gives_valid_raw_drawings(name):
    rng = np.random.default_rng(7)
    for _ in range(60):
        drawing = draw(name, rng)
        assert loads_drawing(orjson.dumps(drawing)) == drawing  # the project's own parser accepts it unchanged
        last_t = -1
        for stroke in drawing:
            assert len(stroke) == 3
            x, y, t = stroke
            assert len(x) == len(y) == len(t) >= 1
            assert all(type(v) in (int, float) and math.isfinite(v) and v >= 0 for v in x + y)
            assert all(type(v) is int for v in t)
            assert t[0] > last_t  # pen-up pause: strictly later than the previous stroke's end
            assert all(b > a for a, b in itertools.pairwise(t))  # points arrive at increasing times
            last_t = t[-1]
        assert drawing[0][2][0] == 0


def test_drawings_vary_like_hand_drawings():
    rng = np.random.default_rng(0)
    squares = [draw("square", rng) for _ in range(200)]
    assert {len(d) for d in squares} >= {1, 2, 4}  # one stroke, two L-shapes, four sides
    assert any(type(d[0][0][0]) is float for d in squares)  # some devices report fractional pixels
    widths = [max(max(s[0]) for s in d) - min(min(s[0]) for s in d) for d in squares]
    assert min(widths) < 200 < max(widths)
    durations = [d[-1][2][-1] for d in squares]
    assert min(durations) < 800 < max(durations)


def test_classes_are_separable_but_not_trivially():
    """Nearest class centroid on 16x16 point histograms: far above chance (1/16), far from perfect."""
    train = {c: np.mean([_splat(r["drawing"]) for r in generate_records(c, 150, seed=0)], axis=0)
             for c in SYNTHETIC_CLASSES}
    centroids = np.stack([train[c] for c in SYNTHETIC_CLASSES])
    hits = total = 0
    for label, name in enumerate(SYNTHETIC_CLASSES):
        for r in generate_records(name, 40, seed=1):
            hits += int(np.argmin(((centroids - _splat(r["drawing"])) ** 2).sum(1)) == label)
            total += 1
    assert 0.3 < hits / total < 0.9


def test_record_fields_and_key_ids():
    assert math.gcd(synthetic._KEY_MUL, synthetic._KEY_SPAN) == 1  # multiplication mod span is a bijection
    keys = []
    for name in SYNTHETIC_CLASSES:
        for seed in (0, 1):
            for r in generate_records(name, 25, seed):
                assert list(r) == GOOGLE_FIELDS
                assert r["word"] == name
                assert re.fullmatch(r"[A-Z]{2}", r["countrycode"])
                assert re.fullmatch(r"2017-\d\d-\d\d \d\d:\d\d:\d\d\.\d{5} UTC", r["timestamp"])
                assert type(r["recognized"]) is bool
                assert re.fullmatch(r"[1-9]\d{15}", r["key_id"])
                keys.append(r["key_id"])
    assert len(set(keys)) == len(keys)
    # pinned: key ids are part of the files' identity (train/val splits hash them), so the scheme must not drift
    assert next(generate_records("circle", 1, 0))["key_id"] == "2442695040888963"
    assert synthetic._key_id(SYNTHETIC_CLASSES.index("smiley face"), 12, 5) == "4983173727050479"


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown synthetic class"):
        draw("dragon", np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown synthetic class"):
        next(generate_records("Circle", 1, 0))
    with pytest.raises(ValueError):
        next(generate_records("circle", -1, 0))
    with pytest.raises(ValueError):
        next(generate_records("circle", 1, -5))


def test_write_ndjson(tmp_path):
    paths = write_ndjson(tmp_path / "out", 30, seed=2, classes=["smiley face", "wave"])
    assert paths == [tmp_path / "out" / "smiley face.ndjson", tmp_path / "out" / "wave.ndjson"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["smiley face.ndjson", "wave.ndjson"]  # no .tmp
    for path, name in zip(paths, ["smiley face", "wave"]):
        lines = path.read_bytes().splitlines()
        assert [orjson.loads(line) for line in lines] == list(generate_records(name, 30, seed=2))
        assert lines[0].startswith(b'{"word":"' + name.encode() + b'","countrycode":"')  # Google's compact layout


def test_write_ndjson_checks_all_names_first(tmp_path):
    with pytest.raises(ValueError, match="unknown synthetic class"):
        write_ndjson(tmp_path, 5, classes=["circle", "not a class"])
    assert list(tmp_path.iterdir()) == []


def test_write_all_classes_default(tmp_path):
    paths = write_ndjson(tmp_path, 3)
    assert [p.stem for p in paths] == SYNTHETIC_CLASSES
    assert all(len(p.read_bytes().splitlines()) == 3 for p in paths)
