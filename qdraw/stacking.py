"""The LightGBM stacker of stack.py: candidates, their features, boosters per split, scoring, and its reports.

Second stage after several models wrote prediction files (qdraw.predictions). The candidates of a drawing are the union
of every model's top-k classes; each (drawing, candidate) pair gets features from all models (probability, rank,
ratio to the model's top-1, mean/max/std probability across models, how many models put it first or in their top 3,
each model's entropy on the drawing), optionally the candidate's class and drawing features (qdraw.features). A
LightGBM ranker or binary classifier, one query per drawing, learns which candidate is the label; it is early-stopped
on a held-out part (or k folds) so the report can compare it with every single model and their mean blend.
Everything here works on aligned arrays; reading files, flags and error lines stay in stack.py.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import lightgbm as lgb
import numpy as np

from .atomic import write_text
from .features import GROUPS, feature_matrix, lookup, store_features
from .metrics import format_table, ranking_metrics, top_k
from .predictions import blend
from .store import Store

FEATURE_CHOICES = ["class", *GROUPS]
CATEGORICAL = ("class", "country")


def feature_list(text: str | None, have_drawings: bool) -> list[str]:
    """The feature groups a --features text names (None: the default for with or without drawings).

    Raises:
        ValueError: an unknown group, or drawing features without the stores that hold the drawings.
    """
    if text is None:
        # measured (docs/RESULTS.md, second stage): the class alone lost to model features only; with the drawing
        # features it was the best stacker, within noise
        return ["class", *GROUPS] if have_drawings else []
    wanted = [] if text.strip() == "none" else [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in wanted if t not in FEATURE_CHOICES]
    if unknown:
        raise ValueError(f"--features: unknown {', '.join(unknown)}; choose from {','.join(FEATURE_CHOICES)} or none")
    if not have_drawings and any(t != "class" for t in wanted):
        raise ValueError("drawing features in --features need --drawings (the stores holding the drawings)")
    return wanted


def rank_in_row(p: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Rank of p[rows, cols] in its row, 0 = best: how many classes of the row score strictly higher (in float32).

    Ties share a rank (unlike qdraw.vote.ranks_from_probs, which breaks them by class index). One row-wise sort plus
    a binary search over all rows at once: keys (row << 32 | float32 bits) are ordered like (row, value) because
    non-negative float32 bit patterns are ordered like the floats; 3x faster than an argsort of every row (2.4 s for
    112k x 340).
    """
    n, c = p.shape
    if (p < 0).any():
        raise ValueError("rank_in_row needs non-negative scores")
    p32 = p.astype(np.float32) + np.float32(0)  # + 0 turns -0.0, whose sign bit would sort last, into 0.0
    bits = np.sort(p32, axis=1).view(np.uint32).astype(np.uint64)
    keys = (np.arange(n, dtype=np.uint64)[:, None] << np.uint64(32)) | bits
    query = (rows.astype(np.uint64) << np.uint64(32)) | p32[rows, cols].view(np.uint32).astype(np.uint64)
    return (rows + 1) * c - np.searchsorted(keys.ravel(), query, side="right").astype(np.int64)


def candidate_mask(probs: list[np.ndarray], k: int) -> np.ndarray:
    """Bool (N, C): whether a class is in any model's top-k of the drawing (the candidates)."""
    is_cand = np.zeros(probs[0].shape, dtype=bool)
    for p in probs:
        np.put_along_axis(is_cand, top_k(p, k), True, axis=1)
    return is_cand


def candidate_table(probs: list[np.ndarray], k: int = 5,
                    entropy: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Candidates (union of each model's top-k) and their features, rows grouped by drawing.

    Args:
        probs: aligned float arrays (N, C), one per model.
        k: candidates per model.
        entropy: add each model's entropy on the drawing.

    Returns:
        rows int64 (R,) drawing index (ascending), cands int64 (R,) class index (ascending within a drawing),
        features float32 (R, F), feature names (F).
    """
    rows, cands = np.nonzero(candidate_mask(probs, k))
    feats, names = [], []
    in_top1, in_top3 = np.zeros(len(rows), np.float32), np.zeros(len(rows), np.float32)
    cand_p = []
    for m, p in enumerate(probs):
        pr, rk = p[rows, cands], rank_in_row(p, rows, cands)
        top1 = p.max(1)[rows]
        cand_p.append(pr)
        in_top1 += rk == 0
        in_top3 += rk < 3
        feats += [pr, rk, pr / np.maximum(top1, 1e-300)]
        names += [f"p_{m}", f"rank_{m}", f"ratio_{m}"]
        if entropy:
            q = p / np.maximum(p.sum(1, keepdims=True), 1e-300)
            feats.append(-(q * np.log(np.maximum(q, 1e-300))).sum(1)[rows])
            names.append(f"entropy_{m}")
    all_p = np.stack(cand_p, 1)
    feats += [all_p.mean(1), all_p.max(1), all_p.std(1), in_top1, in_top3]
    names += ["p_mean", "p_max", "p_std", "n_top1", "n_top3"]
    return rows.astype(np.int64), cands.astype(np.int64), np.stack(feats, 1).astype(np.float32), names


def candidate_probs(rows: np.ndarray, cands: np.ndarray, scores: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Softmax of candidate scores within each drawing, scattered to float64 (N, C) with 0 for non-candidates."""
    starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
    top = np.maximum.reduceat(scores, starts)
    e = np.exp(scores - np.repeat(top, np.diff(np.r_[starts, len(rows)])))
    total = np.add.reduceat(e, starts)
    out = np.zeros(shape)
    out[rows, cands] = e / np.repeat(total, np.diff(np.r_[starts, len(rows)]))
    return out


def make_splits(n: int, holdout: float, folds: int, seed: int) -> list[np.ndarray]:
    """Held-out drawing indices: one set (a `holdout` fraction) or `folds` disjoint sets covering all drawings."""
    perm = np.random.default_rng(seed).permutation(n)
    if folds:
        return [np.sort(f) for f in np.array_split(perm, folds)]
    n_hold = min(max(1, round(holdout * n)), n - 1)
    return [np.sort(perm[:n_hold])]


def lgb_params(objective: str = "lambdarank", lr: float = 0.05, num_leaves: int = 31, min_data_in_leaf: int = 20,
               threads: int = 0, seed: int = 0) -> dict:
    """LightGBM parameters (defaults: stack.py's); deterministic so a fixed seed and thread count repeat a run."""
    return {"objective": objective, "metric": "map", "eval_at": [3], "learning_rate": lr, "num_leaves": num_leaves,
            "min_data_in_leaf": min_data_in_leaf, "num_threads": threads, "seed": seed, "deterministic": True,
            "force_row_wise": True, "verbose": -1}


def _dataset(rows: np.ndarray, feats: np.ndarray, target: np.ndarray, samples: np.ndarray, names: list[str],
             reference: lgb.Dataset | None = None) -> lgb.Dataset:
    """LightGBM Dataset of the candidate rows of the given drawings, one query group per drawing."""
    keep = np.isin(rows, samples)
    group = np.bincount(rows[keep], minlength=rows.max() + 1)
    cats = [n for n in names if n in CATEGORICAL] or "auto"  # LightGBM's own handling of categories
    return lgb.Dataset(feats[keep], label=target[keep], group=group[group > 0], feature_name=names,
                       categorical_feature=cats, reference=reference, free_raw_data=False)


def train_stacker(rows: np.ndarray, feats: np.ndarray, target: np.ndarray, names: list[str], valid: np.ndarray,
                  params: dict, rounds: int, patience: int) -> lgb.Booster:
    """One booster trained on every drawing outside `valid`, early-stopped on MAP@3 of the `valid` drawings."""
    train_samples = np.setdiff1d(np.unique(rows), valid)
    dtrain = _dataset(rows, feats, target, train_samples, names)
    dvalid = _dataset(rows, feats, target, valid, names, reference=dtrain)
    return lgb.train(params, dtrain, num_boost_round=rounds, valid_sets=[dvalid], valid_names=["holdout"],
                     callbacks=[lgb.early_stopping(patience, verbose=False)])


class Extras(NamedTuple):
    """Features beyond the models': per-drawing columns float32 (N, E) with their names, and the candidate's class."""

    drawing: np.ndarray | None = None
    names: list[str] = []
    with_class: bool = False


def add_extras(rows: np.ndarray, cands: np.ndarray, feats: np.ndarray, names: list[str],
               extras: Extras) -> tuple[np.ndarray, list[str]]:
    """The candidate table with the drawing columns of each row's drawing and the candidate's class index appended."""
    cols, extra_names = [feats], list(names)
    if extras.drawing is not None and extras.names:
        cols.append(extras.drawing[rows])
        extra_names += extras.names
    if extras.with_class:
        cols.append(cands[:, None].astype(np.float32))
        extra_names.append("class")
    return np.concatenate(cols, 1).astype(np.float32), extra_names


def fit_stacker(probs: list[np.ndarray], labels: np.ndarray, k: int, entropy: bool, splits: list[np.ndarray],
                params: dict, rounds: int, patience: int,
                extras: Extras = Extras()) -> tuple[list[lgb.Booster], np.ndarray]:
    """Train one booster per split of labelled predictions, each early-stopped on its held-out drawings.

    Returns:
        the boosters and the stacker's float64 probabilities (H, C) for the held-out drawings
        np.concatenate(splits), each scored by the booster that did not train on it.
    """
    rows, cands, feats, names = candidate_table(probs, k, entropy)
    feats, names = add_extras(rows, cands, feats, names, extras)
    target = (cands == labels[rows]).astype(np.int32)
    boosters, scores = [], np.zeros(len(rows))
    for i, valid in enumerate(splits):
        booster = train_stacker(rows, feats, target, names, valid, params, rounds, patience)
        keep = np.isin(rows, valid)
        scores[keep] = booster.predict(feats[keep], num_iteration=booster.best_iteration, raw_score=True)
        boosters.append(booster)
        print(f"split {i + 1}/{len(splits)}: best iteration {booster.best_iteration}")
    held = np.concatenate(splits)
    return boosters, candidate_probs(rows, cands, scores, probs[0].shape)[held]


def apply_stacker(boosters: list[lgb.Booster], probs: list[np.ndarray], k: int, entropy: bool,
                  extras: Extras = Extras()) -> np.ndarray:
    """Float64 (N, C) probabilities of new drawings: softmax over each drawing's candidates of the boosters' mean raw
    score, 0 for the other classes. probs, k, entropy and extras must be those the boosters were fitted with."""
    rows, cands, feats, names = candidate_table(probs, k, entropy)
    feats, _ = add_extras(rows, cands, feats, names, extras)
    scores = np.mean([b.predict(feats, num_iteration=b.best_iteration, raw_score=True) for b in boosters], 0)
    return candidate_probs(rows, cands, scores, probs[0].shape)


def load_extras(drawings: list[str] | None, features: list[str], val_keys: np.ndarray,
                test_keys: np.ndarray | None) -> tuple[Extras, Extras, dict]:
    """Extras of the validation and test drawings from the stores and feature groups, and what the model needs to be
    applied again ({"features": names, "country": vocabulary}).

    A feature with no value on any test drawing (Kaggle's test rows carry no `recognized`) or on any validation
    drawing is dropped with a note: the booster would learn it on one split and meet only missing values on the other.

    Raises:
        StoreError: a store in `drawings` cannot be read.
    """
    with_class = "class" in features
    groups = [g for g in features if g != "class"]
    if not groups:
        return Extras(None, [], with_class), Extras(None, [], with_class), {"features": [], "country": []}
    table = store_features([Store(p) for p in drawings])
    vocab = sorted({c for c in lookup(*table, val_keys).get("country", np.zeros(0, "S2")).tolist() if c})
    val_cols, names = feature_matrix(val_keys, table, groups, vocab)
    test_cols = feature_matrix(test_keys, table, groups, vocab)[0] if test_keys is not None else None
    keep = []
    for j, name in enumerate(names):
        cover = [float(np.isfinite(c[:, j]).mean()) for c in (val_cols, test_cols) if c is not None]
        print(f"feature {name}: a value for {' / '.join(f'{x:.1%}' for x in cover)} of the "
              f"{'validation / test' if len(cover) == 2 else 'validation'} drawings")
        if min(cover) == 0:
            print(f"note: feature {name} dropped (no value on one split)")
        else:
            keep.append(j)
    names = [names[j] for j in keep]
    val_x = Extras(val_cols[:, keep], names, with_class)
    test_x = Extras(test_cols[:, keep], names, with_class) if test_cols is not None else val_x
    return val_x, test_x, {"features": names, "country": [c.decode("ascii", "replace") for c in vocab]}


def save_boosters(boosters: list[lgb.Booster], path: str | Path, folds: bool, spec: dict) -> None:
    """Write each booster as LightGBM text (PATH, or PATH.foldI with folds) and spec to PATH.features.json."""
    path = Path(path)
    for i, booster in enumerate(boosters):
        booster.save_model(str(path.with_name(f"{path.stem}.fold{i}{path.suffix}") if folds else path))
    # the features and country codes the boosters were trained with, to apply them again outside this run
    write_text(path.with_name(path.name + ".features.json"), json.dumps(spec))


def comparison(title: str, names: list[str], probs: list[np.ndarray], stacked: np.ndarray, labels: np.ndarray,
               k: int) -> str:
    """Table of MAP@3 / top-1 / top-3 of each model, their mean blend and the stacker on the same labelled drawings,
    titled with how often the label is among the candidates (the stacker's ceiling)."""
    is_cand = candidate_mask(probs, k)
    recall = float(is_cand[np.arange(len(labels)), labels].mean())
    lines = [(name, ranking_metrics(pr, labels)) for name, pr in zip(names, probs)]
    lines += [("mean blend", ranking_metrics(blend(probs), labels)), ("stacker", ranking_metrics(stacked, labels))]
    return format_table(lines, title=f"{title}; label among candidates: {recall:.4f}")


def report_importance(boosters: list[lgb.Booster], path: str | Path | None) -> None:
    """Print each feature's gain importance (mean over boosters, share of the total) and save it as a CSV."""
    names = boosters[0].feature_name()
    gain = np.mean([b.feature_importance("gain") for b in boosters], 0)
    splits = np.mean([b.feature_importance("split") for b in boosters], 0)
    share = gain / max(gain.sum(), 1e-300)
    order = np.argsort(-gain, kind="stable")
    print("feature importance (gain share, splits):")
    print("\n".join(f"  {names[j]:<14} {share[j]:7.4f}  {splits[j]:7.1f}" for j in order))
    if path:
        write_text(path, "feature,gain,gain_share,splits\n" +
                   "".join(f"{names[j]},{gain[j]:.6g},{share[j]:.6f},{splits[j]:.6g}\n" for j in order))
