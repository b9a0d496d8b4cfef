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

import export
import predict

from common import ROOT
from qdraw.classifier import load_classifier
from qdraw.predictions import read_predictions

CLASSES = "airplane,cat,The Eiffel Tower,eye"
# export.py runs PyTorch's torch.export-based exporter; the legacy TorchScript one warned of its removal on every call
pytestmark = pytest.mark.filterwarnings("error::DeprecationWarning")


def _run(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / script), *args], capture_output=True, text=True, cwd=cwd,
                          timeout=900)


def _main(script, argv: list[str]) -> None:
    """A script's main in this process (each subprocess pays ~4 s of torch import on a busy 2-core machine)."""
    script.main(script.get_args_parser().parse_args(argv))


@pytest.fixture(scope="module")
def exported(tmp_path_factory, real4_model) -> Path:
    """A folder with the real 4-class ``store``, the briefly trained mobilenetv2 ``run/last.pth`` (conftest's
    real4_model, linked) and its export ``model.onnx``."""
    tmp = tmp_path_factory.mktemp("export")
    for name in ("store", "run"):
        (tmp / name).symlink_to(real4_model / name)
    _main(export, ["--checkpoint", str(tmp / "run/last.pth"), "--output", str(tmp / "model.onnx")])
    return tmp


@pytest.mark.slow
def test_onnx_predictions_equal_the_checkpoints(exported, capsys):
    tmp = exported
    for name, ckpt in (("pth", "run/last.pth"), ("onnx", "model.onnx")):
        _main(predict, ["--checkpoint", str(tmp / ckpt), "--input", str(tmp / "store"), "--split", "test", "--preds",
                        str(tmp / f"{name}.csv"), "--submission", str(tmp / f"{name}_sub.csv"), "--workers", "0",
                        "--quiet", "--tta"])
        assert "MAP@3" in capsys.readouterr().out
    a, b = read_predictions(tmp / "pth.csv"), read_predictions(tmp / "onnx.csv")
    assert a.classes == b.classes and np.array_equal(a.key_ids, b.key_ids) and len(a.key_ids) > 100
    assert np.abs(a.probs - b.probs).max() <= 1e-4
    assert a.probs.std(0).max() > 0.01 and a.probs.max() > 0.5  # answers that depend on the drawing
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
    """Each refusal is one "error: ..." line and writes nothing; the first case runs as a real subprocess (no
    traceback, exit 1), the others in this process."""
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
        ("export.py", ["--checkpoint", str(tmp / "run/last.pth"), "--output", str(tmp_path / "m.onnx"), "--opset",
                       "17"], "opset 17: the torch.export-based ONNX exporter writes opset 18 or newer"),
    ]
    res = _run(cases[0][0], *cases[0][1], cwd=tmp_path)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and cases[0][2] in lines[0], lines
    for script, argv, message in cases[1:]:
        with pytest.raises(SystemExit) as exc:
            _main({"predict.py": predict, "export.py": export}[script], argv)
        text = str(exc.value.code)
        assert text.startswith("error: ") and "\n" not in text and message in text, text
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "m.bin").exists()
