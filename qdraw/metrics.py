"""Ranking metrics of the Kaggle competition: MAP@3 (credit 1, 1/2, 1/3 for a hit at rank 1, 2, 3), top-1, top-3.

The ancestor logged top-3 accuracy under the name MAP@3; both are here, named for what they are.
"""
from __future__ import annotations

import numpy as np


def top_k(scores: np.ndarray, k: int = 3) -> np.ndarray:
    """Indices of the k highest scores per row, best first: int64 array (N, k). Ties go to the lower class index."""
    scores = np.asarray(scores)
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < scores.shape[1] else np.tile(
        np.arange(scores.shape[1]), (len(scores), 1))
    vals = np.take_along_axis(scores, part, 1)
    order = np.lexsort((part, -vals), axis=1)
    return np.take_along_axis(part, order, 1).astype(np.int64)


def map_at_k(topk: np.ndarray, labels: np.ndarray) -> float:
    """Mean average precision at k for one relevant label per row, from ranked predictions (N, k)."""
    topk, labels = np.asarray(topk), np.asarray(labels)
    if len(labels) == 0:
        return float("nan")
    hits = topk == labels[:, None]
    credit = hits / np.arange(1, topk.shape[1] + 1)
    return float(credit.sum(1).mean())


def ranking_metrics(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """MAP@3, top-1 and top-3 accuracy of scores (N, C) against integer labels (N,)."""
    t3 = top_k(scores, 3)
    labels = np.asarray(labels)
    return {"map3": map_at_k(t3, labels), "top1": float((t3[:, 0] == labels).mean()),
            "top3": float((t3 == labels[:, None]).any(1).mean())}


def format_table(rows: list[tuple[str, dict[str, float]]], title: str | None = None) -> str:
    """A fixed-width table, one line per (name, {"map3", "top1", "top3"}), under an optional title line: the one
    table predict.py, blend2.py, stack.py, demo.py and the experiments print."""
    width = max(12, *(len(name) for name, _ in rows))
    lines = [title] if title else []
    lines.append(f"{'':<{width}}  {'MAP@3':>7}  {'top-1':>7}  {'top-3':>7}")
    lines += [f"{name:<{width}}  {m['map3']:7.4f}  {m['top1']:7.4f}  {m['top3']:7.4f}" for name, m in rows]
    return "\n".join(lines)
