"""Every input format against the ndjson it was written from: Google binary, Sketch-RNN stroke-3, gzip; bad files.

The tests write real shared drawings into each format (the published layouts, by qdraw.binfmt / qdraw.sketchrnn's
writers) and compare the stores point for point with the ndjson store. Bad files: counted skips per bad record,
one error line for a file that cannot be read, a refused pickle payload that never runs.
"""
from __future__ import annotations

import gzip
import os
import shutil
import struct
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import orjson
import pytest

from qdraw.binfmt import BinParser, encode_drawing, unix_seconds
from qdraw.formats import FormatError, scan_folder
from qdraw.pack import is_validation, normalise
from qdraw.prepare import PrepareOptions, pack_eval_input, prepare_input
from qdraw.sketchrnn import NpzParser, key_ids, load_split, to_stroke3, write_npz
from qdraw.store import Store, concat_blocks

ROOT = Path(__file__).resolve().parents[1]
FEW = ["The Eiffel Tower", "airplane", "cat", "eye"]
FIELDS = ("xy", "strokes", "drawings", "label", "key_id", "country", "recognized")


def _records(path: Path) -> list[dict]:
    return [orjson.loads(ln) for ln in path.read_bytes().splitlines() if ln.strip()]


def _strokes(rec: dict) -> list[np.ndarray]:
    return [np.array(s, np.int64).T for s in rec["drawing"]]


def _bin(recs: list[dict]) -> bytes:
    return b"".join(encode_drawing(int(r["key_id"]), r["countrycode"], r["recognized"], unix_seconds(r["timestamp"]),
                                   _strokes(r)) for r in recs)


def _thirds(items: list) -> dict[str, list]:
    """The split written into the test .npz files: first 80 % train, next 10 % valid, last 10 % test."""
    a, b = len(items) * 8 // 10, len(items) * 9 // 10
    return {"train": items[:a], "valid": items[a:b], "test": items[b:]}


@pytest.fixture(scope="module")
def converted(shared_data, tmp_path_factory) -> dict[str, Path]:
    """FEW's real simplified drawings as .bin, .bin.gz, .ndjson.gz, .npz, and the Kaggle CSVs as .csv.gz."""
    root = tmp_path_factory.mktemp("formats")
    dirs = {k: root / k for k in ("bin", "bin_gz", "ndjson_gz", "npz", "csv_gz")}
    for d in dirs.values():
        d.mkdir()
    for word in FEW:
        src = shared_data / "simplified" / f"{word}.ndjson"
        recs = _records(src)
        data = _bin(recs)
        (dirs["bin"] / f"{word}.bin").write_bytes(data)
        (dirs["bin_gz"] / f"{word}.bin.gz").write_bytes(gzip.compress(data, mtime=0))
        (dirs["ndjson_gz"] / f"{word}.ndjson.gz").write_bytes(gzip.compress(src.read_bytes(), mtime=0))
        write_npz(dirs["npz"] / f"{word}.npz", _thirds([to_stroke3(_strokes(r)) for r in recs]))
        csv = shared_data / "kaggle" / "train_simplified" / f"{word}.csv"
        (dirs["csv_gz"] / f"{word}.csv.gz").write_bytes(gzip.compress(csv.read_bytes(), mtime=0))
    return dirs


def _prepare(src: Path, out: Path, **kw) -> dict:
    return prepare_input(str(src), PrepareOptions(output=str(out), no_test=True, workers=1, **kw))


def _blocks(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.qdb"))}


def _assert_same_drawings(a: Path, b: Path) -> None:
    """Two stores hold the same drawings with the same metadata, block by block, compared array by array."""
    sa, sb = Store(a), Store(b)
    assert sa.classes == sb.classes and sa.kind == sb.kind
    for c in range(sa.num_classes):
        for pa, pb in zip(sa.train_blocks(c) + sa.val_blocks(c), sb.train_blocks(c) + sb.val_blocks(c), strict=True):
            ba, bb = sa.read_block(pa), sb.read_block(pb)
            for f in FIELDS:
                assert np.array_equal(getattr(ba, f), getattr(bb, f)), (pa, f)


def test_bin_store_equals_ndjson_store(shared_data, converted, tmp_path):
    ref = _prepare(shared_data / "simplified", tmp_path / "nd", classes=",".join(FEW))
    got = _prepare(converted["bin"], tmp_path / "bin")
    _assert_same_drawings(tmp_path / "nd", tmp_path / "bin")
    assert _blocks(tmp_path / "nd") == _blocks(tmp_path / "bin")  # down to the bytes (CRCs included)
    assert {c: s["read"] for c, s in got["classes"].items()} == {c: s["read"] for c, s in ref["classes"].items()}
    assert Store(tmp_path / "bin").meta["layout"] == "bin"


@pytest.mark.parametrize("kind,reference", [("bin_gz", "bin"), ("ndjson_gz", "simplified"),
                                            ("csv_gz", "kaggle/train_simplified")])
def test_gzip_store_equals_plain_store(shared_data, converted, tmp_path, kind, reference):
    ref = converted["bin"] if reference == "bin" else shared_data / reference
    _prepare(ref, tmp_path / "plain", classes=",".join(FEW))
    _prepare(converted[kind], tmp_path / "gz")
    _assert_same_drawings(tmp_path / "plain", tmp_path / "gz")
    assert _blocks(tmp_path / "plain") == _blocks(tmp_path / "gz")


def test_gzip_is_detected_by_content_not_name(shared_data, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    data = (shared_data / "simplified" / "eye.ndjson").read_bytes()
    (src / "eye.ndjson").write_bytes(gzip.compress(data))  # compressed, without .gz
    _prepare(src, tmp_path / "a")
    _prepare(shared_data / "simplified", tmp_path / "b", classes="eye")
    assert _blocks(tmp_path / "a") == _blocks(tmp_path / "b")


def _normalised(rec: dict) -> np.ndarray:
    """The documented frame for stroke-3 drawings: align to 0, scale the larger side to 255 (Google's first steps)."""
    pts = np.concatenate(_strokes(rec)).astype(np.float64)
    xy, _, ok = normalise(pts[:, 0], pts[:, 1], np.zeros(len(pts)), np.array([len(pts)]), "raw", Counter())
    assert ok.all()
    return xy


def test_npz_store_keeps_the_files_split_and_every_point(shared_data, converted, tmp_path):
    res = _prepare(converted["npz"], tmp_path / "st")
    store = Store(tmp_path / "st")
    assert store.classes == sorted(FEW) and store.kind == "simplified" and store.meta["split"] == "file"
    test = [store.read_block(p) for p in store.test_blocks()]
    for c, word in enumerate(store.classes):
        parts = _thirds(_records(shared_data / "simplified" / f"{word}.ndjson"))
        blocks = {"train": [store.read_block(p) for p in store.train_blocks(c)],
                  "valid": [store.read_block(p) for p in store.val_blocks(c)],
                  "test": [b.select(np.flatnonzero(b.label == c)) for b in test]}
        for split, recs in parts.items():
            got = concat_blocks(blocks[split]) if blocks[split] else None
            assert len(recs) == (0 if got is None else len(got)), (word, split)
            if not recs:
                continue
            assert np.array_equal(got.key_id, key_ids(word, split, np.arange(len(recs))))
            assert (got.country == b"").all() and (got.recognized == -1).all() and (got.label == c).all()
            for i, rec in enumerate(recs):
                strokes = got.drawing(i)
                assert [len(s) for s in strokes] == [len(s[0]) for s in rec["drawing"]], (word, split, i)
                assert np.array_equal(np.concatenate(strokes), _normalised(rec)), (word, split, i)
        assert res["classes"][word]["read"] == sum(map(len, parts.values()))
    assert res["test"]["labelled"] and res["test"]["read"] == sum(len(b) for b in test)
    assert Store(tmp_path / "st").verify()[1] == []


def test_npz_key_id_split_and_stable_ids(converted, tmp_path):
    res = _prepare(converted["npz"], tmp_path / "k", split_by="keyid", val_every=5)
    store = Store(tmp_path / "k")
    assert not store.test_blocks() and res["test"] is None
    for c in range(store.num_classes):
        val = concat_blocks([store.read_block(p) for p in store.val_blocks(c)])
        train = concat_blocks([store.read_block(p) for p in store.train_blocks(c)])
        assert is_validation(val.key_id, 5).all() and not is_validation(train.key_id, 5).any()
        assert len(set(val.key_id) | set(train.key_id)) == len(val) + len(train)  # ids unique within the class
    ids = key_ids("cat", "train", np.arange(3))
    assert ids.tolist() == key_ids("cat", "train", np.arange(3)).tolist() and (ids >= 0).all()
    assert not set(ids) & (set(key_ids("cat", "valid", np.arange(3))) | set(key_ids("dog", "train", np.arange(3))))
    with pytest.raises(ValueError, match="other settings"):  # a rerun with the other split is refused
        _prepare(converted["npz"], tmp_path / "k", split_by="file", val_every=5)


class _Payload:
    """An object whose unpickling runs a shell command that creates a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


def test_pickle_payload_is_refused_and_never_runs(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    marker = tmp_path / "pwned"
    arr = np.empty(2, object)
    arr[0], arr[1] = to_stroke3([np.array([[1, 2], [3, 4]])]), _Payload(marker)
    np.savez(src / "cat.npz", train=arr)
    with pytest.raises(FormatError, match=r"refused, it holds a pickled object \((posix|nt)\.system\)"):
        load_split(src / "cat.npz", "train")
    res = subprocess.run([sys.executable, str(ROOT / "prepare_data.py"), "--input", str(src), "--output",
                          str(tmp_path / "out"), "--workers", "1"], capture_output=True, text=True, cwd=tmp_path)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip() and not ln.startswith("pack ")]
    assert res.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: ") and "refused" in lines[0], lines
    assert not marker.exists()
    assert not (tmp_path / "out" / "meta.json").exists() and not (tmp_path / "out" / "classes" / "000").exists()


def test_bad_npz_items_are_counted(tmp_path):
    good = to_stroke3([np.array([[0, 0], [10, 5]]), np.array([[3, 3]])])
    items = [good, good.astype(np.float32), good[:, :2], np.c_[good[:, :2], [2, 1, 1]], good[:0], "text", None,
             np.zeros((2, 3, 3), np.int16), np.c_[good[:, :2].astype(np.int64) * 10**12, good[:, 2]], good]
    path = tmp_path / "a.npz"
    write_npz(path, {"train": items, "test": [good]})
    skipped = Counter()
    out = list(NpzParser(path, "a", skipped).chunks(None))
    assert [(len(b), s) for b, s in out] == [(2, "train"), (1, "test")]
    assert +skipped == {"stroke-3 array not of integers": 1, "not an (n, 3) stroke-3 array": 4, "no strokes": 1,
                        "pen state not 0 or 1": 1, "non-finite or huge coordinate": 1}
    assert [s.tolist() for s in out[0][0].drawing(0)] == [[[0, 0], [255, 128]], [[76, 76]]]  # x 255/10, half to even


@pytest.mark.parametrize("content,message", [
    (b"not a zip at all", "not a readable .npz"),
    (None, "not a Sketch-RNN file"),
])
def test_unreadable_npz_is_one_error(tmp_path, content, message):
    path = tmp_path / "a.npz"
    if content is None:
        np.savez(path, strokes=np.zeros(3))
    else:
        path.write_bytes(content)
    with pytest.raises(FormatError, match=message):
        load_split(path, "train")


def _record(key=7, cc=b"US", rec=1, strokes=((3, [1, 2, 3], [4, 5, 6]),)) -> bytes:
    """A binary record with any (even inconsistent) counts: strokes are (n_points, xs, ys)."""
    out = struct.pack("<Q2sBIH", key, cc, rec, 1490000000, len(strokes))
    for n, xs, ys in strokes:
        out += struct.pack("<H", n) + bytes(xs) + bytes(ys)
    return out


def test_bad_bin_records_are_counted_and_the_rest_read(tmp_path):
    path = tmp_path / "a.bin"
    path.write_bytes(_record(key=1) + _record(key=2, strokes=()) + _record(key=3, strokes=((0, [], []),))
                     + _record(key=4, rec=7) + _record(key=2**63 + 5) + _record(key=6, cc=b"\0\0", rec=0)
                     + _record(key=8)[:-2])
    skipped = Counter()
    parser = BinParser(path, skipped)
    block = concat_blocks(list(parser.chunks(None)))
    assert block.key_id.tolist() == [1, 6] and block.country.tolist() == [b"US", b""]
    assert block.recognized.tolist() == [1, 0] and [s.tolist() for s in block.drawing(0)] == [[[1, 4], [2, 5], [3, 6]]]
    assert +skipped == {"no strokes": 1, "empty stroke": 1, "recognized byte not 0 or 1": 1, "key_id past 2**63": 1,
                        "truncated record": 1}
    assert parser.rows_read == 7


def test_bin_count_past_the_end_and_garbage(tmp_path, monkeypatch):
    path = tmp_path / "a.bin"
    path.write_bytes(_record(key=1) + _record(key=2, strokes=((60000, [1] * 10, [2] * 10),)))  # claims 120 kB
    skipped = Counter()
    assert [len(b) for b in BinParser(path, skipped).chunks(None)] == [1]
    assert +skipped == {"truncated record": 1}
    path.write_bytes(_record(key=1) + _record(key=2, strokes=((60000, [1] * 2500, [2] * 2500),)))
    monkeypatch.setattr("qdraw.binfmt.MAX_RECORD_BYTES", 1000)  # what a garbage count does past the bound
    with pytest.raises(FormatError, match="claims more than"):
        list(BinParser(path, Counter()).chunks(None))


def test_damaged_gzip_is_one_error_line(shared_data, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copyfile(shared_data / "simplified" / "cat.ndjson", src / "airplane.ndjson")
    data = gzip.compress((shared_data / "simplified" / "cat.ndjson").read_bytes())
    (src / "cat.ndjson.gz").write_bytes(data[: len(data) // 2])
    (src / "airplane.ndjson").rename(src / "airplane.ndjson.gz")  # plain text named .gz: read as plain
    res = subprocess.run([sys.executable, str(ROOT / "prepare_data.py"), "--input", str(src), "--output",
                          str(tmp_path / "out"), "--workers", "1"], capture_output=True, text=True, cwd=tmp_path)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip() and not ln.startswith("pack ")]
    assert res.returncode == 1 and len(lines) == 1 and "damaged gzip stream" in lines[0] and "cat.ndjson.gz" in lines[0]
    assert (tmp_path / "out/classes/000/stats.json").is_file()  # the class packed before is kept for the rerun
    assert not (tmp_path / "out/classes/001").exists() and not (tmp_path / "out/meta.json").exists()


@pytest.mark.parametrize("names,message", [
    (["cat.bin", "dog.ndjson"], r"mixes formats \(1 .bin, 1 .ndjson\)"),
    (["cat.npz", "cat.full.npz"], "one class in several files"),
    (["cat.ndjson", "cat.ndjson.gz"], "one class in several files"),
    (["notes.txt", "cat.npz.gz"], "holds no .ndjson or .csv files"),
])
def test_folder_errors(tmp_path, names, message):
    for n in names:
        (tmp_path / n).write_bytes(b"")
    with pytest.raises(FormatError, match=message):
        scan_folder(tmp_path)


def test_mixed_folder_cli_is_one_error_line(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "cat.bin").write_bytes(_record())
    (src / "dog.ndjson").write_text("")
    res = subprocess.run([sys.executable, str(ROOT / "prepare_data.py"), "--input", str(src), "--output",
                          str(tmp_path / "out")], capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 1 and res.stderr.strip().splitlines() == [
        f"error: {src}: mixes formats (1 .bin, 1 .ndjson); keep one format per folder"]
    assert not (tmp_path / "out").exists()


def test_max_per_class_applies_to_each_npz_split(converted, tmp_path):
    res = _prepare(converted["npz"], tmp_path / "m", classes="cat", max_per_class=5)
    assert res["classes"]["cat"]["read"] == 15 and res["test"]["read"] == 5


def test_predict_input_reads_every_format(converted, tmp_path):
    """predict.py packs a folder it is given the same way: .bin and .ndjson.gz agree, .npz gives all its splits."""
    a = pack_eval_input(converted["bin"], tmp_path / "a", FEW)
    b = pack_eval_input(converted["ndjson_gz"], tmp_path / "b", FEW)
    assert a["read"] == b["read"] and _blocks(tmp_path / "a") == _blocks(tmp_path / "b")
    c = pack_eval_input(converted["npz"], tmp_path / "c", FEW)
    assert c["read"] == sum(c["train"]) == a["read"] and c["labelled"]
