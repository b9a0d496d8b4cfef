"""Models that read strokes through the scripts a user runs, unchanged from the user's side: train.py (the input spec
follows the model), predict.py with TTA (flipped strokes), export.py (ONNX, dynamic batch and length, checked with
onnxruntime), predict.py on the .onnx, average_checkpoints.py, blend2.py with a CNN's predictions, and serve.py's API
answering a drawn circle. On 4 real classes of the shared slice (the store of conftest's real4_model)."""
from __future__ import annotations

import contextlib
import importlib
import io
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from common import run_cli, run_train, train_argv
from qdraw.checkpoint import load_checkpoint
from qdraw.classifier import load_classifier
from qdraw.predictions import read_predictions
from qdraw.render import InputSpec, spec_of_checkpoint
from qdraw.serving import create_app

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

MODELS = {"stroke_gru": "hidden=32,conv_widths=16:32", "learned_rasterizer": "trunk=resnet18,width=8,grid=12"}


def _script(script: str, *argv: str) -> str:
    """A script's main on argv in this process (common.run_cli), its stdout returned: the code a user's command runs,
    without ~3 s of interpreter and torch start-up for each of the nine calls."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        run_cli(importlib.import_module(script.removesuffix(".py")), list(argv))
    return out.getvalue()


@pytest.fixture(scope="module")
def trained(real4_model, tmp_path_factory) -> dict[str, Path]:
    """Each point model trained briefly on the 4-class store (3 epochs of 80 drawings a class, light augmentation)."""
    out = {}
    for name, args in MODELS.items():
        run = tmp_path_factory.mktemp(name)
        run_train(train_argv(real4_model / "store", run, "--model", name, "--model-args", args, "--max-points", "48",
                             "--samples-per-class", "80", "--augment", "light", "--keep-checkpoints", "2",
                             "--deterministic"))
        out[name] = run
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MODELS))
def test_train_predict_export_and_onnx_agree(trained, real4_model, name, tmp_path):
    run, store = trained[name], real4_model / "store"
    ckpt = load_checkpoint(run / "last.pth")
    assert spec_of_checkpoint(ckpt) == InputSpec.points(48, False) and ckpt["encoding"] is None
    assert ckpt["model_args"]["in_chans"] == 6 and ckpt["augment"]["rotate"] == 5
    out = _script("predict.py", "--checkpoint", str(run / "last.pth"), "--input", str(store), "--split", "test",
                  "--tta", "--preds", str(tmp_path / "ckpt.csv"), "--quiet", "--workers", "2")
    assert "MAP@3" in out
    ref = read_predictions(tmp_path / "ckpt.csv")
    assert ref.probs.shape[1] == 4 and np.allclose(ref.probs.sum(1), 1, atol=1e-4)
    assert ref.probs.argmax(1).min() != ref.probs.argmax(1).max()  # it tells drawings apart
    out = _script("export.py", "--checkpoint", str(run / "last.pth"), "--output", str(tmp_path / "m.onnx"))
    assert "input points (<= 48 a drawing)" in out
    _script("predict.py", "--checkpoint", str(tmp_path / "m.onnx"), "--input", str(store), "--split", "test",
            "--tta", "--preds", str(tmp_path / "onnx.csv"), "--quiet", "--workers", "2")
    got = read_predictions(tmp_path / "onnx.csv")
    assert np.array_equal(got.key_ids, ref.key_ids) and np.abs(got.probs - ref.probs).max() <= 1e-4
    # averaging its last two epochs rebuilds the same network from the checkpoint alone
    _script("average_checkpoints.py", "--run", str(run), "--last", "2", "--output", str(tmp_path / "avg.pth"))
    assert spec_of_checkpoint(load_checkpoint(tmp_path / "avg.pth")) == InputSpec.points(48, False)


@pytest.mark.slow
def test_blend_with_a_cnn_and_serve_a_circle(trained, real4_model, tmp_path):
    store = real4_model / "store"
    files = []
    for ckpt in (trained["stroke_gru"] / "last.pth", real4_model / "run" / "last.pth"):
        files.append(tmp_path / f"{len(files)}.csv")
        _script("predict.py", "--checkpoint", str(ckpt), "--input", str(store), "--split", "test", "--preds",
                str(files[-1]), "--labels", str(tmp_path / "labels.csv"), "--quiet", "--workers", "2")
    out = _script("blend2.py", "--method", "gmean", "--labels", str(tmp_path / "labels.csv"), "--preds",
                  str(tmp_path / "blend.csv"), *map(str, files))
    assert "MAP@3" in out and read_predictions(tmp_path / "blend.csv").probs.shape[1] == 4
    circle = [[[int(100 + 80 * math.cos(a)) for a in np.linspace(0, 2 * math.pi, 40)],
               [int(100 + 80 * math.sin(a)) for a in np.linspace(0, 2 * math.pi, 40)],
               [int(20 * i) for i in range(40)]]]  # raw strokes, as the page sends them
    with TestClient(create_app(load_classifier(trained["stroke_gru"] / "last.pth"))) as client:
        body = client.post("/api/guess?image=1", json={"drawing": circle}).json()
        info = client.get("/api/info").json()
    guesses = body["guesses"]
    assert len(guesses) == 3 and {g["word"] for g in guesses} <= set(info["classes"])
    assert sum(g["probability"] for g in guesses) <= 1 + 1e-6 and "image" not in body  # no picture to show
    assert info["input"] == {"kind": "points", "max_len": 48}
    with torch.no_grad():  # the server's answer is the checkpoint's for the same (simplified) drawing
        assert guesses[0]["probability"] > 0.25
