"""export.py and predict.py on the exported file: the ONNX model gives the checkpoint's probabilities (within 1e-4)
on real test drawings, describes itself in its metadata, takes any batch size, and bad files are one error line."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from common import ROOT, run_train, train_argv
from qdraw.classifier import load_classifier
from qdraw.predictions import read_predictions
from qdraw.prepare import PrepareOptions, prepare_input

CLASSES = "airplane,cat,The Eiffel Tower,eye"


def _run(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / script), *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, shared_data) -> Path:
    """A 4-class store of real drawings (with Kaggle's labelled test rows), a mobilenetv2 (BatchNorm, so eval mode
    matters) trained for a few seconds on it, and its export."""
    tmp = tmp_path_factory.mktemp("export")
    prepare_input(str(shared_data / "kaggle/train_simplified"), PrepareOptions(output=str(tmp / "store"),
                                                                              classes=CLASSES))
    run_train(train_argv(tmp / "store", tmp / "run", "--model", "mobilenetv2", "--encoding", "rgb"))
    res = _run("export.py", "--checkpoint", str(tmp / "run/last.pth"), "--output", str(tmp / "model.onnx"), cwd=tmp)
    assert res.returncode == 0, res.stderr
    assert "onnxruntime within" in res.stdout
    return tmp


@pytest.mark.slow
def test_onnx_predictions_equal_the_checkpoints(exported):
    tmp = exported
    for name, ckpt in (("pth", "run/last.pth"), ("onnx", "model.onnx")):
        res = _run("predict.py", "--checkpoint", str(tmp / ckpt), "--input", str(tmp / "store"), "--split", "test",
                   "--preds", f"{name}.csv", "--submission", f"{name}_sub.csv", "--workers", "0", "--quiet", "--tta",
                   cwd=tmp)
        assert res.returncode == 0, res.stderr
        assert "MAP@3" in res.stdout
    a, b = read_predictions(tmp / "pth.csv"), read_predictions(tmp / "onnx.csv")
    assert a.classes == b.classes and np.array_equal(a.key_ids, b.key_ids) and len(a.key_ids) > 100
    assert np.abs(a.probs - b.probs).max() <= 1e-4
    assert a.probs.max() > 0.5  # a trained model: peaked probabilities, not a uniform untrained output
    assert (tmp / "pth_sub.csv").read_text() == (tmp / "onnx_sub.csv").read_text()


def test_metadata_describes_the_model(exported):
    meta = {p.key: p.value for p in onnx.load(exported / "model.onnx").metadata_props}
    assert json.loads(meta["classes"]) == sorted(CLASSES.split(","))
    assert (meta["encoding"], meta["image_size"], meta["line_width"], meta["margin"]) == ("rgb", "32", "1", "1")
    assert (meta["data_kind"], meta["arch"], meta["weights"]) == ("simplified", "mobilenetv2", "raw")
    clf = load_classifier(exported / "model.onnx")
    assert clf.backend == "onnxruntime" and clf.spec.line_width == 1 and clf.classes == sorted(CLASSES.split(","))


def test_dynamic_batch_and_probabilities(exported):
    clf = load_classifier(exported / "model.onnx")
    ref = load_classifier(exported / "run/last.pth")
    rng = np.random.default_rng(0)
    for n in (1, 7):
        x = (rng.random((n, 3, 32, 32)) < 0.1).astype(np.uint8) * 255
        p = clf(x)
        assert p.shape == (n, 4) and p.dtype == np.float32
        np.testing.assert_allclose(p.sum(1), 1, atol=1e-5)
        assert np.abs(p - ref(x)).max() <= 1e-4


@pytest.mark.slow
def test_bad_models_are_one_error_line(exported, tmp_path):
    tmp = exported
    plain = onnx.load(tmp / "model.onnx")
    del plain.metadata_props[:]
    onnx.save(plain, tmp_path / "foreign.onnx")
    (tmp_path / "garbage.onnx").write_bytes(bytes(range(256)) * 8)
    cases = [
        ("predict.py", ["--checkpoint", str(tmp_path / "foreign.onnx"), "--input", str(tmp / "store")],
         "not an ONNX model exported by export.py"),
        ("predict.py", ["--checkpoint", str(tmp_path / "garbage.onnx"), "--input", str(tmp / "store")],
         "unreadable ONNX model"),
        ("predict.py", ["--checkpoint", str(tmp / "model.onnx"), "--input", str(tmp / "store"), "--weights", "ema"],
         "holds the raw weights"),
        ("export.py", ["--checkpoint", str(tmp / "run/last.pth"), "--output", str(tmp_path / "m.bin")],
         "name the file *.onnx"),
        ("export.py", ["--checkpoint", str(tmp_path / "garbage.onnx"), "--output", str(tmp_path / "m.onnx")],
         "unreadable checkpoint"),
        ("export.py", ["--checkpoint", str(tmp / "run/last.pth"), "--output", str(tmp_path / "no/m.onnx")],
         "not a file name in an existing folder"),
    ]
    for script, argv, message in cases:
        res = _run(script, *argv, cwd=tmp_path)
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "m.bin").exists()
