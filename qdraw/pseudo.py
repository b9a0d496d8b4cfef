"""Pseudo-labelling: test drawings labelled by a model's top-1 guess, added to a store as a separate, marked source.

Fifth place gained about +0.001 twice by labelling the test set with their blend's top-1 class, fine-tuning on it
and repeating. Here a prediction CSV over a store's test split picks the drawings (a top-1 probability of at least
``threshold``, and/or the ``top_share`` most confident of each predicted class, so a class-balanced test set gives
a class-balanced pseudo set); they are written with those labels under ``STORE/pseudo/`` (qdraw.store's layout),
never into a class's training or validation blocks. A drawing whose key_id is also in the store's validation split
is dropped, so the pseudo set can never leak into the drawings that score a run; train.py mixes it in only when
asked (``--pseudo-share``).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from .atomic import atomic_dir, link_or_copy, write_text
from .predictions import Predictions
from .store import Store, concat_blocks, write_block


def select(probs: np.ndarray, threshold: float | None = None, top_share: float | None = None) -> np.ndarray:
    """Mask (N,) of the drawings to pseudo-label: top-1 probability >= threshold and, with top_share, among the
    ceil(top_share * n_c) most confident of the n_c drawings whose top-1 class is c (ties to the earlier row)."""
    if threshold is None and top_share is None:
        raise ValueError("give a threshold, a top share, or both")
    if top_share is not None and not 0 < top_share <= 1:
        raise ValueError(f"top share must be in (0, 1], got {top_share}")
    top1, conf = probs.argmax(1), probs.max(1)
    keep = np.ones(len(probs), bool) if threshold is None else conf >= threshold
    if top_share is not None:
        ranked = np.zeros(len(probs), bool)
        for c in np.unique(top1):
            rows = np.flatnonzero(top1 == c)
            order = rows[np.argsort(-conf[rows], kind="stable")]
            ranked[order[:math.ceil(top_share * len(rows))]] = True
        keep &= ranked
    return keep


def mirror_store(src: Path, dst: Path) -> None:
    """Make dst a copy of store src (hard links where possible, qdraw.atomic.link_or_copy), pseudo/ left out."""
    if dst.exists() and any(dst.iterdir()):
        raise ValueError(f"{dst} exists and is not empty; give a new --output or the --input store itself")
    for folder, dirs, files in os.walk(src):
        rel = Path(folder).relative_to(src)
        if rel.parts[:1] == ("pseudo",):
            continue
        dirs[:] = [d for d in dirs if not (rel == Path(".") and d == "pseudo") and not d.startswith(".")]
        (dst / rel).mkdir(parents=True, exist_ok=True)
        for name in files:
            if not name.startswith("."):
                link_or_copy(Path(folder) / name, dst / rel / name)


def pseudo_label(store: Store, preds: Predictions, out: Path, threshold: float | None, top_share: float | None,
                 source: str) -> dict:
    """Write the pseudo-labelled test drawings of store (chosen from preds) to out/pseudo; return its meta.

    out is store.root (in place) or a mirror of it. Raises ValueError when preds' classes differ from the store's or
    its key_ids are not test drawings of the store, and StoreError for a damaged block.
    """
    if set(preds.classes) != set(store.classes):
        raise ValueError("the prediction file's classes differ from the store's")
    probs = preds.probs[:, [preds.classes.index(c) for c in store.classes]]
    paths = store.test_blocks()
    if not paths:
        raise ValueError(f"{store.root}: no test split to pseudo-label")
    test = concat_blocks([store.read_block(p) for p in paths])
    order = np.argsort(test.key_id, kind="stable")
    pos = order[np.clip(np.searchsorted(test.key_id, preds.key_ids, sorter=order), 0, len(order) - 1)]
    if not (test.key_id[pos] == preds.key_ids).all():
        missing = int((test.key_id[pos] != preds.key_ids).sum())
        raise ValueError(f"{missing} key_ids of the prediction file are not in {store.root}'s test split")
    val_keys = np.concatenate([np.asarray(store.read_block(p).key_id) for c in range(store.num_classes)
                               for p in store.val_blocks(c)] or [np.zeros(0, np.int64)])
    keep = select(probs, threshold, top_share)
    in_val = np.isin(preds.key_ids, val_keys)
    keep &= ~in_val
    labels = probs.argmax(1)
    true = np.asarray(test.label)[pos]
    known = keep & (true >= 0)
    block_size = int(store.meta.get("block_size", 10000))
    sizes: dict[str, list[int]] = {}
    with atomic_dir(out / "pseudo") as tmp:
        for c in range(store.num_classes):
            rows = np.flatnonzero(keep & (labels == c))
            if not len(rows):
                continue
            block = test.select(pos[rows])
            block.label[:] = c
            (tmp / f"{c:03d}").mkdir()
            for b, start in enumerate(range(0, len(rows), block_size)):
                write_block(tmp / f"{c:03d}" / f"block_{b:04d}.qdb", block.slice(start, min(start + block_size,
                                                                                            len(rows))))
                sizes.setdefault(str(c), []).append(min(block_size, len(rows) - start))
        meta = {"source": source, "threshold": threshold, "top_share": top_share, "candidates": len(preds.key_ids),
                "drawings": int(keep.sum()), "dropped_in_validation": int((in_val & select(probs, threshold,
                                                                                               top_share)).sum()),
                "label_accuracy": float((labels[known] == true[known]).mean()) if known.any() else None,
                "block_sizes": sizes}
        write_text(tmp / "meta.json", json.dumps(meta, indent=1))
    return meta

