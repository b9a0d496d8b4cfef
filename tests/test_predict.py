"""predict.py on a checkpoint built here: CSV columns and rows, submission, labels, TTA arithmetic, CSV input path."""
from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import models
from common import run_scripts
from qdraw.augment import Augment
from qdraw.checkpoint import CHECKPOINT_VERSION, save_checkpoint
from qdraw.dataset import SplitDataset
from qdraw.predictions import read_labels, read_predictions
from qdraw.prepare import PrepareOptions, prepare_input
from qdraw.render import InputSpec, make_render
from qdraw.store import Store

ROOT = Path(__file__).resolve().parents[1]
CLASSES = "airplane,cat,The Eiffel Tower,eye"


@pytest.fixture(scope="module")
def setup(tmp_path_factory, shared_data):
    """A 4-class store from the real Kaggle sample (with its labelled test split) and an untrained checkpoint."""
    tmp = tmp_path_factory.mktemp("predict")
    prepare_input(str(shared_data / "kaggle/train_simplified"), PrepareOptions(output=str(tmp / "store"),
                                                                              classes=CLASSES))
    store = Store(tmp / "store")
    torch.manual_seed(0)
    model = models.create_model("squeezenet", store.num_classes)
    ckpt = {"version": CHECKPOINT_VERSION, "arch": "squeezenet", "model_args": {"num_classes": store.num_classes,
            "in_chans": 3}, "classes": store.classes, "num_classes": store.num_classes, "encoding": "rgb",
            "image_size": 64, "config": {"line_width": None}, "model": model.state_dict(), "epoch": 0}
    save_checkpoint(ckpt, tmp / "ckpt.pth")
    return tmp, store, model.eval()


def _predict(tmp: Path, *args: str) -> str:
    [res] = run_scripts([("predict.py", ["--checkpoint", str(tmp / "ckpt.pth"), "--workers", "0", "--quiet", *args])],
                        cwd=tmp)
    assert res.returncode == 0, res.stderr
    return res.stdout


def _reference(model, store, flip: bool) -> np.ndarray:
    ds = SplitDataset(store, "test", transform=Augment(hflip=1.0) if flip else None)
    x = torch.from_numpy(make_render(InputSpec.raster("rgb", 64))(ds.batch(list(range(len(ds))))))
    with torch.no_grad():
        return torch.softmax(model(x.float() / 255), 1).numpy()


def test_outputs_and_tta_arithmetic(setup):
    tmp, store, model = setup
    out = _predict(tmp, "--input", str(tmp / "store"), "--output", "p.csv", "--submission", "s.csv",
                   "--labels-output", "l.csv", "--tta")
    ds = SplitDataset(store, "test")
    pred = read_predictions(tmp / "p.csv")
    assert pred.classes == store.classes and np.array_equal(pred.key_ids, ds.key_ids)
    expected = (_reference(model, store, False) + _reference(model, store, True)) / 2
    np.testing.assert_allclose(pred.probs, expected, rtol=2e-5, atol=2e-6)  # CSV keeps 6 significant digits
    assert "MAP@3" in out and f"{len(ds)} labelled drawings" in out
    rows = list(csv.reader(open(tmp / "s.csv")))
    assert rows[0] == ["key_id", "word"] and len(rows) == len(ds) + 1
    words = {w.replace(" ", "_") for w in store.classes}
    assert all(len(r[1].split(" ")) == 3 and set(r[1].split(" ")) <= words for r in rows[1:])
    assert "The_Eiffel_Tower" in {w for r in rows[1:] for w in r[1].split(" ")}
    labels = read_labels(tmp / "l.csv", store.classes)
    assert [labels[int(k)] for k in ds.key_ids] == ds.labels.tolist()


def test_kaggle_csv_input_equals_store_test_split(setup, shared_data):
    """The test CSV packed on the fly gives the same rows (those of our 4 classes, labelled) and probabilities."""
    tmp, store, _ = setup
    _predict(tmp, "--input", str(tmp / "store"), "--output", "a.csv")
    out = _predict(tmp, "--input", str(shared_data / "kaggle/test_simplified.csv"), "--output", "b.csv")
    a, b = read_predictions(tmp / "a.csv"), read_predictions(tmp / "b.csv")
    n_test = sum(1 for _ in open(shared_data / "kaggle/test_simplified.csv")) - 1
    assert len(b.key_ids) == n_test  # every test drawing is predicted, labelled or not
    pos = {int(k): i for i, k in enumerate(b.key_ids)}
    np.testing.assert_array_equal(b.probs[[pos[int(k)] for k in a.key_ids]], a.probs)
    assert f"{len(a.key_ids)} labelled drawings" in out


def test_time_checkpoint_on_simplified_input_is_one_line(setup):
    tmp, store, _ = setup
    ckpt = torch.load(tmp / "ckpt.pth", weights_only=True)
    ckpt["encoding"] = "time"
    save_checkpoint(ckpt, tmp / "time.pth")
    res = subprocess.run([sys.executable, str(ROOT / "predict.py"), "--checkpoint", str(tmp / "time.pth"),
                          "--input", str(tmp / "store"), "--output", "t.csv"], capture_output=True, text=True, cwd=tmp)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert res.stderr.startswith("error:") and "needs stroke timing" in res.stderr
