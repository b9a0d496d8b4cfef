"""Second-level stacker: LightGBM re-ranks each drawing's candidate classes using the predictions of several models.

The ancestor described this stage but shipped only blending. Candidates of a drawing are the union of every model's
top-k classes; each (drawing, candidate) pair gets features from all models (probability, rank, ratio to the model's
top-1, mean/max/std probability across models, how many models put it first or in their top 3, each model's entropy
on the drawing). A LightGBM ranker (lambdarank, one query per drawing) or binary classifier learns on labelled
validation predictions, early-stopped on a held-out part (or k folds) where MAP@3 of the stacker is reported next to
every single model and their mean blend; then it scores the test predictions and writes the submission.
Besides the model features, each pair can carry the candidate's class and drawing features (qdraw.features: strokes,
points, bounding-box aspect, raw times and pauses, recognized, countrycode) read by key_id from the stores given to
--drawings; class and countrycode go to LightGBM as categories and absent values stay missing (NaN), both handled by
LightGBM itself. The gain importance of every feature is printed and, with --importance, saved as a CSV.
Give the files of each model in the same order in --val and --test. `--submission` writes the Kaggle submission,
`--preds` the stacker's prediction CSV (the vocabulary of predict.py and blend2.py; the older names --output and
--save-probs still work).

    python stack.py --val runs/a/val.csv.gz runs/b/val.csv.gz --labels runs/a/val_labels.csv \
        --test runs/a/test.csv.gz runs/b/test.csv.gz --submission sub_stack.csv
    python stack.py --val a_val.csv.gz b_val.csv.gz c_val.csv.gz --labels val_labels.csv --test a.csv.gz b.csv.gz \
        c.csv.gz --submission sub.csv --folds 5 --top-k 5 --preds stack_test.csv.gz --model-out stack.txt
    python stack.py --val a_val.csv.gz b_val.csv.gz --labels val_labels.csv --test a.csv.gz b.csv.gz \
        --drawings data/s16 data/raw16 --features class,strokes,points,time --importance importance.csv
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import NamedTuple

import lightgbm as lgb
import numpy as np

from qdraw.atomic import write_text
from qdraw.features import GROUPS, feature_matrix, lookup, store_features
from qdraw.metrics import format_table, ranking_metrics, top_k
from qdraw.predictions import (Predictions, align, blend, labels_for, read_labels, read_predictions,
                               write_predictions, write_submission)
from qdraw.store import Store, StoreError

FEATURE_CHOICES = ["class", *GROUPS]
CATEGORICAL = ("class", "country")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="LightGBM stacker over the top-k candidates of several models")
    group = parser.add_argument_group("Data")
    group.add_argument("--val", nargs="+", required=True, help="labelled validation prediction CSVs, one per model")
    group.add_argument("--labels", required=True, help="labels CSV (key_id,word) of the validation drawings")
    group.add_argument("--test", nargs="+", default=None,
                       help="test prediction CSVs, same models in the same order as --val (default: none, report only)")
    group = parser.add_argument_group("Model")
    group.add_argument("--top-k", type=int, default=5, help="candidates per model and drawing, >= 3 (default: 5)")
    group.add_argument("--objective", default="lambdarank", choices=["lambdarank", "binary"],
                       help="LightGBM objective; queries are drawings (default: lambdarank)")
    group.add_argument("--entropy", action=argparse.BooleanOptionalAction, default=True,
                       help="add each model's entropy on the drawing as a feature (default: on)")
    group.add_argument("--drawings", nargs="+", default=None, metavar="STORE",
                       help="prepared stores whose validation and test splits hold the drawings (by key_id), for "
                            "the drawing features; give a raw twin store too for the time features (default: none)")
    group.add_argument("--features", default=None,
                       help=f"comma list of extra features out of {','.join(FEATURE_CHOICES)}, or none (default: "
                            "class and every drawing feature with --drawings, none without)")
    group = parser.add_argument_group("Optimisation")
    group.add_argument("--holdout", type=float, default=0.2,
                       help="fraction of validation drawings held out for early stopping and the report (default: 0.2)")
    group.add_argument("--folds", type=int, default=0,
                       help="k-fold instead of one holdout: k boosters, out-of-fold report, test scores averaged "
                            "(default: 0 = off)")
    group.add_argument("--rounds", type=int, default=2000, help="maximum boosting rounds (default: 2000)")
    group.add_argument("--early-stopping", type=int, default=100, help="patience in rounds (default: 100)")
    group.add_argument("--lr", type=float, default=0.05, help="LightGBM learning rate (default: 0.05)")
    group.add_argument("--num-leaves", type=int, default=31, help="leaves per tree (default: 31)")
    group.add_argument("--min-data-in-leaf", type=int, default=20, help="rows per leaf at least (default: 20)")
    group.add_argument("--threads", type=int, default=0, help="LightGBM threads (default: 0 = all cores)")
    group.add_argument("--seed", type=int, default=0, help="split and LightGBM seed (default: 0)")
    group = parser.add_argument_group("Output")
    group.add_argument("--submission", "--output", dest="submission", default=None,
                       help="submission CSV for the test drawings (--output is its older name; default: none)")
    group.add_argument("--preds", "--save-probs", dest="preds", default=None,
                       help="test prediction CSV of the stacker: softmax of its scores over each drawing's "
                            "candidates, 0 elsewhere (--save-probs is its older name; default: none)")
    group.add_argument("--model-out", default=None,
                       help="LightGBM model text file; with --folds, one file per fold (.foldI) (default: none)")
    group.add_argument("--importance", default=None,
                       help="CSV of each feature's gain importance, mean over boosters (default: none)")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and check flag combinations; conflicts end in parser.error (usage + message, exit 2)."""
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if args.test is not None and len(args.test) != len(args.val):
        parser.error(f"--test has {len(args.test)} files for {len(args.val)} --val files (one per model, same order)")
    if (args.submission or args.preds) and args.test is None:
        parser.error("--submission and --preds need --test")
    if args.top_k < 3:
        parser.error("--top-k must be at least 3 so every drawing has 3 candidates")
    if args.folds == 1 or args.folds < 0:
        parser.error("--folds must be 0 (use --holdout) or at least 2")
    if not args.folds and not 0 < args.holdout < 1:
        parser.error("--holdout must be a fraction in (0, 1)")
    if args.rounds < 1 or args.early_stopping < 1 or args.num_leaves < 2 or args.min_data_in_leaf < 0:
        parser.error("need --rounds >= 1, --early-stopping >= 1, --num-leaves >= 2 and --min-data-in-leaf >= 0")
    if not args.lr > 0 or args.threads < 0:
        parser.error("need --lr > 0 and --threads >= 0")
    args.features = _feature_list(parser, args.features, args.drawings is not None)
    for flag, path in (("--submission", args.submission), ("--preds", args.preds), ("--model-out", args.model_out),
                       ("--importance", args.importance)):
        if path and not Path(path).resolve().parent.is_dir():
            parser.error(f"{flag} {path}: no such folder {Path(path).parent}")
    return args


def rank_in_row(p: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Rank of p[rows, cols] in its row, 0 = best: how many classes of the row score strictly higher (in float32).

    Ties share a rank. One row-wise sort plus a binary search over all rows at once: keys (row << 32 | float32 bits)
    are ordered like (row, value) because non-negative float32 bit patterns are ordered like the floats; 3x faster
    than an argsort of every row (2.4 s for 112k x 340).
    """
    n, c = p.shape
    if (p < 0).any():
        raise ValueError("rank_in_row needs non-negative scores")
    p32 = p.astype(np.float32) + np.float32(0)  # + 0 turns -0.0, whose sign bit would sort last, into 0.0
    bits = np.sort(p32, axis=1).view(np.uint32).astype(np.uint64)
    keys = (np.arange(n, dtype=np.uint64)[:, None] << np.uint64(32)) | bits
    query = (rows.astype(np.uint64) << np.uint64(32)) | p32[rows, cols].view(np.uint32).astype(np.uint64)
    return (rows + 1) * c - np.searchsorted(keys.ravel(), query, side="right").astype(np.int64)


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
    n, c = probs[0].shape
    is_cand = np.zeros((n, c), dtype=bool)
    for p in probs:
        np.put_along_axis(is_cand, top_k(p, k), True, axis=1)
    rows, cands = np.nonzero(is_cand)
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


def lgb_params(args: argparse.Namespace) -> dict:
    """LightGBM parameters from the flags; deterministic so a fixed --seed and thread count repeat a run exactly."""
    return {"objective": args.objective, "metric": "map", "eval_at": [3], "learning_rate": args.lr,
            "num_leaves": args.num_leaves, "min_data_in_leaf": args.min_data_in_leaf, "num_threads": args.threads,
            "seed": args.seed, "deterministic": True, "force_row_wise": True, "verbose": -1}


def _load(paths: list[str], what: str, classes: list[str] | None = None) -> list[Predictions]:
    """Read and align one model's files per path; reorder classes to `classes`; one error line on bad input."""
    try:
        preds = align([read_predictions(p) for p in paths], names=paths)
        if classes is not None and preds[0].classes != classes:
            if set(preds[0].classes) != set(classes):
                raise ValueError(f"{what}: class set differs from the validation files'")
            cols = [preds[0].classes.index(name) for name in classes]
            preds = [Predictions(p.key_ids, p.probs[:, cols], list(classes)) for p in preds]
        return preds
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None


def _report(title: str, paths: list[str], probs: list[np.ndarray], stacked: np.ndarray, labels: np.ndarray,
            k: int) -> None:
    """Print MAP@3 / top-1 / top-3 of each model, their mean blend and the stacker on the held-out drawings."""
    is_cand = np.zeros(stacked.shape, dtype=bool)
    for p in probs:
        np.put_along_axis(is_cand, top_k(p, k), True, axis=1)
    recall = float(is_cand[np.arange(len(labels)), labels].mean())
    lines = [(Path(p).name, ranking_metrics(pr, labels)) for p, pr in zip(paths, probs)]
    lines += [("mean blend", ranking_metrics(blend(probs), labels)), ("stacker", ranking_metrics(stacked, labels))]
    print(format_table(lines, title=f"{title}; label among candidates: {recall:.4f}"))


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


def _feature_list(parser: argparse.ArgumentParser, text: str | None, have_drawings: bool) -> list[str]:
    """The --features groups; drawing features need --drawings (parser.error otherwise)."""
    if text is None:
        # measured (docs/RESULTS.md, second stage): the class alone lost to model features only; with the drawing
        # features it was the best stacker, within noise
        return ["class", *GROUPS] if have_drawings else []
    wanted = [] if text.strip() == "none" else [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in wanted if t not in FEATURE_CHOICES]
    if unknown:
        parser.error(f"--features: unknown {', '.join(unknown)}; choose from {','.join(FEATURE_CHOICES)} or none")
    if not have_drawings and any(t != "class" for t in wanted):
        parser.error("drawing features in --features need --drawings (the stores holding the drawings)")
    return wanted


def load_extras(args: argparse.Namespace, val_keys: np.ndarray,
                test_keys: np.ndarray | None) -> tuple[Extras, Extras, dict]:
    """Extras of the validation and test drawings from --drawings and --features, and what the model needs to be
    applied again ({"features": names, "country": vocabulary}).

    A feature with no value on any test drawing (Kaggle's test rows carry no `recognized`) or on any validation
    drawing is dropped with a note: the booster would learn it on one split and meet only missing values on the other.
    """
    with_class = "class" in args.features
    groups = [g for g in args.features if g != "class"]
    if not groups:
        return Extras(None, [], with_class), Extras(None, [], with_class), {"features": [], "country": []}
    try:
        table = store_features([Store(p) for p in args.drawings])
    except StoreError as e:
        raise SystemExit(f"error: {e}") from None
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


def report_importance(boosters: list[lgb.Booster], path: str | None) -> None:
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


def main(args: argparse.Namespace) -> None:
    val = _load(args.val, "--val")
    classes, probs = val[0].classes, [p.probs for p in val]
    try:
        labels = labels_for(val[0].key_ids, read_labels(args.labels, classes), args.labels)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    test = _load(args.test, "--test", classes) if args.test else None

    if len(labels) < max(2, args.folds):
        raise SystemExit(f"error: {len(labels)} labelled drawings cannot be split for training and "
                         f"{f'{args.folds} folds' if args.folds else 'a holdout'}")
    splits = make_splits(len(labels), args.holdout, args.folds, args.seed)
    val_x, test_x, spec = load_extras(args, val[0].key_ids, test[0].key_ids if test else None)
    try:
        boosters, stacked = fit_stacker(probs, labels, args.top_k, args.entropy, splits, lgb_params(args),
                                        args.rounds, args.early_stopping, val_x)
    except lgb.basic.LightGBMError as e:  # e.g. a held-out part too small for the chosen leaves
        raise SystemExit(f"error: LightGBM: {e}") from None
    held = np.concatenate(splits)
    title = f"{'out-of-fold' if args.folds else 'held-out'} MAP@3 on {len(held)} of {len(labels)} drawings"
    _report(title, args.val, [p[held] for p in probs], stacked, labels[held], args.top_k)
    report_importance(boosters, args.importance)
    if args.model_out:
        path = Path(args.model_out)
        for i, booster in enumerate(boosters):
            booster.save_model(str(path.with_name(f"{path.stem}.fold{i}{path.suffix}") if args.folds else path))
        # the country codes the boosters were trained with, to apply them again outside this run
        write_text(path.with_name(path.name + ".features.json"), json.dumps(spec | {"args": args.features}))
    if test:
        _write_test(args, test, boosters, test_x)


def _write_test(args: argparse.Namespace, test: list[Predictions], boosters: list[lgb.Booster],
                extras: Extras = Extras()) -> None:
    """Score test candidates with the mean raw score of the boosters and write the submission / probabilities."""
    probs = [p.probs for p in test]
    rows, cands, feats, names = candidate_table(probs, args.top_k, args.entropy)
    feats, _ = add_extras(rows, cands, feats, names, extras)
    scores = np.mean([b.predict(feats, num_iteration=b.best_iteration, raw_score=True) for b in boosters], 0)
    stacked = candidate_probs(rows, cands, scores, probs[0].shape)
    key_ids, classes = test[0].key_ids, test[0].classes
    try:
        if args.preds:
            write_predictions(args.preds, key_ids, stacked, classes)
        if args.submission:
            write_submission(args.submission, key_ids, stacked, classes)
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: cannot write output: {e}") from None
    print(f"scored {len(key_ids)} test drawings with {len(boosters)} booster(s)")


if __name__ == "__main__":
    main(parse_args())
