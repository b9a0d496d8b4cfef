"""Checkpoints: a flat dict of plain types and tensors, written atomically and read with ``weights_only=True``.

The layout (``CHECKPOINT_VERSION`` 1) is the one in STYLE.md: ``version, arch, model_args, classes, num_classes,
encoding, image_size, config`` (a plain dict) to rebuild the model without the YAML, and ``model, optimizer, scaler,
epoch`` (last completed), ``step`` (optimiser steps so far), ``best_metric``, ``data_seed`` and ``rng`` to resume a run
exactly. Nothing in it needs pickle's arbitrary-object path, so ``torch.load(weights_only=True)`` reads it and refuses
anything else (a Namespace, a custom class), which is the point: loading a checkpoint never runs foreign code.

Writes go through qdraw.atomic (a hidden temporary file in the same folder, fsync, rename over the target, as timm's
``CheckpointSaver`` renames), so a full disk or a kill mid-write leaves the previous file intact.
"""
from __future__ import annotations

import pickle
import random
import re
import warnings
from pathlib import Path

import numpy as np
import torch

from .atomic import atomic_write, link_or_copy
from .render import InputSpec, spec_of_checkpoint

CHECKPOINT_VERSION = 1
REQUIRED_KEYS = ("version", "arch", "model_args", "classes", "encoding", "image_size", "config", "model", "epoch")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, is of another format version, or does not fit the data or settings."""


def save_checkpoint(state: dict, path: str | Path) -> None:
    """Write state to path atomically (qdraw.atomic: a hidden temporary sibling, fsync, rename over path)."""
    with atomic_write(path) as f:
        torch.save(state, f)


def copy_checkpoint(src: str | Path, dst: str | Path) -> None:
    """Make dst a copy of src atomically: a hard link when the filesystem allows (free), else a byte copy."""
    link_or_copy(src, dst)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint with ``torch.load(weights_only=True)`` and check its format; CheckpointError if unusable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        with warnings.catch_warnings():  # garbage bytes can look like an odd pickle protocol: one error, no warning
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        # Random and truncated files make the restricted unpickler raise KeyError, IndexError, RuntimeError, ...;
        # all mean the same thing here, and none can have run foreign code (weights_only=True).
        raise CheckpointError(f"{path}: {_load_failure(exc)}") from exc
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: not a training checkpoint (a {type(ckpt).__name__}, expected a dict)")
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {ckpt.get('version')!r}, this code reads "
                              f"{CHECKPOINT_VERSION}")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {', '.join(missing)}")
    _check_fields(ckpt, path)
    return ckpt


def _load_failure(exc: Exception) -> str:
    """One line for why torch.load(weights_only=True) failed; torch's own message is a page of advice."""
    text = str(exc)
    # "Unsupported global: GLOBAL argparse.Namespace", or "unsupported GLOBAL posix.system whose module posix is
    # blocked" (os.system: the payload of a malicious file)
    refused = re.search(r"[Uu]nsupported (?:global: )?GLOBAL (\S+)", text)
    if isinstance(exc, pickle.UnpicklingError) and refused:
        return (f"refused by torch.load(weights_only=True): it holds a pickled object ({refused.group(1)}), not a "
                f"checkpoint this code wrote")
    reason = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and "weights_only" not in ln]
    detail = reason.group(1) if reason else lines[0] if lines else text.strip().split("\n")[0] or "no detail"
    return f"unreadable checkpoint ({type(exc).__name__}: {detail})"


def _check_fields(ckpt: dict, path: Path) -> None:
    """The fields predict.py and a resume rely on must agree: class list, class counts, encoding, image size."""
    classes, model_args = ckpt["classes"], ckpt["model_args"]
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes) or not classes:
        raise CheckpointError(f"{path}: 'classes' must be a non-empty list of names")
    counts = {"num_classes": ckpt.get("num_classes", len(classes)),
              "model_args['num_classes']": model_args.get("num_classes") if isinstance(model_args, dict) else None}
    for key, n in counts.items():
        if n != len(classes):
            raise CheckpointError(f"{path}: {key} is {n!r} but the checkpoint lists {len(classes)} classes")
    if not isinstance(ckpt["config"], dict):
        raise CheckpointError(f"{path}: 'config' must be a dict")
    if "input" in ckpt:  # what the model reads (qdraw.render.InputSpec); older checkpoints hold raster fields only
        try:
            spec = InputSpec.from_dict(ckpt["input"])
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: bad 'input' ({exc})") from None
        if spec.kind != "raster":
            return
    if not isinstance(ckpt["encoding"], str):
        raise CheckpointError(f"{path}: 'encoding' must be a name, got {ckpt['encoding']!r}")
    size = ckpt["image_size"]
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise CheckpointError(f"{path}: 'image_size' must be a positive integer, got {size!r}")


def check_compatible(ckpt: dict, classes: list[str] | None = None, encoding: str | None = None,
                     image_size: int | None = None, arch: str | None = None, spec: InputSpec | None = None) -> None:
    """Raise CheckpointError when the checkpoint was trained on other classes, encoding, image size, input (kind,
    encoding, size, points and dt; not the line width, whose default the checkpoint stores resolved) or model."""
    if spec is not None:
        theirs = spec_of_checkpoint(ckpt)
        for key in ("kind", "encoding", "image_size", "max_len", "time"):
            if getattr(theirs, key) != getattr(spec, key):
                raise CheckpointError(f"checkpoint input {key} is {getattr(theirs, key)!r}, this run asks for "
                                      f"{getattr(spec, key)!r}")
    if classes is not None and list(ckpt["classes"]) != list(classes):
        theirs = list(ckpt["classes"])
        if len(theirs) != len(classes):
            raise CheckpointError(f"checkpoint has {len(theirs)} classes, the data has {len(classes)}")
        i = next(i for i, (a, b) in enumerate(zip(theirs, classes)) if a != b)
        raise CheckpointError(f"checkpoint classes differ from the data's at index {i}: {theirs[i]!r} vs "
                              f"{classes[i]!r}")
    for key, want in (("encoding", encoding), ("image_size", image_size), ("arch", arch)):
        if want is not None and ckpt[key] != want:
            raise CheckpointError(f"checkpoint {key} is {ckpt[key]!r}, this run asks for {want!r}")


def rng_state() -> dict:
    """States of the torch, CUDA, NumPy and Python generators as tensors, ints and lists (weights_only-loadable)."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached)},
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }


def set_rng_state(state: dict) -> None:
    """Restore what rng_state() returned (CUDA states only when this process sees as many devices)."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and torch.cuda.device_count() == len(state["cuda"]):
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
