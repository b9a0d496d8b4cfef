"""Drawing features for the stacker (qdraw.features, stack.py --drawings/--features): exact values on hand-built
blocks, the merge of a simplified store with its raw twin by key_id, and a stacker that needs them."""
import json
from pathlib import Path

import numpy as np
import pytest

import stack
from qdraw import stacking
from qdraw.features import block_features, store_features
from qdraw.metrics import ranking_metrics
from qdraw.predictions import write_predictions
from qdraw.store import FORMAT_VERSION, Store, make_block, write_block
from common import run_cli

# Three raw drawings: (x, y, t) per point, strokes as lists.
DRAWINGS = [
    [[(0, 0, 0), (10, 5, 100)], [(20, 5, 300), (20, 25, 350), (30, 25, 400)]],  # 2 strokes, 5 points
    [[(5, 5, 0), (5, 9, 50)]],  # one vertical stroke
    [[(0, 0, 0)], [(255, 0, 1000)], [(0, 255, 1500)]],  # three dots
]
EXPECTED = {"strokes": [2, 1, 3], "points": [5, 2, 3], "aspect": [31 / 26, 1 / 5, 1.0], "max_time": [400, 50, 1500],
            "draw_time": [200, 50, 0], "pause_time": [200, 0, 1500], "max_pause": [200, 0, 1000]}


def _block(drawings: list, keys: list[int], raw: bool = True, labels=None, country=(b"US", b"DE", b"US"),
           recognized=(1, 0, -1)):
    pts = [p for d in drawings for s in d for p in s]
    xy = np.array([p[:2] for p in pts], np.uint8)
    t = np.array([p[2] for p in pts], np.int32) if raw else None
    return make_block(xy, t, [len(s) for d in drawings for s in d], [len(d) for d in drawings],
                      np.zeros(len(drawings)) if labels is None else labels, keys, list(country)[:len(drawings)],
                      list(recognized)[:len(drawings)])


def _store(root: Path, kind: str, val: object | None = None, test: object | None = None,
           classes: tuple[str, ...] = ("cat",)) -> Store:
    """A minimal store: val blocks in class 0, and a test block."""
    (root / "classes" / "000").mkdir(parents=True)
    if val is not None:
        write_block(root / "classes" / "000" / "val_0000.qdb", val)
    if test is not None:
        (root / "test").mkdir()
        write_block(root / "test" / "block_0000.qdb", test)
    (root / "meta.json").write_text(json.dumps({"version": FORMAT_VERSION, "kind": kind, "classes": list(classes),
                                                "train_block_sizes": {}}))
    return Store(root)


def test_block_features_exact() -> None:
    f = block_features(_block(DRAWINGS, [1, 2, 3]))
    for name, want in EXPECTED.items():
        np.testing.assert_allclose(f[name], want, rtol=0, atol=1e-12, err_msg=name)
    np.testing.assert_array_equal(f["recognized"], [1, 0, np.nan])
    assert f["country"].tolist() == [b"US", b"DE", b"US"]


def test_block_features_simplified_have_no_times() -> None:
    f = block_features(_block(DRAWINGS, [1, 2, 3], raw=False))
    np.testing.assert_array_equal(f["strokes"], EXPECTED["strokes"])
    assert all(np.isnan(f[name]).all() for name in ("max_time", "draw_time", "pause_time", "max_pause"))


def test_store_features_merge_simplified_and_raw_twin(tmp_path: Path) -> None:
    # simplified store: key 1, 2 in val, key 9 in test (key 1's raw block differs on purpose)
    simple = _store(tmp_path / "s", "simplified", val=_block(DRAWINGS[:2][::-1], [2, 1], raw=False),
                    test=_block([DRAWINGS[2]], [9], raw=False, labels=[-1], recognized=[-1]))
    raw = _store(tmp_path / "r", "raw", val=_block(DRAWINGS[::-1], [1, 3, 4]))  # key 1's "raw twin", and others
    keys, f = store_features([simple, raw])
    assert keys.tolist() == [1, 2, 3, 4, 9]
    np.testing.assert_array_equal(f["strokes"], [2, 1, 1, 2, 3])  # key 1: the simplified store (first) wins
    np.testing.assert_array_equal(f["max_time"], [1500, np.nan, 50, 400, np.nan])  # times only from the raw one
    assert f["country"].tolist() == [b"DE", b"US", b"DE", b"US", b"US"]


def _ambiguous_models(n: int, seed: int = 0) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """Two models that cannot tell class 0 from class 1 (equal probabilities), while the stroke count can."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    strokes = np.where(labels == 0, 1, np.where(labels == 1, 4, rng.integers(1, 6, n))).astype(np.float32)
    probs = []
    for noise in (0.5, 0.7):
        z = np.exp(3 * np.eye(4)[labels] + noise * rng.normal(size=(n, 4)))
        pair = labels < 2
        z[pair, 0] = z[pair, 1] = np.maximum(z[pair, 0], z[pair, 1])
        probs.append(z / z.sum(1, keepdims=True))
    return labels, probs, strokes[:, None]


def test_stacker_uses_drawing_features() -> None:
    labels, probs, strokes = _ambiguous_models(400)
    params = stacking.lgb_params(min_data_in_leaf=5, threads=1)
    splits = stacking.make_splits(len(labels), 0.25, 0, seed=0)
    held = splits[0]
    plain = stacking.fit_stacker(probs, labels, 3, True, splits, params, 300, 50)[1]
    extras = stacking.Extras(strokes, ["strokes"], True)
    boosters, with_f = stacking.fit_stacker(probs, labels, 3, True, splits, params, 300, 50, extras)
    assert boosters[0].feature_name()[-2:] == ["strokes", "class"]
    gain = ranking_metrics(with_f, labels[held])["top1"] - ranking_metrics(plain, labels[held])["top1"]
    assert gain > 0.15  # about half the drawings are a 0/1 coin flip without the strokes


def test_cli_drawings_importance_and_missing_test_feature(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    labels, probs, strokes = _ambiguous_models(200, seed=1)
    classes = ["c0", "c1", "c2", "c3"]
    keys = np.arange(200) + 1000
    drawings = [[[(i % 7, 0, 0), (i % 7 + 3, 9, 40)]] * int(s) for i, s in enumerate(strokes[:, 0])]
    val_keys, test_keys = keys[:150], keys[150:]
    rec = [1] * 200
    _store(tmp_path / "st", "simplified",
           val=_block(drawings[:150], val_keys.tolist(), raw=False, country=[b"US"] * 150, recognized=rec),
           test=_block(drawings[150:], test_keys.tolist(), raw=False, labels=[-1] * 50, country=[b"FR"] * 50,
                       recognized=[-1] * 50), classes=("c0",))
    val, test = [], []
    for m, p in enumerate(probs):
        val.append(str(tmp_path / f"v{m}.csv"))
        test.append(str(tmp_path / f"t{m}.csv"))
        write_predictions(val[-1], val_keys, p[:150], classes)
        write_predictions(test[-1], test_keys, p[150:], classes)
    (tmp_path / "labels.csv").write_text("key_id,word\n" + "".join(f"{k},c{y}\n" for k, y in zip(val_keys, labels)))
    imp = tmp_path / "imp.csv"
    run_cli(stack, ["--val", *val, "--labels", str(tmp_path / "labels.csv"), "--test", *test,
                                 "--drawings", str(tmp_path / "st"), "--importance", str(imp), "--min-data-in-leaf",
                                 "5", "--threads", "1", "--top-k", "3", "--preds", str(tmp_path / "s.csv"),
                                 "--model-out", str(tmp_path / "m.txt")])
    out = capsys.readouterr().out
    assert "note: feature recognized dropped" in out and "feature max_time: a value for 0.0% / 0.0%" in out
    assert "feature country: a value for 100.0% / 0.0%" in out  # FR unseen in validation: an unknown category
    rows = imp.read_text().splitlines()
    gain = {r.split(",")[0]: float(r.split(",")[1]) for r in rows[1:]}
    assert rows[0] == "feature,gain,gain_share,splits" and gain["strokes"] > 0 and "country" not in gain
    spec = json.loads((tmp_path / "m.txt.features.json").read_text())
    assert spec["features"] == ["strokes", "points", "aspect"] and spec["country"] == ["US"]


def test_cli_drawing_features_need_drawings(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit, match="^error: .*need --drawings"):
        run_cli(stack, ["--val", "v.csv", "--labels", "l.csv", "--features",
                                                       "class,strokes"])
    with pytest.raises(SystemExit, match="^error: "):
        run_cli(stack, ["--val", "v.csv", "--labels", "l.csv", "--features", "colour"])
