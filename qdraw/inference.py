"""Prediction from a checkpoint alone: rebuild the model, open the input as a store, run it (optionally with TTA).

The model is rebuilt from ``ckpt["arch"]`` and ``ckpt["model_args"]`` through the registry of qdraw.zoo (the
architectures are registered by the top-level models.py, which the calling script imports) and put in eval mode (the
ancestor predicted in train mode, with BatchNorm's batch statistics); nothing from the training YAML is needed.
"""
from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .augment import Augment
from .checkpoint import CheckpointError, load_checkpoint
from .dataset import SplitDataset
from .loader import create_loader
from .prepare import pack_eval_input
from .store import Store
from .zoo import create_model

log = logging.getLogger(__name__)


WEIGHTS = ("auto", "raw", "ema")


def select_weights(ckpt: dict, weights: str = "auto", where: object = "checkpoint") -> tuple[str, dict]:
    """Which weights of a checkpoint to use: "raw" (the trained ones), "ema" (the moving average, when the run kept
    one) or "auto" (the EMA when there is one, else raw); returns (the choice, its state_dict)."""
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
    has_ema = isinstance(ckpt.get("ema"), dict)
    if weights == "ema" and not has_ema:
        raise CheckpointError(f"{where}: no EMA weights (the run was trained without --ema-decay); use --weights raw")
    choice = "ema" if weights == "ema" or (weights == "auto" and has_ema) else "raw"
    return choice, ckpt["ema" if choice == "ema" else "model"]


def build_model(ckpt: dict, path: str | Path, weights: str = "auto") -> torch.nn.Module:
    """The checkpoint's network with the chosen weights (select_weights), in eval mode on the CPU."""
    try:
        model = create_model(ckpt["arch"], **ckpt["model_args"])
    except TypeError as exc:
        raise CheckpointError(f"{path}: model_args {ckpt['model_args']} do not fit {ckpt['arch']} ({exc})") from exc
    _, state = select_weights(ckpt, weights, path)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:  # torch lists every mismatched tensor; the first one says enough
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()] or ["mismatch"]
        first = lines[min(1, len(lines) - 1)]
        if len(first) > 160:
            cut = first.rfind(", ", 0, 160)
            first = first[:cut if cut > 0 else 160] + ", ..."
        raise CheckpointError(f"{path}: weights do not fit a {ckpt['arch']} with {ckpt['model_args']} "
                              f"({first})") from exc
    return model.eval()


def load_model(path: str | Path, device: torch.device, weights: str = "auto") -> tuple[torch.nn.Module, dict]:
    """The checkpoint's model (weights chosen as select_weights says) in eval mode on device, and the checkpoint
    dict (weights_only=True load)."""
    ckpt = load_checkpoint(path)
    return build_model(ckpt, path, weights).to(device), ckpt


def open_input(source: str | Path, classes: list[str], split: str | None, stack: ExitStack) -> tuple[Store, str]:
    """A Store and split for source: a prepared store (split val|test), or anything qdraw.prepare.pack_eval_input
    reads (a Kaggle test CSV, one Google ndjson file, a folder of per-class files).

    Files are packed into a temporary store that lives as long as stack. Skipped rows, and drawings whose word is not
    among classes (predicted but not scored), are logged as one warning each.
    """
    source = Path(source)
    if not source.exists():
        raise ValueError(f"{source}: no such file or folder")
    if (source / "meta.json").is_file():
        store = Store(source)
        if split is None:
            split = "test" if store.test_blocks() else "val"
        return store, split
    if split not in (None, "test"):
        raise ValueError(f"--split {split} needs a prepared store; {source} is a file or a folder of drawings")
    tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="predict-")))
    stats = pack_eval_input(source, tmp / "store", classes)
    skipped = dict(stats["skipped"])
    if skipped:  # a Kaggle submission needs every key_id: say how many rows got no prediction, and why
        log.warning("warning: %s: %d of %d rows skipped and not predicted (%s)", source, sum(skipped.values()),
                    stats["read"], ", ".join(f"{k}: {v}" for k, v in sorted(skipped.items())))
    unknown = stats.get("unknown_words", {})
    if unknown:  # MAP@3 covers the other drawings only; a silent gap would read as a score over all of them
        words = sorted(unknown.items(), key=lambda kv: (-kv[1], kv[0]))
        log.warning("warning: %s: %d drawings have words the model does not know (%s%s): predicted, not scored",
                    source, sum(unknown.values()), ", ".join(f"{w}: {n}" for w, n in words[:5]),
                    f", ... {len(words) - 5} more words" if len(words) > 5 else "")
    return Store(tmp / "store"), "test"


@torch.no_grad()
def predict_probs(classify: Callable[[torch.Tensor], np.ndarray], ds: SplitDataset, render, batch_size: int,
                  workers: int, tta: bool = False, progress: bool = True) -> tuple[np.ndarray, float]:
    """Softmax probabilities float32 (N, C) in dataset order (with tta, the mean with the mirrored drawings), and the
    throughput in drawings per second, all views included.

    classify maps a rendered batch (render: qdraw.render, from the model's InputSpec) to float32 (B, C)
    probabilities: a qdraw.classifier.Classifier (torch checkpoint or ONNX file), so both run on the very batches the
    loader draws. The mirrored view is the dataset with ``Augment(hflip=1.0)`` as its transform.
    """
    views = [None, Augment(hflip=1.0)] if tta else [None]
    total = np.zeros((len(ds), ds.store.num_classes), np.float64)
    t0 = time.perf_counter()
    original = ds.transform
    try:
        for view in views:
            ds.transform = view
            loader = create_loader(ds, render, batch_size, is_training=False, num_workers=workers)
            out = [classify(x) for x, _ in tqdm(loader, desc="predict" + (" (flipped)" if view else ""),
                                                disable=not progress, unit="batch")]
            loader.close()
            total += np.concatenate(out) if out else 0.0
    finally:
        ds.transform = original
    return (total / len(views)).astype(np.float32), len(ds) / max(time.perf_counter() - t0, 1e-9)
