"""TensorBoard logs (qdraw.logs.TensorBoard, train.py's default): real event files that TensorBoard's own reader
loads back, with the numbers summary.csv holds, so `tensorboard --logdir runs` shows a run as it is written."""
from __future__ import annotations

import numpy as np
import pytest

from common import run_train, train_argv
from qdraw.logs import TensorBoard, read_summary

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator",
                                        reason="tensorboard is in requirements.txt; install it")


def _scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} as TensorBoard reads the event files of log_dir."""
    acc = event_accumulator.EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_scalars_read_back_exactly(tmp_path):
    tb = TensorBoard(tmp_path / "tb")
    tb.log({"train/loss": 1.25, "val/map3": 0.5, "epochs": 3, "note": "text is skipped"}, step=0)
    tb.log({"train/loss": 0.75, "val/map3": 0.625, "epochs": 3, "note": "text is skipped"}, step=1)
    tb.close()
    assert len(list((tmp_path / "tb").glob("events.out.tfevents.*"))) == 1
    assert _scalars(tmp_path / "tb") == {"train/loss": [(0, 1.25), (1, 0.75)], "val/map3": [(0, 0.5), (1, 0.625)],
                                         "epochs": [(0, 3.0), (1, 3.0)]}
    off = TensorBoard(tmp_path / "off", enabled=False)
    off.log({"train/loss": 1.0}, step=0)
    off.close()
    assert not (tmp_path / "off").exists()


@pytest.mark.slow
def test_train_writes_the_summary_numbers_to_tensorboard(tmp_path, raw_store):
    """train.py with its default --tensorboard: one event file in OUTPUT/tb, every epoch's loss and MAP@3 equal to
    summary.csv's (float32, TensorBoard's precision)."""
    run_train(train_argv(raw_store, tmp_path / "run", "--tensorboard"))
    rows = read_summary(tmp_path / "run" / "summary.csv")
    got = _scalars(tmp_path / "run" / "tb")
    assert {"train/loss", "train/lr", "val/raw_map3", "val/raw_loss"} <= set(got)
    for tag, col in [("train/loss", "train_loss"), ("train/lr", "lr"), ("val/raw_map3", "val_map3"),
                     ("val/raw_loss", "val_loss")]:
        assert [s for s, _ in got[tag]] == [int(r["epoch"]) for r in rows] == [0, 1, 2]
        np.testing.assert_array_equal(np.float32([v for _, v in got[tag]]), np.float32([r[col] for r in rows]))
