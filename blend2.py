"""Blend the prediction CSVs of several models into one Kaggle submission.

Files are matched by key_id and class name (any row or column order), and refused when their key_ids or classes
differ. The blend is a weighted arithmetic mean or a weighted geometric mean (computed in log space). With labels
(`--labels`, Kaggle's `key_id,word` CSV, as predict.py writes it) it prints MAP@3 of every input and of the blend,
and `--search-weights` fits the weights on those labelled (validation) predictions and prints them as a `--weights`
string for the test run. `--submission` writes the Kaggle submission, `--preds` the blended prediction CSV (the
vocabulary of predict.py and stack.py; the older names --output, --save-probs and --solution still work).

    python blend2.py --submission sub.csv runs/a/test.csv.gz runs/b/test.csv.gz
    python blend2.py --search-weights --method gmean --labels runs/a/val_labels.csv \
        runs/a/val.csv.gz runs/b/val.csv.gz
    python blend2.py --submission sub.csv --method gmean --balance runs/a/test.csv.gz runs/b/test.csv.gz --weights 0.62 0.38
"""
from __future__ import annotations

import argparse

import numpy as np
from scipy.optimize import minimize
from scipy.special import logsumexp

from qdraw.metrics import format_table, ranking_metrics
from qdraw.predictions import (GMEAN_EPS, align, balance, blend, labels_for, read_labels, read_predictions,
                               write_predictions, write_submission)


def _weight(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; put the prediction files before --weights, "
                                         "or end the weights with --") from None


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Blend prediction CSVs into a Kaggle submission", add_help=True)
    parser.add_argument("inputs", nargs="+", metavar="PREDS", help="prediction CSVs (key_id + one probability column per class; .gz ok)")
    group = parser.add_argument_group("Blend")
    group.add_argument("--method", default="mean", choices=["mean", "gmean"],
                       help="weighted arithmetic mean or geometric mean of probabilities (default: mean)")
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and check flag combinations; conflicts end in parser.error (usage + message, exit 2)."""
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if args.weights is not None and len(args.weights) != len(args.inputs):
        parser.error(f"--weights has {len(args.weights)} values for {len(args.inputs)} prediction files")
    if args.weights is not None and (min(args.weights) < 0 or sum(args.weights) <= 0):
        parser.error("--weights must be non-negative with a positive sum")
    if args.search_weights and args.labels is None:
        parser.error("--search-weights needs --labels (labels of the blended drawings)")
    if args.search_weights and args.weights is not None:
        parser.error("--search-weights and --weights exclude each other")
    if not (args.submission or args.preds or args.labels):
        parser.error("nothing to do: give --submission, --preds or --labels")
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
        return align([read_predictions(p) for p in paths], names=paths)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None


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
    preds = _load(args.inputs)
    key_ids, classes = preds[0].key_ids, preds[0].classes
    probs = [p.probs for p in preds]
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
    main(parse_args())
