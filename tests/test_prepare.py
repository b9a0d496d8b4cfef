"""prepare_data: every layout, counts, malformed rows, the split, the fast parser against orjson, reruns."""
from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from qdraw.pack import is_validation, pack_file, rows_to_block
from qdraw.prepare import PrepareOptions, prepare_input
from qdraw.readers import read_kaggle_train, read_ndjson
from qdraw.store import Store, read_block

ROOT = Path(__file__).resolve().parents[1]
FEW = ["airplane", "cat", "The Eiffel Tower", "eye"]


def _rows(path: Path) -> int:
    lines = [ln for ln in path.read_bytes().splitlines() if ln.strip()]
    return len(lines) - (path.suffix == ".csv")


def _all_blocks(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.qdb"))}


@pytest.mark.parametrize("layout,ext", [("kaggle/train_simplified", "csv"), ("kaggle/train_raw", "csv"),
                                        ("simplified", "ndjson"), ("raw", "ndjson")])
def test_real_layouts_counts(shared_data, tmp_path, layout, ext):
    res = prepare_input(str(shared_data / layout), PrepareOptions(output=str(tmp_path), classes=",".join(FEW)))
    store = Store(tmp_path)
    assert store.classes == sorted(FEW) == ["The Eiffel Tower", "airplane", "cat", "eye"]  # case-sensitive order
    assert store.kind == ("raw" if "raw" in layout else "simplified")
    for c, name in enumerate(store.classes):
        expected = _rows(shared_data / layout / f"{name}.{ext}")
        st = res["classes"][name]
        assert st["read"] == expected and sum(st["train"]) + sum(st["val"]) == expected, name
        packed = sum(len(read_block(p)) for p in store.train_blocks(c) + store.val_blocks(c))
        assert packed == expected
    if layout.startswith("kaggle"):
        kind = store.kind
        sol = (shared_data / "kaggle" / f"test_{kind}_solution.csv").read_text().splitlines()[1:]
        wanted = sum(1 for ln in sol if ln.split(",")[1].replace("_", " ") in FEW)
        test = [read_block(p) for p in store.test_blocks()]
        assert sum(len(b) for b in test) == wanted and all((b.label >= 0).all() for b in test)


def test_full_kaggle_store_counts(shared_data, tmp_path):
    src = shared_data / "kaggle/train_simplified"
    res = prepare_input(str(src), PrepareOptions(output=str(tmp_path), workers=2))
    assert len(res["classes"]) == 345
    assert sum(s["read"] for s in res["classes"].values()) == sum(_rows(p) for p in src.glob("*.csv"))
    assert res["test"]["read"] == _rows(shared_data / "kaggle/test_simplified.csv")
    assert (tmp_path / "classes.txt").read_text().splitlines() == sorted(p.stem for p in src.glob("*.csv"))


@pytest.mark.parametrize("layout,reader,fmt", [("simplified", read_ndjson, "ndjson"), ("raw", read_ndjson, "ndjson"),
                                               ("kaggle/train_raw", read_kaggle_train, "kaggle_train")])
def test_fast_parser_equals_orjson_path(shared_data, tmp_path, layout, reader, fmt):
    """Every real row packed by the numba parser equals the orjson path's result, floats included."""
    kind = "raw" if "raw" in layout else "simplified"
    for name in FEW:
        path = next((shared_data / layout).glob(f"{name}.*"))
        out = tmp_path / name
        out.mkdir()
        pack_file(path, fmt, kind, lambda b: np.zeros(len(b), np.int16), out, 10**6, None)
        fast = read_block(out / "train_0000.qdb")
        slow, pos = rows_to_block(list(reader(path)), kind, Counter())
        assert len(pos) == len(fast) == _rows(path)
        for field in ("xy", "t", "strokes", "drawings", "key_id", "country", "recognized"):
            a, b = getattr(fast, field), getattr(slow, field)
            assert (a is None and b is None) or np.array_equal(a, b), (name, field)


def test_split_is_by_key_id_and_stable(shared_data, tmp_path):
    opts = dict(classes="cat,airplane", val_every=5)
    prepare_input(str(shared_data / "raw"), PrepareOptions(output=str(tmp_path / "r"), **opts))
    prepare_input(str(shared_data / "simplified"), PrepareOptions(output=str(tmp_path / "s"), **opts))
    prepare_input(str(shared_data / "simplified"), PrepareOptions(output=str(tmp_path / "s2"), block_size=7, **opts))

    def keys(root, split):
        st = Store(root)
        files = [p for c in range(2) for p in (st.train_blocks(c) if split == "train" else st.val_blocks(c))]
        return set(np.concatenate([read_block(p).key_id for p in files]).tolist())

    raw_val, simp_val = keys(tmp_path / "r", "val"), keys(tmp_path / "s", "val")
    simp_train = keys(tmp_path / "s", "train")
    shared_keys = (raw_val | keys(tmp_path / "r", "train")) & (simp_val | simp_train)
    assert len(shared_keys) > 30
    assert raw_val & shared_keys == simp_val & shared_keys  # the same drawing lands on the same side
    assert keys(tmp_path / "s2", "val") == simp_val  # block size does not move the split
    assert 0.1 < len(simp_val) / (len(simp_val) + len(simp_train)) < 0.3
    assert is_validation(np.array(sorted(simp_val)), 5).all()


def test_raw_normalisation_hand_worked(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    rec = {"word": "a", "countrycode": "US", "recognized": True, "key_id": "7",
           "drawing": [[[10.0, 110, 210], [60, 60, 160], [100, 150, 400]], [[10], [60], [900]]]}
    (src / "a.ndjson").write_text(json.dumps(rec) + "\n")
    prepare_input(str(src), PrepareOptions(output=str(tmp_path / "o"), val_every=10**9))
    b = read_block(tmp_path / "o/classes/000/train_0000.qdb")
    # aligned to (10, 60), scaled by 255/200: x 0, 127.5 -> 128 (half to even), 255; times from the first point
    assert [d.tolist() for d in b.drawing(0)] == [[[0, 0, 0], [128, 0, 50], [255, 128, 300]], [[0, 0, 800]]]


BAD_CSV = [
    'US,"[[[1, 2], [3, 4]]]",11,True,2017-01-01,a',     # good
    'US,"[[[1, 2], [3]]]",12,True,2017-01-01,a',        # x/y lengths differ
    'US,"[]",13,True,2017-01-01,a',                     # no strokes
    'US,"[[[1, 2], [3, 4]",14,True,2017-01-01,a',       # truncated JSON
    'US,"[[[1, NaN], [3, 4]]]",15,True,2017-01-01,a',   # NaN
    'US,"[[[1, 300], [3, 4]]]",16,True,2017-01-01,a',   # outside 0..255
    'US,"[[[1, 2], [3, 4]]]",notanumber,True,2017,a',   # bad key_id
    'US,"[[[1, 2], [3, 4], [0, 5]]]",17,True,2017,a',   # raw drawing in a simplified store
    'US,"[[[], []]]",18,True,2017-01-01,a',             # empty stroke
    'FR,"[[[5], [6]]]",19,False,2017-01-01,a',          # good: a dot
]


def test_malformed_rows_are_counted_not_fatal(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    body = "countrycode,drawing,key_id,recognized,timestamp,word\n" + "\n".join(BAD_CSV) + "\n"
    (src / "a.csv").write_bytes(body.encode() + b'US,"[[[1, \xff], [3, 4]]]",20,True,2017,a\n')  # non-UTF-8
    res = prepare_input(str(src), PrepareOptions(output=str(tmp_path / "o"), val_every=10**9))
    st = res["classes"]["a"]
    assert st["read"] == 11 and st["train"] == [2]
    assert st["skipped"] == {"x/y/t lengths differ": 1, "no strokes": 1, "bad JSON": 3, "bad CSV row": 1,
                             "coordinate outside 0..255 or fractional": 1, "raw drawing in a simplified store": 1,
                             "empty stroke": 1}
    b = read_block(tmp_path / "o/classes/000/train_0000.qdb")
    assert b.key_id.tolist() == [11, 19] and b.country.tolist() == [b"US", b"FR"] and b.recognized.tolist() == [1, 0]


def test_rerun_skips_finished_and_refuses_other_settings(shared_data, tmp_path):
    opts = PrepareOptions(output=str(tmp_path), classes="cat,eye")
    prepare_input(str(shared_data / "simplified"), opts)
    before = _all_blocks(tmp_path)
    (tmp_path / "classes/.001.tmp999").mkdir()  # debris of a killed run is ignored and never read
    res = prepare_input(str(shared_data / "simplified"), opts)
    assert all(s.get("reused") for s in res["classes"].values())
    assert _all_blocks(tmp_path) == before
    with pytest.raises(ValueError, match="other settings"):
        prepare_input(str(shared_data / "simplified"), PrepareOptions(output=str(tmp_path), classes="cat,eye",
                                                                      block_size=5))


@pytest.mark.parametrize("argv,message", [
    (["--input", "/nonexistent/x", "--output", "o"], "no such folder"),
    (["--input", ".", "--output", "o", "--classes", "nope"], "holds no .ndjson or .csv"),
    (["--input", "tests", "--output", "o", "--block-size", "0"], "--block-size"),
])
def test_cli_errors_are_one_line(tmp_path, argv, message):
    res = subprocess.run([sys.executable, str(ROOT / "prepare_data.py"), *argv], cwd=tmp_path, capture_output=True,
                         text=True)
    assert res.returncode != 0
    assert message in res.stderr and "Traceback" not in res.stderr
