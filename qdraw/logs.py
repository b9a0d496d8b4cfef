"""Run logs: console logging, one CSV row per epoch, TensorBoard scalars when installed, and a PNG of the curves.

summary.csv follows timm's ``utils/summary.py::update_summary``: a header on first write, then one row per epoch, so
a resumed run appends to the same file. The PNG (loss, MAP@3, learning rate against epoch) is drawn from that CSV
alone, with matplotlib's Agg backend so it works on a headless machine.
"""
from __future__ import annotations

import csv
import logging
import math
from pathlib import Path

from .atomic import atomic_write, write_text

log = logging.getLogger(__name__)


def setup_logging(is_main: bool = True) -> None:
    """INFO messages on rank 0, warnings only on the other ranks (they would repeat rank 0's lines)."""
    logging.basicConfig(level=logging.INFO if is_main else logging.WARNING, format="%(message)s", force=True)


def update_summary(path: str | Path, row: dict[str, float]) -> None:
    """Append one epoch's row to a CSV, writing the header first when the file is new or empty."""
    path = Path(path)
    new = not path.is_file() or path.stat().st_size == 0
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def trim_summary(path: str | Path, before_epoch: int) -> None:
    """Keep only the complete rows of epochs < before_epoch (atomically): what a resumed run must append to.

    train.py writes an epoch's row before its checkpoint, so a run killed in between, or in the middle of a row,
    left rows that the resumed run repeats; dropping them here makes the file equal to an uninterrupted run's.
    """
    path = Path(path)
    if not path.is_file():
        return
    with open(path, newline="") as f:
        text = f.read()
    lines = text.splitlines(keepends=True)
    if not lines:
        return
    header = next(csv.reader([lines[0]]))
    keep = [lines[0]] if lines[0].endswith("\n") else []
    for line in lines[1:]:
        cells = next(csv.reader([line]), [])
        epoch = _num(cells[0]) if cells else None
        if line.endswith("\n") and len(cells) == len(header) and isinstance(epoch, float) and epoch < before_epoch:
            keep.append(line)
    if "".join(keep) != text:
        write_text(path, "".join(keep))


def read_summary(path: str | Path) -> list[dict[str, float]]:
    """Rows of a summary CSV with numeric cells as floats."""
    with open(path, newline="") as f:
        return [{k: _num(v) for k, v in r.items()} for r in csv.DictReader(f)]


def _num(v: str):
    try:
        return float(v)
    except (TypeError, ValueError):
        return v


class TensorBoard:
    """Scalars to TensorBoard (event files in log_dir, what `tensorboard --logdir` reads); tensorboard is in
    requirements.txt because train.py logs there by default, and an install without it gets one note and no logs."""

    def __init__(self, log_dir: str | Path, enabled: bool = True):
        self.writer = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # torch's writer needs the separate tensorboard package
            log.info("tensorboard is not installed (pip install -r requirements.txt): no TensorBoard logs "
                     "(summary.csv has the same numbers)")
            return
        self.writer = SummaryWriter(log_dir=str(log_dir))

    def log(self, scalars: dict[str, float], step: int) -> None:
        if self.writer is not None:
            for k, v in scalars.items():
                if isinstance(v, (int, float)):
                    self.writer.add_scalar(k, v, step)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def plot_curves(csv_path: str | Path, png_path: str | Path) -> None:
    """Draw loss (train, val), val MAP@3 / top-1 and the learning rate per epoch from summary.csv into a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_summary(csv_path)
    ep = [r["epoch"] for r in rows]

    def col(name: str) -> list[float]:
        return [r.get(name, math.nan) if isinstance(r.get(name), float) else math.nan for r in rows]

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    panels = ((("train_loss", "train"), ("val_loss", "val")), (("val_map3", "MAP@3"), ("val_top1", "top-1")),
              (("lr", "lr at epoch end"),))
    for ax, curves, title in zip(axes, panels, ("loss", "validation", "learning rate")):
        for name, label in curves:
            ax.plot(ep, col(name), marker="o", ms=3, label=label)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    with atomic_write(png_path) as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
