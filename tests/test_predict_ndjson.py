"""predict.py --input on one Google ndjson file: labels from each record's word, MAP@3 over the words the model knows,
the others predicted but not scored, the same counted skips as a folder, and one error line naming the formats taken.

The end-to-end tests score the briefly trained real 4-class model (conftest's real4_model) on a file written by
serve.py's app with --collect FILE, from real raw drawings of its 4 words and of "dog", which it does not know.
"""
from __future__ import annotations

import gzip
import logging
import re
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import orjson
import pytest

import predict
from common import SIX_CLASSES
from qdraw.classifier import load_classifier
from qdraw.metrics import format_table, ranking_metrics
from qdraw.predictions import align, read_predictions
from qdraw.prepare import pack_eval_input
from qdraw.readers import read_ndjson
from qdraw.serving import create_app
from qdraw.store import Store, read_block
from qdraw.synthetic import write_ndjson

with warnings.catch_warnings():  # Starlette 1.x prefers httpx2 for its TestClient; httpx works the same
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

WORDS = ["airplane", "cat", "The Eiffel Tower", "eye"]  # real4_model's classes
UNKNOWN, N_UNKNOWN = "dog", 5


def _predict(*argv: str) -> None:
    predict.main(predict.get_args_parser().parse_args([*argv, "--workers", "0", "--quiet"]))


def test_pack_eval_input_labels_each_record_by_its_word(tmp_path):
    """Unit level, no real data: a mixed file's drawings get their own word's class; unknown words stay -1, counted."""
    src = write_ndjson(tmp_path / "src", 4, seed=3, classes=SIX_CLASSES[:3])
    lines = [ln for p in src for ln in p.read_bytes().splitlines()]
    mixed = tmp_path / "mixed.ndjson"
    mixed.write_bytes(b"\n".join(lines[::2] + lines[1::2]) + b"\n")  # words interleaved
    classes = sorted(SIX_CLASSES[1:3] + ["star"])  # the model knows 2 of the 3 words, and one word not in the file
    stats = pack_eval_input(mixed, tmp_path / "store", classes, block_size=5)
    store = Store(tmp_path / "store")
    blocks = [read_block(p) for p in store.test_blocks()]
    got = dict(zip(np.concatenate([b.key_id for b in blocks]).tolist(), np.concatenate([b.label for b in blocks])))
    want = {int(r["key_id"]): classes.index(r["word"]) if r["word"] in classes else -1
            for r in map(orjson.loads, lines)}
    assert got == want and len(got) == 12 and sum(v == -1 for v in got.values()) == 4
    assert stats["unknown_words"] == {SIX_CLASSES[0]: 4} and stats["labelled"] and stats["kind"] == "raw"
    assert stats["read"] == 12 and sum(stats["train"]) == 12 and not stats["skipped"]


@pytest.fixture(scope="module")
def collected(tmp_path_factory, real4_model, shared_data) -> Path:
    """collected.ndjson as serve.py --collect FILE writes it: the app's /api/save, one real raw drawing at a time,
    words interleaved (all raw drawings of the 4 known words, 5 of "dog")."""
    path = tmp_path_factory.mktemp("collect") / "collected.ndjson"
    rows = {w: list(read_ndjson(shared_data / "raw" / f"{w}.ndjson")) for w in WORDS}
    rows[UNKNOWN] = list(read_ndjson(shared_data / "raw" / f"{UNKNOWN}.ndjson"))[:N_UNKNOWN]
    order = sorted(((i, w) for w, rs in rows.items() for i in range(len(rs))))
    with TestClient(create_app(load_classifier(real4_model / "run/last.pth"), collect=path)) as client:
        for i, word in order:
            res = client.post("/api/save", json={"drawing": rows[word][i].drawing, "word": word})
            assert res.status_code == 200, res.text
    return path


def _words(path: Path) -> dict[int, str]:
    return {int(r["key_id"]): r["word"] for r in map(orjson.loads, path.read_bytes().splitlines())}


@pytest.mark.slow
def test_collected_file_scores_known_words(collected, real4_model, tmp_path, capsys, caplog):
    words = _words(collected)
    counts = Counter(words.values())
    assert len(counts) == 5 and counts[UNKNOWN] == N_UNKNOWN and len(words) > 80
    with caplog.at_level(logging.WARNING):
        _predict("--checkpoint", str(real4_model / "run/last.pth"), "--input", str(collected), "--preds",
                 str(tmp_path / "p.csv"))
    out = capsys.readouterr().out
    pred = read_predictions(tmp_path / "p.csv")
    assert sorted(pred.key_ids.tolist()) == sorted(words)  # every drawing predicted, "dog" too
    labels = np.array([pred.classes.index(words[k]) if words[k] in pred.classes else -1 for k in pred.key_ids])
    known = labels >= 0
    metrics = ranking_metrics(pred.probs[known], labels[known])
    table = format_table([("last.pth (raw)", metrics)], title=f"{int(known.sum())} labelled drawings")
    assert table in out, out  # the printed MAP@3 is exactly that of the written predictions against the words
    assert metrics["map3"] > 0.5  # a trained model: well above the 4-class chance (~0.46 for uniform scores)
    assert caplog.messages == [f"warning: {collected}: {N_UNKNOWN} drawings have words the model does not know "
                               f"(dog: {N_UNKNOWN}): predicted, not scored"]


@pytest.mark.slow
def test_gz_file_and_folder_give_the_same_predictions(collected, real4_model, tmp_path, caplog):
    """The same lines gzip-compressed with two bad rows appended (counted, not predicted), and split into the folder
    that serve.py --collect FOLDER writes (<word>.ndjson): the same probabilities for every drawing."""
    ckpt = str(real4_model / "run/last.pth")
    bad = [b'{"word": "cat", "key_id": "1", "drawing": [[[1, 2], [3]]]}',  # x and y lengths differ
           b'{"word": "cat", "key_id": "2", "drawing": [[[1, 2], [3, 4]]]}']  # simplified strokes in a raw file
    gz = tmp_path / "collected.ndjson.gz"
    gz.write_bytes(gzip.compress(collected.read_bytes() + b"\n".join(bad) + b"\n"))
    folder = tmp_path / "folder"
    folder.mkdir()
    for line in collected.read_bytes().splitlines():
        with open(folder / f"{orjson.loads(line)['word']}.ndjson", "ab") as f:
            f.write(line + b"\n")
    _predict("--checkpoint", ckpt, "--input", str(collected), "--preds", str(tmp_path / "a.csv"))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        _predict("--checkpoint", ckpt, "--input", str(gz), "--preds", str(tmp_path / "b.csv"))
    n = len(_words(collected))
    assert caplog.messages[0] == (f"warning: {gz}: 2 of {n + 2} rows skipped and not predicted "
                                  "(simplified drawing in a raw store: 1, x/y/t lengths differ: 1)")
    _predict("--checkpoint", ckpt, "--input", str(folder), "--preds", str(tmp_path / "c.csv"))
    a, b, c = (read_predictions(tmp_path / f"{x}.csv") for x in "abc")
    assert np.array_equal(a.key_ids, b.key_ids) and np.array_equal(a.probs, b.probs) and len(a.key_ids) == n
    a, c = align([a, c])
    assert np.array_equal(a.probs, c.probs)


@pytest.mark.slow
def test_unknown_inputs_are_one_error_line(real4_model, tmp_path):
    ckpt = str(real4_model / "run/last.pth")
    (tmp_path / "notes.txt").write_text("not a drawing file\n")
    (tmp_path / "empty.ndjson").write_text("\n")
    for name, message in [("notes.txt", "not a Kaggle test CSV (key_id,countrycode,drawing) nor a Google ndjson file; "
                                        "--input takes a test CSV (.csv, .csv.gz), one <word>.ndjson or .ndjson.gz "
                                        "file, a prepared store, or a folder of per-class .ndjson, .csv, .bin or "
                                        ".npz files"),
                          ("empty.ndjson", "no valid drawing found")]:
        with pytest.raises(SystemExit) as exc:
            _predict("--checkpoint", ckpt, "--input", str(tmp_path / name))
        text = str(exc.value.code)
        assert re.fullmatch(rf"error: {re.escape(str(tmp_path / name))}: .*", text) and message in text, text
