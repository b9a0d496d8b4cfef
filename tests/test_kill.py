"""Kill-anywhere safety: SIGKILL a CLI at several points, rerun it, and get exactly the uninterrupted output.

Readers never see a partial file: blocks are renamed into place whole, a class folder only once all its blocks are
written, meta.json last; checkpoints, prediction CSVs and submissions go to a hidden temporary name and are renamed
over the target once complete. The checks below read everything a killed run left behind; the readers themselves
refuse truncated files; and a full disk in the middle of a write leaves the previous file as it was.
"""
from __future__ import annotations

import csv
import errno
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

import models
import train
from qdraw import atomic
from qdraw.checkpoint import CHECKPOINT_VERSION, CheckpointError, load_checkpoint, save_checkpoint
from qdraw.config import parse_args
from qdraw.logs import read_summary, trim_summary, update_summary
from qdraw.predictions import read_labels, read_predictions, write_labels, write_predictions, write_submission
from qdraw.prepare import PrepareOptions, prepare
from qdraw.store import Store, StoreError, read_block
from qdraw.synthetic import write_ndjson

ROOT = Path(__file__).resolve().parents[1]
# One thread everywhere: the same float reductions in every run, so a resumed run can be compared bit for bit.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _run(argv: list[str], cwd: Path, kill_after: float | None = None) -> int:
    proc = subprocess.Popen([sys.executable, *argv], cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    if kill_after is None:
        return proc.wait(timeout=600)
    try:
        return proc.wait(timeout=kill_after)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the whole group: the packing workers die too
        proc.wait()
        return -9


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "stats.json" and not p.name.startswith(".")
            and not any(part.startswith(".") for part in p.relative_to(root).parts)}


@pytest.mark.slow
def test_prepare_killed_anywhere_then_rerun_is_identical(shared_data, tmp_path):
    src = shared_data / "kaggle" / "train_simplified"
    argv = [str(ROOT / "prepare_data.py"), "--input", str(src), "--block-size", "16", "--workers", "1"]
    assert _run(argv + ["--output", str(tmp_path / "clean")], tmp_path) == 0
    clean = _snapshot(tmp_path / "clean")
    out = tmp_path / "killed"
    kills = 0
    for delay in (0.4, 0.9, 1.6, 2.5, 3.5):
        if _run(argv + ["--output", str(out)], tmp_path, kill_after=delay) == -9:
            kills += 1
            # whatever a killed run left is either absent or whole
            for block in out.glob("classes/[0-9]*/*.qdb"):
                read_block(block)
            if not (out / "meta.json").exists():
                with pytest.raises(StoreError):
                    Store(out)
    assert kills >= 2, "the run finished before it could be killed: raise the input size"
    assert _run(argv + ["--output", str(out)], tmp_path) == 0
    assert _snapshot(out) == clean


def _run_until(argv: list[str], cwd: Path, trigger: Callable[[float], bool], env: dict | None = None) -> int:
    """Run a CLI and SIGKILL it (its whole process group) the first time trigger(seconds since start) is true.

    Returns the exit status, or -9 when it was killed. Polls every millisecond, to catch short windows such as a
    checkpoint being written.
    """
    with tempfile.TemporaryFile() as err:  # a file, not a pipe: a chatty child can never block on a full pipe
        proc = subprocess.Popen([sys.executable, *argv], cwd=cwd, env=env or ENV, stdout=subprocess.DEVNULL,
                                stderr=err, start_new_session=True)
        t0 = time.monotonic()
        while proc.poll() is None:
            if time.monotonic() - t0 > 300:
                os.killpg(proc.pid, signal.SIGKILL)
                raise AssertionError(f"{argv[0]} ran for 5 minutes")
            if trigger(time.monotonic() - t0):
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return -9
            time.sleep(0.001)
        err.seek(0)
        assert proc.returncode == 0, err.read().decode(errors="replace")[-3000:]
    return 0


def _after(seconds: float) -> Callable[[float], bool]:
    return lambda t: t >= seconds


def _when(condition: Callable[[], bool], delay: float = 0.0) -> Callable[[float], bool]:
    """A trigger that fires delay seconds after condition() first holds."""
    seen: list[float] = []

    def trigger(t: float) -> bool:
        if not seen and condition():
            seen.append(t)
        return bool(seen) and t - seen[0] >= delay
    return trigger


def _temp_files(folder: Path, *names: str) -> set[str]:
    """Temporary files of the given file names in folder (".name.<pid>..." as the writers name them)."""
    return {p for p in os.listdir(folder) if p.startswith(tuple(f".{n}." for n in names))} if folder.is_dir() else set()


def _while_writing(folder: Path, *names: str, delay: float = 0.0) -> Callable[[], Callable[[float], bool]]:
    """A trigger factory: fire delay seconds after a temporary file of names appears that was not there before."""
    def make() -> Callable[[float], bool]:
        before = _temp_files(folder, *names)
        return _when(lambda: bool(_temp_files(folder, *names) - before), delay)
    return make


# MobileNetV2 at 32 px: 27 MB checkpoints (a save takes long enough to be caught), and the best epoch changes
# (epochs 0, 2 and 3 are best, 1 is not), so both orders of writing best.pth and last.pth are killed into.
TRAIN_ARGS = ["--model", "mobilenetv2", "--image-size", "32", "--batch-size", "16", "--samples-per-class", "16",
              "--epochs", "4", "--workers", "2", "--lr", "3e-3", "--period", "2", "--warmup-epochs", "0.5",
              "--augment", "strong", "--no-progress", "--no-tensorboard", "--deterministic", "--device", "cpu"]
# Summary columns that a rerun must reproduce exactly (the others are timings).
EXACT_COLUMNS = ("epoch", "step", "lr", "train_loss", "val_loss", "val_top1", "val_top3", "val_map3")


@pytest.fixture(scope="module")
def small_store(raw_store) -> Path:
    """The shared raw synthetic store (conftest.raw_store): 6 classes x 60 drawings, blocks of 30."""
    return raw_store


def _check_run_folder(out: Path) -> None:
    """What a killed train.py left: checkpoints complete, and best.pth never older than last.pth's best metric."""
    last = load_checkpoint(out / "last.pth") if (out / "last.pth").exists() else None
    best = load_checkpoint(out / "best.pth") if (out / "best.pth").exists() else None
    if last is not None:
        assert best is not None and best["best_metric"] >= last["best_metric"]
        assert best["epoch"] <= last["epoch"] + 1  # one newer only when killed between best.pth and last.pth


@pytest.mark.slow
def test_train_killed_anywhere_then_resumed_is_identical(small_store, tmp_path):
    """SIGKILL train.py during start-up, while a checkpoint is being written (twice) and mid-epoch; rerun each time
    (--resume OUTPUT/last.pth when it exists, else fresh). The final checkpoints and summary equal an uninterrupted
    run's, bit for bit: with two loader threads and strong stroke augmentation, whose draws hash (seed, epoch,
    item) and never depend on where a run was cut."""
    argv = [str(ROOT / "train.py"), "--data", str(small_store), *TRAIN_ARGS]
    ref, out = tmp_path / "ref", tmp_path / "killed"
    assert _run_until([*argv, "--output", str(ref)], tmp_path, lambda t: False) == 0
    rng = random.Random(7)

    def two_epochs_logged() -> bool:
        return (out / "summary.csv").is_file() and len(read_summary(out / "summary.csv")) >= 2

    saving = _while_writing(out, "last.pth", "best.pth")
    triggers = [lambda: _after(rng.uniform(0.5, 3.0)), saving, lambda: _when(two_epochs_logged, rng.uniform(0, 0.3)),
                saving, lambda: lambda t: False]
    kills = 0
    for make_trigger in triggers:  # the last one never fires: that run finishes
        resume = ["--resume", str(out / "last.pth")] if (out / "last.pth").exists() else []
        if _run_until([*argv, "--output", str(out), *resume], tmp_path, make_trigger()) == 0:
            break
        kills += 1
        _check_run_folder(out)
    assert kills >= 3, "the runs finished before they could be killed"
    a, b = load_checkpoint(ref / "last.pth"), load_checkpoint(out / "last.pth")
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert (a["epoch"], a["step"], a["best_metric"]) == (b["epoch"], b["step"], b["best_metric"])
    best_a, best_b = load_checkpoint(ref / "best.pth"), load_checkpoint(out / "best.pth")
    assert best_a["epoch"] == best_b["epoch"]
    assert all(torch.equal(best_a["model"][k], best_b["model"][k]) for k in best_a["model"])
    ra, rb = read_summary(ref / "summary.csv"), read_summary(out / "summary.csv")
    assert [[r[k] for k in EXACT_COLUMNS] for r in ra] == [[r[k] for k in EXACT_COLUMNS] for r in rb]


@pytest.mark.slow
def test_train_disk_full_keeps_the_previous_checkpoint(small_store, tmp_path, monkeypatch):
    """ENOSPC while epoch 1 is saved: one error line naming the checkpoint to resume from, epoch 0 intact, no
    temporary files; the resumed run then finishes."""
    argv = ["--data", str(small_store), "--output", str(tmp_path), *TRAIN_ARGS, "--epochs", "3"]
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        if obj.get("epoch") == 1:
            f.write(b"PK\x03\x04 part of a zip archive")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(SystemExit) as exc:
        train.main(parse_args(train.get_args_parser(), argv))
    assert str(exc.value) == f"error: [Errno 28] No space left on device; {tmp_path / 'last.pth'} holds epoch 0, " \
                             "continue with --resume"
    assert load_checkpoint(tmp_path / "last.pth")["epoch"] == 0
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]
    monkeypatch.undo()
    train.main(parse_args(train.get_args_parser(), [*argv, "--resume", str(tmp_path / "last.pth")]))
    assert [r["epoch"] for r in read_summary(tmp_path / "summary.csv")] == [0, 1, 2]  # epoch 1's row once
    assert load_checkpoint(tmp_path / "last.pth")["epoch"] == 2


def test_trim_summary_drops_rows_past_the_checkpoint_and_a_partial_row(tmp_path):
    path = tmp_path / "summary.csv"
    for epoch in range(4):
        update_summary(path, {"epoch": epoch, "lr": 0.5 / (epoch + 1)})
    path.write_bytes(path.read_bytes() + b"4,0.1")  # killed in the middle of epoch 4's row
    trim_summary(path, 5)
    assert [r["epoch"] for r in read_summary(path)] == [0, 1, 2, 3]
    trim_summary(path, 2)  # resuming after epoch 1: rows 2 and 3 will be written again
    assert path.read_bytes() == b"epoch,lr\r\n0,0.5\r\n1,0.25\r\n"
    path.write_text("epo")  # killed while writing the header
    trim_summary(path, 1)
    assert path.read_bytes() == b""
    assert os.listdir(tmp_path) == ["summary.csv"]


def _kaggle_checkpoint(path: Path, classes: list[str]) -> None:
    """Untrained SqueezeNet weights at 32 px for the Kaggle classes: the output is a deterministic function of them."""
    torch.manual_seed(0)
    model = models.create_model("squeezenet", len(classes), in_chans=3)
    save_checkpoint({"version": CHECKPOINT_VERSION, "arch": "squeezenet",
                     "model_args": {"num_classes": len(classes), "in_chans": 3}, "classes": classes,
                     "num_classes": len(classes), "encoding": "rgb", "image_size": 32, "config": {},
                     "model": model.state_dict(), "epoch": 0}, path)


@pytest.mark.slow
def test_predict_killed_anywhere_then_rerun_is_identical(shared_data, tmp_path):
    """SIGKILL predict.py during start-up, while the prediction CSV is written, and between it and the submission:
    each file is absent or complete, never partial, and a rerun writes the same bytes as an uninterrupted run."""
    classes = sorted(p.stem for p in (shared_data / "kaggle/train_simplified").glob("*.csv"))
    _kaggle_checkpoint(tmp_path / "model.pth", classes)
    env = {**ENV, "TMPDIR": str(tmp_path)}  # a killed run's temporary store stays in here

    def argv(folder: Path) -> list[str]:
        folder.mkdir(exist_ok=True)
        return [str(ROOT / "predict.py"), "--checkpoint", str(tmp_path / "model.pth"), "--input",
                str(shared_data / "kaggle/test_simplified.csv"), "--output", str(folder / "preds.csv.gz"),
                "--submission", str(folder / "sub.csv"), "--workers", "0", "--device", "cpu", "--quiet"]

    assert _run_until(argv(tmp_path / "ref"), tmp_path, lambda t: False, env) == 0
    want = {name: (tmp_path / "ref" / name).read_bytes() for name in ("preds.csv.gz", "sub.csv")}
    out = tmp_path / "killed"
    rng = random.Random(3)
    triggers = [lambda: _after(rng.uniform(1.0, 3.0)), _while_writing(out, "preds.csv.gz", delay=rng.uniform(0, 0.05)),
                lambda: _when(lambda: (out / "preds.csv.gz").exists()), lambda: lambda t: False]
    kills = 0
    for make_trigger in triggers:
        if _run_until(argv(out), tmp_path, make_trigger(), env) == -9:
            kills += 1
        for name, data in want.items():  # absent or complete: a reader can never get a partial file
            assert not (out / name).exists() or (out / name).read_bytes() == data, name
        assert {p for p in os.listdir(out) if not p.startswith(".")} <= set(want)  # debris is hidden
    assert kills >= 2, "the runs finished before they could be killed"
    assert {name: (out / name).read_bytes() for name in want} == want
    read_predictions(out / "preds.csv.gz")


def _truncations(data: bytes, padding: int = 0) -> list[bytes]:
    """Prefixes a killed writer could leave: empty, a few bytes, cuts through the body and near the end of the data
    (before the last `padding` bytes, which carry none)."""
    n = len(data) - padding
    return [data[:k] for k in sorted({0, 1, 8, 17, n // 7, n // 3, n // 2, 2 * n // 3, n - 9, n - 1})]


def _full_checkpoint(path: Path) -> None:
    save_checkpoint({"version": CHECKPOINT_VERSION, "arch": "tiny", "model_args": {"num_classes": 2},
                     "classes": ["a", "b"], "encoding": "rgb", "image_size": 32, "config": {},
                     "model": {"w": torch.rand(300, 300)}, "epoch": 0}, path)


def test_truncated_files_are_refused(tmp_path, small_store):
    """Every reader refuses a file cut short (blocks, checkpoints, gzip prediction CSVs, meta.json). Plain CSVs are
    refused when the cut drops a field; a cut inside the last field or at a row boundary still parses, which is why
    the writers publish every file by rename only."""
    rng = np.random.default_rng(0)
    write_predictions(tmp_path / "p.csv.gz", np.arange(50), rng.random((50, 4)), list("abcd"))
    write_predictions(tmp_path / "p.csv", np.arange(50), rng.random((50, 4)), list("abcd"))
    write_labels(tmp_path / "l.csv", np.arange(50), rng.integers(0, 4, 50), list("abcd"))
    _full_checkpoint(tmp_path / "c.pth")
    # (a block ends with up to 63 bytes of alignment padding: without them it still holds every array whole)
    readers = {"block.qdb": (next((small_store / "classes").glob("*/train_0000.qdb")), read_block, StoreError, 64),
               "c.pth": (tmp_path / "c.pth", load_checkpoint, CheckpointError, 0),
               "p.csv.gz": (tmp_path / "p.csv.gz", read_predictions, ValueError, 0),
               "meta.json": (small_store / "meta.json", lambda p: Store(p.parent), StoreError, 0)}
    (tmp_path / "cut").mkdir()
    for name, (whole, read, error, padding) in readers.items():
        read(whole)  # the complete file is fine
        for cut in _truncations(whole.read_bytes(), padding):
            (tmp_path / "cut" / name).write_bytes(cut)
            with pytest.raises(error):
                read(tmp_path / "cut" / name)
    for name, fields, read in (("p.csv", 5, read_predictions), ("l.csv", 2, lambda p: read_labels(p, list("abcd")))):
        text = (tmp_path / name).read_text()
        for k in range(len(text)):
            last = text[:k].split("\n")[-1]
            if last and len(next(csv.reader([last]))) < fields:  # a cut that drops fields of the last row
                (tmp_path / "cut" / name).write_text(text[:k])
                with pytest.raises(ValueError):
                    read(tmp_path / "cut" / name)


@pytest.mark.parametrize("name, write", [("p.csv", write_predictions), ("p.csv.gz", write_predictions),
                                         ("sub.csv", write_submission)])
def test_disk_full_mid_write_keeps_the_previous_file(tmp_path, monkeypatch, name, write):
    """ENOSPC in the middle of writing a prediction file or submission: the previous file is intact and no
    temporary file is left."""
    rng = np.random.default_rng(0)
    path, classes = tmp_path / name, ["a", "b", "c", "d"]
    write(path, np.arange(40), rng.random((40, 4)), classes)
    before = path.read_bytes()
    real_open = open

    def full_disk_open(p, mode, **kw):
        """The temporary file qdraw.atomic writes: its first write lands half its bytes, then the disk is full."""
        f = real_open(p, mode, **kw)
        real_write = f.write

        def write_then_fail(data: bytes) -> int:
            real_write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        f.write = write_then_fail
        return f

    monkeypatch.setattr(atomic, "open", full_disk_open, raising=False)
    with pytest.raises(OSError, match="No space left"):
        write(path, np.arange(40) + 1000, rng.random((40, 4)), classes)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == [name]
