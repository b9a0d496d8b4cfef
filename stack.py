"""Second-level stacker: LightGBM re-ranks each drawing's candidate classes using the predictions of several models.

The ancestor described this stage but shipped only blending. Candidates of a drawing are the union of every model's
top-k classes; each (drawing, candidate) pair gets features from all models, and optionally the candidate's class and
drawing features (strokes, points, aspect, raw times and pauses, recognized, countrycode) read by key_id from the
stores given to --drawings. A LightGBM ranker (lambdarank, one query per drawing) or binary classifier learns on
labelled validation predictions, early-stopped on a held-out part (or k folds) where MAP@3 of the stacker is reported
next to every single model and their mean blend; then it scores the test predictions. The gain importance of every
feature is printed and, with --importance, saved as a CSV. The stacker itself is qdraw.stacking; this script reads
the files and flags. Give the files of each model in the same order in --val and --test. `--submission` writes the
Kaggle submission, `--preds` the stacker's prediction CSV (the vocabulary of predict.py and blend2.py; the older
names --output and --save-probs still work).

    python stack.py --val runs/a/val.csv.gz runs/b/val.csv.gz --labels runs/a/val_labels.csv \
        --test runs/a/test.csv.gz runs/b/test.csv.gz --submission sub_stack.csv
    python stack.py --val a_val.csv.gz b_val.csv.gz c_val.csv.gz --labels val_labels.csv --test a.csv.gz b.csv.gz \
        c.csv.gz --submission sub.csv --folds 5 --top-k 5 --preds stack_test.csv.gz --model-out stack.txt
    python stack.py --val a_val.csv.gz b_val.csv.gz --labels val_labels.csv --test a.csv.gz b.csv.gz \
        --drawings data/s16 data/raw16 --features class,strokes,points,time --importance importance.csv
"""
from __future__ import annotations

import argparse
from pathlib import Path

import lightgbm as lgb
import numpy as np

from qdraw.predictions import (Predictions, align, labels_for, read_labels, read_predictions, write_predictions,
                               write_submission)
from qdraw.stacking import (FEATURE_CHOICES, apply_stacker, comparison, feature_list, fit_stacker, lgb_params,
                            load_extras, make_splits, report_importance, save_boosters)
from qdraw.store import StoreError


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


def check_args(args: argparse.Namespace) -> argparse.Namespace:
    """Flag combinations no run could use: ValueError, which main turns into one error line; resolves --features."""
    if args.test is not None and len(args.test) != len(args.val):
        raise ValueError(f"--test has {len(args.test)} files for {len(args.val)} --val files (one per model, same "
                         f"order)")
    if (args.submission or args.preds) and args.test is None:
        raise ValueError("--submission and --preds need --test")
    if args.top_k < 3:
        raise ValueError("--top-k must be at least 3 so every drawing has 3 candidates")
    if args.folds == 1 or args.folds < 0:
        raise ValueError("--folds must be 0 (use --holdout) or at least 2")
    if not args.folds and not 0 < args.holdout < 1:
        raise ValueError("--holdout must be a fraction in (0, 1)")
    if args.rounds < 1 or args.early_stopping < 1 or args.num_leaves < 2 or args.min_data_in_leaf < 0:
        raise ValueError("need --rounds >= 1, --early-stopping >= 1, --num-leaves >= 2 and --min-data-in-leaf >= 0")
    if not args.lr > 0 or args.threads < 0:
        raise ValueError("need --lr > 0 and --threads >= 0")
    args.features = feature_list(args.features, args.drawings is not None)
    for flag, path in (("--submission", args.submission), ("--preds", args.preds), ("--model-out", args.model_out),
                       ("--importance", args.importance)):
        if path and not Path(path).resolve().parent.is_dir():
            raise ValueError(f"{flag} {path}: no such folder {Path(path).parent}")
    return args


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


def main(args: argparse.Namespace) -> None:
    try:
        check_args(args)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
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
    try:
        val_x, test_x, spec = load_extras(args.drawings, args.features, val[0].key_ids,
                                          test[0].key_ids if test else None)
    except StoreError as e:
        raise SystemExit(f"error: {e}") from None
    params = lgb_params(args.objective, args.lr, args.num_leaves, args.min_data_in_leaf, args.threads, args.seed)
    try:
        boosters, stacked = fit_stacker(probs, labels, args.top_k, args.entropy, splits, params, args.rounds,
                                        args.early_stopping, val_x)
    except lgb.basic.LightGBMError as e:  # e.g. a held-out part too small for the chosen leaves
        raise SystemExit(f"error: LightGBM: {e}") from None
    held = np.concatenate(splits)
    title = f"{'out-of-fold' if args.folds else 'held-out'} MAP@3 on {len(held)} of {len(labels)} drawings"
    print(comparison(title, [Path(p).name for p in args.val], [p[held] for p in probs], stacked, labels[held],
                     args.top_k))
    report_importance(boosters, args.importance)
    if args.model_out:
        save_boosters(boosters, args.model_out, bool(args.folds), spec | {"args": args.features})
    if test:
        stacked = apply_stacker(boosters, [p.probs for p in test], args.top_k, args.entropy, test_x)
        try:
            if args.preds:
                write_predictions(args.preds, test[0].key_ids, stacked, classes)
            if args.submission:
                write_submission(args.submission, test[0].key_ids, stacked, classes)
        except (OSError, ValueError) as e:
            raise SystemExit(f"error: cannot write output: {e}") from None
        print(f"scored {len(test[0].key_ids)} test drawings with {len(boosters)} booster(s)")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
