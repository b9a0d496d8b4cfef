"""Blend the prediction CSVs of several models into one Kaggle submission.

Files are matched by key_id and class name (any row or column order), and refused when their key_ids or classes
differ. The blend is a weighted arithmetic mean, a weighted geometric mean (computed in log space), or a
rank-weighted vote (qdraw.vote: each input gives its r-th class a vote f(r), default 1/(r+1), first place's blend),
which also takes Kaggle submissions (`key_id,word`, top-3 words) as inputs. With labels
(`--labels`, Kaggle's `key_id,word` CSV, as predict.py writes it) it prints MAP@3 of every input and of the blend,
and `--search-weights` fits the weights on those labelled (validation) predictions and prints them as a `--weights`
string for the test run. `--submission` writes the Kaggle submission, `--preds` the blended prediction CSV (the
vocabulary of predict.py and stack.py; the older names --output, --save-probs and --solution still work).

    python blend2.py --submission sub.csv runs/a/test.csv.gz runs/b/test.csv.gz
    python blend2.py --search-weights --method gmean --labels runs/a/val_labels.csv \
        runs/a/val.csv.gz runs/b/val.csv.gz
    python blend2.py --submission sub.csv --method gmean --balance runs/a/test.csv.gz runs/b/test.csv.gz \
        --weights 0.62 0.38
    python blend2.py --submission sub.csv --method vote --rank-weight "1/(r+1)" sub_a.csv sub_b.csv runs/c/test.csv.gz
"""
from __future__ import annotations

import argparse

import numpy as np
from scipy.optimize import minimize
from scipy.special import logsumexp

from qdraw.metrics import format_table, ranking_metrics
from qdraw.predictions import (GMEAN_EPS, Predictions, align, balance, blend, labels_for, read_labels,
                               read_predictions, submission_words, write_predictions, write_submission)
from qdraw.vote import (DEFAULT_FORMULA, is_submission, rank_weights, ranks_from_probs, read_submission,
                        submission_ranks, vote)


def _weight(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; put the prediction files before --weights, "
                                         "or end the weights with --") from None


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Blend prediction CSVs into a Kaggle submission", add_help=True)
    parser.add_argument("inputs", nargs="+", metavar="PREDS", help="prediction CSVs (key_id + one probability column "
                        "per class; .gz ok); with --method vote also Kaggle submissions (key_id,word)")
    group = parser.add_argument_group("Blend")
    group.add_argument("--method", default="mean", choices=["mean", "gmean", "vote"],
                       help="weighted arithmetic mean or geometric mean of probabilities, or rank-weighted vote "
                            "(default: mean)")
    group.add_argument("--rank-weight", default=DEFAULT_FORMULA, metavar="FORMULA",
                       help="vote: weight of rank r (0 = an input's first guess), an expression in r with numbers, "
                            "+ - * / **, log, exp, sqrt; negative values count 0 (default: 1/(r+1))")
    group.add_argument("--vote-depth", type=int, default=5,
                       help="vote: ranks 0..K-1 of each prediction file vote, a submission's 3 words always "
                            "(default: 5)")
    group.add_argument("--weights", type=_weight, nargs="+", default=None,
                       help="one non-negative weight per file, normalised to sum 1; give it after the files or end it "
                            "with -- (default: equal weights)")
    group.add_argument("--search-weights", action="store_true",
                       help="fit the weights by minimising log-loss on --labels and use them (default: off)")
    group.add_argument("--balance", action="store_true",
                       help="rescale class probabilities so every class gets equal mass (Sinkhorn); only for sets "
                            "known to be class-balanced, like Kaggle's test set (default: off)")
    group = parser.add_argument_group("Output")
    group.add_argument("--submission", "--output", dest="submission", default=None,
                       help="submission CSV to write (key_id,word; --output is its older name; default: none)")
    group.add_argument("--preds", "--save-probs", dest="preds", default=None,
                       help="blended prediction CSV to write (--save-probs is its older name; default: none)")
    group.add_argument("--labels", "--solution", dest="labels", default=None,
                       help="labels CSV (key_id,word) of these drawings: print MAP@3 of each input and of the blend "
                            "(--solution is its older name; default: none)")
    return parser


def check_args(args: argparse.Namespace) -> argparse.Namespace:
    """Flag combinations no run could use: ValueError, which main turns into one error line."""
    if args.weights is not None and len(args.weights) != len(args.inputs):
        raise ValueError(f"--weights has {len(args.weights)} values for {len(args.inputs)} prediction files")
    if args.weights is not None and (min(args.weights) < 0 or sum(args.weights) <= 0):
        raise ValueError("--weights must be non-negative with a positive sum")
    if args.search_weights and args.labels is None:
        raise ValueError("--search-weights needs --labels (labels of the blended drawings)")
    if args.search_weights and args.weights is not None:
        raise ValueError("--search-weights and --weights exclude each other")
    if not (args.submission or args.preds or args.labels):
        raise ValueError("nothing to do: give --submission, --preds or --labels")
    if args.method == "vote":
        if args.search_weights or args.balance:
            raise ValueError("--method vote takes no --search-weights or --balance (they need probabilities)")
        try:
            rank_weights(args.rank_weight, args.vote_depth)
        except ValueError as e:
            raise ValueError(f"--rank-weight: {e}") from None
    return args


def _weights_from(theta: np.ndarray) -> np.ndarray:
    return np.exp(theta)


def search_weights(probs: list[np.ndarray], labels: np.ndarray, method: str = "mean") -> np.ndarray:
    """Blend weights (M,) summing to 1 that minimise the blend's log-loss on labelled predictions.

    Log-loss is a smooth surrogate of MAP@3 (which is piecewise constant in the weights), so L-BFGS-B with exact
    gradients converges in a few dozen cheap steps. Weights are exp(theta) to stay positive; for gmean their scale
    acts as a temperature, fitted too and dropped at the end since it does not change the ranking.
    """
    rows = np.arange(len(labels))
    if method == "mean":
        q = np.stack([p[rows, labels] / np.maximum(p.sum(1), 1e-300) for p in probs], 1)  # (N, M) label probs

        def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
            w = _weights_from(theta)
            mix = q @ w / w.sum() + 1e-15
            grad_w = -(q / mix[:, None]).mean(0) / w.sum() + (q @ w / w.sum() / mix).mean() / w.sum()
            return float(-np.log(mix).mean()), grad_w * w
    else:
        logs = [np.log(p + GMEAN_EPS) for p in probs]

        def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
            w = _weights_from(theta)
            z = sum(wi * lg for wi, lg in zip(w, logs))
            lse = logsumexp(z, axis=1)
            soft = np.exp(z - lse[:, None])
            grad_w = np.array([((soft * lg).sum(1) - lg[rows, labels]).mean() for lg in logs])
            return float((lse - z[rows, labels]).mean()), grad_w * w

    res = minimize(loss, np.zeros(len(probs)), jac=True, method="L-BFGS-B", bounds=[(-8.0, 8.0)] * len(probs))
    w = _weights_from(res.x)
    return w / w.sum()


def _load(paths: list[str]) -> list:
    """Read and align the prediction files; any malformed or mismatched file ends the run with one error line."""
    try:
        for p in paths:
            if is_submission(p):
                raise ValueError(f"{p} is a submission (top-3 words, no probabilities): only --method vote reads it")
        return align([read_predictions(p) for p in paths], names=paths)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None


def _load_vote(paths: list[str], depth: int) -> tuple[list[Predictions], list[np.ndarray], list[np.ndarray]]:
    """Read prediction files and submissions for a vote, aligned by key_id on one class list.

    Returns the aligned inputs (rank matrices for submissions, probabilities for prediction files), the rank matrix
    of every input and the probability matrices. Classes: those of the first prediction file, or the sorted words
    of the submissions when all inputs are submissions.
    """
    try:
        loaded = [read_submission(p) if is_submission(p) else read_predictions(p) for p in paths]
        files = [x for x in loaded if isinstance(x, Predictions)]
        classes = files[0].classes if files else sorted({w for x in loaded for row in x[1] for w in row})
        lookup = {w: i for i, w in enumerate(submission_words(classes))} | {c: i for i, c in enumerate(classes)}
        rows = [x if isinstance(x, Predictions) else
                Predictions(x[0], submission_ranks(x[1], lookup, len(classes), path), list(classes))
                for x, path in zip(loaded, paths)]
        aligned = align(rows, names=paths)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    is_file = [isinstance(x, Predictions) for x in loaded]
    ranks = [ranks_from_probs(a.probs, depth) if f else a.probs for a, f in zip(aligned, is_file)]
    return aligned, ranks, [a.probs for a, f in zip(aligned, is_file) if f]


def _report(args: argparse.Namespace, probs: list[np.ndarray], labels: np.ndarray, blended: np.ndarray,
            final: np.ndarray) -> None:
    """Print MAP@3 / top-1 / top-3 of each input, the equal-weight blend when weights were searched, and the blend."""
    rows = [(path, ranking_metrics(p, labels)) for path, p in zip(args.inputs, probs)]
    if args.search_weights:
        rows.append((f"blend {args.method}, equal weights", ranking_metrics(blend(probs, None, args.method), labels)))
    rows.append((f"blend {args.method}", ranking_metrics(blended, labels)))
    if args.balance:
        rows.append((f"blend {args.method} + balance", ranking_metrics(final, labels)))
    print(format_table(rows))


def main(args: argparse.Namespace) -> None:
    try:
        check_args(args)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    if args.method == "vote":
        preds, ranks, files = _load_vote(args.inputs, args.vote_depth)
        probs = [-r for r in ranks]  # what the report ranks each input by: its own order
    else:
        preds = _load(args.inputs)
        probs = [p.probs for p in preds]
    key_ids, classes = preds[0].key_ids, preds[0].classes
    if args.submission and len(classes) < 3:
        raise SystemExit(f"error: a submission needs at least 3 classes, the files have {len(classes)}")
    labels = None
    if args.labels:
        try:
            labels = labels_for(key_ids, read_labels(args.labels, classes), args.labels)
        except ValueError as e:
            raise SystemExit(f"error: {e}") from None
    weights = args.weights
    if args.search_weights:
        weights = search_weights(probs, labels, args.method)
        print(f"weights fitted on {len(labels)} labelled drawings (log-loss, {args.method}); add after the files:")
        print("--weights " + " ".join(f"{w:.4g}" for w in weights))
    if args.method == "vote":
        blended = vote(ranks, weights, rank_weights(args.rank_weight, args.vote_depth), files)
    else:
        blended = blend(probs, weights, args.method)
    final = balance(blended) if args.balance else blended
    if labels is not None:
        _report(args, probs, labels, blended, final)
    try:
        if args.preds:
            write_predictions(args.preds, key_ids, final, classes)
        if args.submission:
            write_submission(args.submission, key_ids, final, classes)
            print(f"wrote {args.submission} ({len(key_ids)} drawings, {len(args.inputs)} models, {args.method})")
    except OSError as e:
        raise SystemExit(f"error: cannot write output: {e}") from None


if __name__ == "__main__":
    main(get_args_parser().parse_args())
