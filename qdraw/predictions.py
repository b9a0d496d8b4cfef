"""Prediction files shared by predict.py, blend2.py and stack.py: read/write, alignment, blending, class balancing.

Scripts of the second stage talk only through files on disk. A prediction CSV has the header
`key_id,<class 1>,<class 2>,...` (class names as in the store's classes.txt, spaces kept, quoted the way the `csv`
module quotes) and one row of class probabilities per drawing; it is gzip-compressed when the path ends in `.gz`.
A submission is Kaggle's `key_id,word` with the top-3 class names joined by spaces and `_` for spaces inside names;
a labels file is Kaggle's solution CSV, `key_id,word` with one class per row in the same `_` spelling.
"""
from __future__ import annotations

import csv
import gzip
import io
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from .atomic import atomic_write
from .metrics import top_k

# Added to probabilities before the log of the geometric mean: a zero in one model costs log(1e-12) instead of -inf,
# so one confident "no" cannot veto a class outright and an all-zero row stays finite.
GMEAN_EPS = 1e-12
# Rows formatted per write call; bounds the temporary strings to a few MB for 340 classes.
_WRITE_CHUNK = 4096


class Predictions(NamedTuple):
    """One prediction file: key_ids int64 (N,), probs float (N, C), class names (C)."""

    key_ids: np.ndarray
    probs: np.ndarray
    classes: list[str]


def _open_text(path: Path, mode: str):
    if path.name.endswith(".gz"):
        return gzip.open(path, mode + "t", encoding="utf-8", newline="")
    return open(path, mode, encoding="utf-8", newline="")


def _atomic_write(path: str | os.PathLike, write_body) -> None:
    """Call write_body(text_file) on a temporary file next to path, then rename it over path (qdraw.atomic).

    Paths ending in .gz are gzip-compressed with a header that holds no file name and mtime 0, so equal text gives
    equal bytes (gzip.open would record the temporary file's name and the clock, and reruns would differ). A crash
    or a bad input never leaves a half-written file under the final name.
    """
    with atomic_write(path, "wb") as raw:
        # Level 1: about 5x faster than the default 9 on this text, and within ~10 % of its size.
        gz = gzip.GzipFile(filename="", mode="wb", compresslevel=1, fileobj=raw, mtime=0) \
            if Path(path).name.endswith(".gz") else None
        text = io.TextIOWrapper(gz if gz is not None else raw, encoding="utf-8", newline="")
        write_body(text)
        text.flush()
        text.detach()  # leave raw open for atomic_write's fsync
        if gz is not None:
            gz.close()  # writes the gzip trailer; a GzipFile never closes a file object it was given


def _check_arrays(key_ids: np.ndarray, probs: np.ndarray, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    key_ids, probs = np.asarray(key_ids), np.asarray(probs)
    if not np.issubdtype(key_ids.dtype, np.integer) or key_ids.ndim != 1:
        raise TypeError(f"key_ids must be a 1-D integer array, got {key_ids.dtype} {key_ids.shape}")
    if probs.ndim != 2 or probs.shape != (len(key_ids), len(classes)):
        raise ValueError(f"probs must have shape (len(key_ids), len(classes)) = ({len(key_ids)}, {len(classes)}), "
                         f"got {probs.shape}")
    if len(set(classes)) != len(classes):
        raise ValueError("class names must be unique")
    return key_ids.astype(np.int64), probs


def write_predictions(path: str | os.PathLike, key_ids: np.ndarray, probs: np.ndarray, classes: list[str]) -> None:
    """Write a prediction CSV (gzip when path ends in .gz) atomically; probabilities with 6 significant digits.

    6 digits is float32 precision, enough for blending; tiny probabilities keep their exponent (`1.2e-30`), so
    geometric means of written files match those of the arrays. About 10 s for 112k x 340 on one core.
    """
    key_ids, probs = _check_arrays(key_ids, probs, classes)
    row_fmt = "%d" + ",%.6g" * len(classes) + "\n"

    def body(f) -> None:
        csv.writer(f, lineterminator="\n").writerow(["key_id", *classes])
        for start in range(0, len(key_ids), _WRITE_CHUNK):
            stop = start + _WRITE_CHUNK
            rows = zip(key_ids[start:stop].tolist(), probs[start:stop].tolist())
            f.write("".join(row_fmt % (k, *p) for k, p in rows))

    _atomic_write(path, body)


def read_predictions(path: str | os.PathLike) -> Predictions:
    """Read a prediction CSV written by write_predictions: key_ids int64 (N,), probs float64 (N, C), classes.

    Raises:
        ValueError: the file is missing, not a prediction CSV, empty, ragged, non-numeric, or has duplicate key_ids
            or class names, or negative / non-finite probabilities. The message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such prediction file")
    try:
        with _open_text(path, "r") as f:
            header = next(csv.reader(f), None)
            if not header or header[0] != "key_id" or len(header) < 2:
                raise ValueError("header must be 'key_id,<class name>,...'")
            classes = header[1:]
            if len(set(classes)) != len(classes):
                raise ValueError("duplicate class names in the header")
            dtypes = {"key_id": np.int64, **{j: np.float64 for j in range(len(classes))}}
            data = pd.read_csv(f, header=None, names=["key_id", *range(len(classes))], dtype=dtypes, engine="c")
    except (ValueError, OSError, EOFError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a valid prediction CSV: {str(e).strip().splitlines()[0]}") from None
    key_ids = data["key_id"].to_numpy(np.int64)
    probs = data.drop(columns="key_id").to_numpy(np.float64)
    if not len(key_ids):
        raise ValueError(f"{path}: no prediction rows")
    if not np.isfinite(probs).all():
        raise ValueError(f"{path}: missing or non-finite probabilities (short row?)")
    if (probs < 0).any():
        raise ValueError(f"{path}: negative probabilities")
    if len(np.unique(key_ids)) != len(key_ids):
        raise ValueError(f"{path}: {len(key_ids) - len(np.unique(key_ids))} duplicate key_ids")
    return Predictions(key_ids, probs, classes)


def submission_words(classes: list[str]) -> list[str]:
    """Kaggle spelling of class names: spaces become `_` (e.g. 'The Eiffel Tower' -> 'The_Eiffel_Tower')."""
    return [c.replace(" ", "_") for c in classes]


def write_submission(path: str | os.PathLike, key_ids: np.ndarray, probs: np.ndarray, classes: list[str]) -> None:
    """Write a Kaggle submission (`key_id,word`, word = top-3 names in Kaggle spelling) atomically, rows in order."""
    key_ids, probs = _check_arrays(key_ids, probs, classes)
    if len(classes) < 3:
        raise ValueError(f"a submission needs at least 3 classes, got {len(classes)}")
    words = np.asarray(submission_words(classes), dtype=object)
    top3 = words[top_k(probs, 3)]

    def body(f) -> None:
        writer = csv.writer(f, lineterminator="\n")  # quotes a word only if a class name holds a comma or quote
        writer.writerow(["key_id", "word"])
        writer.writerows((k, " ".join(t)) for k, t in zip(key_ids.tolist(), top3.tolist()))

    _atomic_write(path, body)


def write_labels(path: str | os.PathLike, key_ids: np.ndarray, labels: np.ndarray, classes: list[str]) -> None:
    """Write labels as Kaggle's solution CSV (`key_id,word`, `_` for spaces) atomically; read back by read_labels."""
    key_ids, labels = np.asarray(key_ids), np.asarray(labels)
    if labels.shape != key_ids.shape or labels.ndim != 1:
        raise ValueError(f"key_ids and labels must be 1-D of one length, got {key_ids.shape} and {labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
        raise ValueError(f"labels must be class indices in [0, {len(classes)}), got {labels.min()}..{labels.max()}")
    words = submission_words(classes)

    def body(f) -> None:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["key_id", "word"])
        writer.writerows((k, words[y]) for k, y in zip(key_ids.astype(np.int64).tolist(), labels.tolist()))

    _atomic_write(path, body)


def read_labels(path: str | os.PathLike, classes: list[str]) -> dict[int, int]:
    """Read a labels file (Kaggle solution CSV `key_id,word`) into {key_id: class index in classes}.

    Words may use `_` for spaces (Kaggle) or the class names themselves.

    Raises:
        ValueError: missing file, wrong header, a word that is no class (named in the message), or one key_id
            with two different labels.
    """
    path = Path(path)
    lookup = {w: i for i, w in enumerate(submission_words(classes))}
    lookup.update({c: i for i, c in enumerate(classes)})
    labels: dict[int, int] = {}
    try:
        with _open_text(path, "r") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None or [h.strip() for h in header[:2]] != ["key_id", "word"]:
                got = "nothing" if header is None else ",".join(header[:3]) + (",..." if len(header) > 3 else "")
                raise ValueError(f"header must be 'key_id,word', got {got!r}")
            for line, row in enumerate(reader, start=2):
                if not row:
                    continue
                key, word = int(row[0]), row[1].strip()
                if word not in lookup:
                    raise ValueError(f"line {line}: unknown class {word!r}")
                if labels.setdefault(key, lookup[word]) != lookup[word]:
                    raise ValueError(f"line {line}: key_id {key} has two different labels")
    except (OSError, IndexError, EOFError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot read labels: {e}") from None
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    return labels


def labels_for(key_ids: np.ndarray, labels: dict[int, int], source: str = "labels") -> np.ndarray:
    """Class indices int64 (N,) for key_ids; ValueError saying how many key_ids have no label in source."""
    out = np.fromiter((labels.get(k, -1) for k in np.asarray(key_ids).tolist()), np.int64, len(key_ids))
    missing = int((out < 0).sum())
    if missing:
        raise ValueError(f"{source}: {missing} of {len(out)} key_ids have no label")
    return out


def align(preds: list[Predictions | tuple], names: list[str] | None = None) -> list[Predictions]:
    """Reorder every prediction set to the first one's key_id order and class order.

    Files are matched by key_id and class name, never by position, so models written in different row or column
    orders blend correctly.

    Raises:
        ValueError: a file's key_id set or class set differs from the first one's; the message names the file and
            counts missing / extra key_ids, or lists the differing classes.
    """
    if not preds:
        raise ValueError("align needs at least one prediction set")
    names = names or [f"file {i + 1}" for i in range(len(preds))]
    keys0, _, classes0 = preds[0]
    keys0 = np.asarray(keys0)
    out = [Predictions(*preds[0])]
    for name, (keys, probs, classes) in zip(names[1:], preds[1:]):
        if set(classes) != set(classes0):
            missing, extra = sorted(set(classes0) - set(classes)), sorted(set(classes) - set(classes0))
            raise ValueError(f"{name}: class set differs from {names[0]}: missing {missing[:5]}"
                             f"{'...' if len(missing) > 5 else ''} ({len(missing)}), extra {extra[:5]}"
                             f"{'...' if len(extra) > 5 else ''} ({len(extra)})")
        keys = np.asarray(keys)
        sorter = np.argsort(keys, kind="stable")
        pos = np.clip(np.searchsorted(keys, keys0, sorter=sorter), 0, len(keys) - 1)
        rows = sorter[pos]
        n_missing = int((keys[rows] != keys0).sum())
        n_extra = len(keys) - (len(keys0) - n_missing)
        if n_missing or n_extra:
            raise ValueError(f"{name}: key_ids differ from {names[0]}: {n_missing} missing, {n_extra} extra")
        col = {c: j for j, c in enumerate(classes)}
        cols = np.array([col[c] for c in classes0])
        out.append(Predictions(keys0, np.asarray(probs)[np.ix_(rows, cols)], list(classes0)))
    return out


def blend(probs: list[np.ndarray], weights: list[float] | np.ndarray | None = None,
          method: str = "mean") -> np.ndarray:
    """Weighted blend of aligned probability matrices (N, C) -> float64 (N, C), rows summing to 1.

    Weights are normalised to sum 1 (None: equal). "mean" is the weighted arithmetic mean (each input row
    normalised first); "gmean" the weighted geometric mean computed in log space, softmax(sum_i w_i log(p_i + eps)),
    which cannot underflow: rows of 1e-300 in every model give a finite, normalised row.
    """
    if method not in ("mean", "gmean"):
        raise ValueError(f"unknown blend method {method!r}; use 'mean' or 'gmean'")
    w = np.full(len(probs), 1.0) if weights is None else np.asarray(weights, dtype=np.float64)
    if len(w) != len(probs) or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"need {len(probs)} non-negative weights with a positive sum, got {w.tolist()}")
    w = w / w.sum()
    if method == "mean":
        out = sum(wi * p / np.maximum(p.sum(1, keepdims=True), 1e-300) for wi, p in zip(w, probs))
        return out / out.sum(1, keepdims=True)
    logits = sum(wi * np.log(np.asarray(p, dtype=np.float64) + GMEAN_EPS) for wi, p in zip(w, probs))
    logits -= logits.max(1, keepdims=True)
    out = np.exp(logits)
    return out / out.sum(1, keepdims=True)


def balance(probs: np.ndarray, iters: int = 100, tol: float = 1e-4) -> np.ndarray:
    """Rescale class probabilities of a set known to be class-balanced so each class gets mass N/C.

    Method: Sinkhorn-Knopp scaling. Alternately scale columns to the uniform mass N/C and renormalise rows to 1;
    the result is diag(r) P diag(c), the matrix closest to P in KL divergence with uniform class marginals. Rows
    scale as a whole, so the ranking inside a row changes only through the per-class coefficients c: this is the
    same family as the Kaggle winners' greedy search (lower the coefficient of the most-predicted class until argmax
    counts are flat), but one smooth fit of all coefficients at once, deterministic and converging in tens of
    matrix-vector products instead of thousands of argmax passes. It flattens soft mass, which flattens argmax
    counts as a consequence. The coefficients are kept as logs and applied shifted by their maximum, so classes
    needing factors of 1e300 neither overflow nor underflow.

    Args:
        probs: float array (N, C) of non-negative scores; rows are normalised first.
        iters: at most this many column/row rounds.
        tol: stop once every class mass is within a factor (1 +- tol) of N/C.

    Returns:
        float64 (N, C), rows summing to 1. Classes with no mass at all stay at 0; the others share N equally.
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or (p < 0).any() or not np.isfinite(p).all():
        raise ValueError("balance needs a finite, non-negative (N, C) array")
    p = p / np.maximum(p.sum(1, keepdims=True), 1e-300)
    alive = p.sum(0) > 0
    target = len(p) / max(int(alive.sum()), 1)
    log_c = np.zeros(p.shape[1])
    for _ in range(iters):
        c = np.exp(log_c - log_c.max())
        r = 1.0 / np.maximum(p @ c, 1e-300)
        mass = c * (r @ p)
        if np.all(np.abs(mass[alive] / target - 1) <= tol):
            break
        log_c[alive] += np.log(target) - np.log(mass[alive])
    out = p * np.exp(log_c - log_c.max())
    return out / np.maximum(out.sum(1, keepdims=True), 1e-300)
