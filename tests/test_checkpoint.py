"""Checkpoint format (qdraw.checkpoint): weights_only round trip, pickled objects refused, validation, atomic writes."""
import argparse
import errno
import random

import numpy as np
import pytest
import torch
from torch import nn

from qdraw.checkpoint import (
    CHECKPOINT_VERSION,
    CheckpointError,
    check_compatible,
    copy_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)

CLASSES = ["The Eiffel Tower", "circle", "square"]


def _tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, len(CLASSES)))


def _state(model: nn.Module, optimizer: torch.optim.Optimizer, **over) -> dict:
    state = {"version": CHECKPOINT_VERSION, "arch": "tiny", "model_args": {"num_classes": 3, "in_chans": 3},
             "classes": CLASSES, "num_classes": 3, "encoding": "rgb", "image_size": 32,
             "config": {"lr": 0.01, "model": "tiny", "resume": None}, "model": model.state_dict(),
             "optimizer": optimizer.state_dict(), "scaler": torch.amp.GradScaler("cpu").state_dict(),
             "epoch": 4, "step": 40, "best_metric": 0.5, "data_seed": 0, "rng": [rng_state()]}
    state.update(over)
    return state


def _trained() -> tuple[nn.Module, torch.optim.Optimizer]:
    model = _tiny_model()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(2):
        model(torch.rand(2, 3, 8, 8)).sum().backward()
        opt.step()
    return model, opt


def test_round_trip_with_weights_only_gives_identical_outputs(tmp_path):
    model, opt = _trained()
    save_checkpoint(_state(model, opt), tmp_path / "last.pth")
    ckpt = load_checkpoint(tmp_path / "last.pth")
    other = _tiny_model(seed=1)
    other.load_state_dict(ckpt["model"])
    x = torch.rand(3, 3, 16, 16)
    model.eval(), other.eval()
    assert torch.equal(model(x), other(x))
    opt2 = torch.optim.Adam(other.parameters(), lr=0.01)
    opt2.load_state_dict(ckpt["optimizer"])
    for a, b in zip(opt.state_dict()["state"].values(), opt2.state_dict()["state"].values()):
        assert all(torch.equal(a[k], b[k]) for k in ("exp_avg", "exp_avg_sq", "step"))
    assert ckpt["config"] == {"lr": 0.01, "model": "tiny", "resume": None}
    assert (ckpt["epoch"], ckpt["step"], ckpt["classes"]) == (4, 40, CLASSES)
    # The file loads with plain torch.load(weights_only=True): no allow-list, no custom unpickler.
    assert torch.load(tmp_path / "last.pth", weights_only=True)["arch"] == "tiny"


@pytest.mark.parametrize("payload", [argparse.Namespace(lr=0.1), random.Random(0)], ids=["namespace", "object"])
def test_pickled_objects_are_refused(tmp_path, payload):
    model, opt = _trained()
    torch.save(_state(model, opt, config=payload), tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="weights_only=True.*" + type(payload).__name__):
        load_checkpoint(tmp_path / "bad.pth")


def test_rng_states_round_trip_through_a_file(tmp_path):
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    np.random.normal()  # leaves a cached gaussian in NumPy's legacy state
    save_checkpoint({"rng": rng_state()}, tmp_path / "r.pth")
    expected = (torch.rand(4), np.random.normal(size=3), random.random())
    set_rng_state(torch.load(tmp_path / "r.pth", weights_only=True)["rng"])
    got = (torch.rand(4), np.random.normal(size=3), random.random())
    assert torch.equal(expected[0], got[0]) and np.array_equal(expected[1], got[1]) and expected[2] == got[2]


class TestValidation:
    def test_other_version_is_refused(self, tmp_path):
        model, opt = _trained()
        save_checkpoint(_state(model, opt, version=99), tmp_path / "v.pth")
        with pytest.raises(CheckpointError, match="format version 99"):
            load_checkpoint(tmp_path / "v.pth")

    def test_missing_keys_and_non_dict(self, tmp_path):
        torch.save({"version": CHECKPOINT_VERSION, "model": {}}, tmp_path / "m.pth")
        with pytest.raises(CheckpointError, match="lacks arch"):
            load_checkpoint(tmp_path / "m.pth")
        torch.save(torch.zeros(2), tmp_path / "t.pth")
        with pytest.raises(CheckpointError, match="not a training checkpoint"):
            load_checkpoint(tmp_path / "t.pth")

    def test_missing_and_truncated_files(self, tmp_path):
        with pytest.raises(CheckpointError, match="no such checkpoint"):
            load_checkpoint(tmp_path / "nope.pth")
        model, opt = _trained()
        save_checkpoint(_state(model, opt), tmp_path / "last.pth")
        data = (tmp_path / "last.pth").read_bytes()
        (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
        with pytest.raises(CheckpointError, match="unreadable"):
            load_checkpoint(tmp_path / "cut.pth")

    def test_check_compatible(self, tmp_path):
        model, opt = _trained()
        ckpt = _state(model, opt)
        check_compatible(ckpt, classes=list(CLASSES), encoding="rgb", image_size=32, arch="tiny")
        with pytest.raises(CheckpointError, match="3 classes, the data has 2"):
            check_compatible(ckpt, classes=CLASSES[:2])
        with pytest.raises(CheckpointError, match="index 1: 'circle' vs 'cat'"):
            check_compatible(ckpt, classes=["The Eiffel Tower", "cat", "square"])
        with pytest.raises(CheckpointError, match="encoding is 'rgb', this run asks for 'grey'"):
            check_compatible(ckpt, encoding="grey")
        with pytest.raises(CheckpointError, match="image_size is 32, this run asks for 64"):
            check_compatible(ckpt, image_size=64)


class TestAtomicWrites:
    def test_disk_full_mid_write_keeps_previous_checkpoint(self, tmp_path, monkeypatch):
        model, opt = _trained()
        path = tmp_path / "last.pth"
        save_checkpoint(_state(model, opt, epoch=1), path)
        before = path.read_bytes()

        def full_disk(obj, f, *a, **k):
            f.write(b"PK\x03\x04 half a zip archive")
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(torch, "save", full_disk)
        with pytest.raises(OSError, match="No space left"):
            save_checkpoint(_state(model, opt, epoch=2), path)
        monkeypatch.undo()
        assert path.read_bytes() == before
        assert load_checkpoint(path)["epoch"] == 1
        assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pth"]  # the temporary file is gone

    def test_best_copy_survives_the_next_save(self, tmp_path):
        model, opt = _trained()
        save_checkpoint(_state(model, opt, epoch=1), tmp_path / "last.pth")
        copy_checkpoint(tmp_path / "last.pth", tmp_path / "best.pth")
        save_checkpoint(_state(model, opt, epoch=2), tmp_path / "last.pth")
        assert load_checkpoint(tmp_path / "best.pth")["epoch"] == 1
        assert load_checkpoint(tmp_path / "last.pth")["epoch"] == 2
