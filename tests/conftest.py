"""Shared fixtures: the real Quick, Draw! slice in ../shared (tests that need it skip cleanly without it) and the small
synthetic store most training tests use.

Importing models, data_loader_rgb and data_loader_time registers the shipped architectures and encodings, as every
script does: qdraw never imports them itself (imports go one way, scripts -> qdraw).
"""
from __future__ import annotations

from pathlib import Path

import pytest

import data_loader_rgb  # noqa: F401
import data_loader_time  # noqa: F401
import models  # noqa: F401
from common import SHARED, SIX_CLASSES, run_train, train_argv
from qdraw.prepare import PrepareOptions, prepare, prepare_input
from qdraw.synthetic import write_ndjson


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only real data folder, or skip."""
    if not SHARED.is_dir():
        pytest.skip("../shared/data/quickdraw is absent")
    return SHARED


@pytest.fixture(scope="session")
def raw_store(tmp_path_factory) -> Path:
    """A raw synthetic store: 6 classes x 60 drawings, blocks of 30, about 1 in 10 drawings for validation.

    Session-scoped and shared: tests must not write into it (copy it first).
    """
    root = tmp_path_factory.mktemp("raw_store")
    write_ndjson(root / "src", 60, seed=1, classes=SIX_CLASSES)
    prepare(PrepareOptions(output=str(root / "st"), block_size=30, val_every=10, workers=1), root / "src")
    return root / "st"


@pytest.fixture(scope="session")
def real4_model(tmp_path_factory, shared_data) -> Path:
    """A folder with ``store`` (4 real classes from the Kaggle slice, with its labelled test rows) and ``run/last.pth``,
    a mobilenetv2 (BatchNorm, so eval mode matters) trained on it for about a minute: its answers depend on the
    drawing (top-1 spread over the 4 classes, peaked probabilities), which the 3-epoch runs of common.train_argv
    do not give (they answer every drawing alike). Session-scoped and shared: tests must not write into it."""
    tmp = tmp_path_factory.mktemp("real4")
    prepare_input(str(shared_data / "kaggle/train_simplified"),
                  PrepareOptions(output=str(tmp / "store"), classes="airplane,cat,The Eiffel Tower,eye"))
    run_train(train_argv(tmp / "store", tmp / "run", "--encoding", "rgb", "--model", "mobilenetv2",
                         "--samples-per-class", "80", "--epochs", "6", "--period", "6", "--batch-size", "32"))
    return tmp
