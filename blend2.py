"""Blend the prediction CSVs of several models into one Kaggle submission.

Files are matched by key_id and class name (any row or column order), and refused when their key_ids or classes
differ. The blend is a weighted arithmetic mean or a weighted geometric mean (computed in log space). With labels
(`--solution`, Kaggle's `key_id,word` CSV) it prints MAP@3 of every input and of the blend, and `--search-weights`
fits the weights on those labelled (validation) predictions and prints them as a `--weights` string for the test run.

    python blend2.py --output sub.csv runs/a/test.csv.gz runs/b/test.csv.gz
    python blend2.py --search-weights --method gmean --solution runs/a/val_labels.csv \
        runs/a/val.csv.gz runs/b/val.csv.gz
    python blend2.py --output sub.csv --method gmean --balance runs/a/test.csv.gz runs/b/test.csv.gz --weights 0.62 0.38
"""
from __future__ import annotations

import argparse

import numpy as np
from scipy.optimize import minimize
from scipy.special import logsumexp

from qdraw.metrics import ranking_metrics
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
    parser.add_argument("preds", nargs="+", help="prediction CSVs (key_id + one probability column per class; .gz ok)")
    group = parser.add_argument_group("Blend")
    group.add_argument("--method", default="mean", choices=["mean", "gmean"],
                       help="weighted arithmetic mean or geometric mean of probabilities (default: mean)")
    group.add_argument("--weights", type=_weight, nargs="+", default=None,
                       help="one non-negative weight per file, normalised to sum 1; give it after the files or end it "
                            "with -- (default: equal weights)")
    group.add_argument("--search-weights", action="store_true",
                       help="fit the weights by minimising log-loss on --solution labels and use them (default: off)")
    group.add_argument("--balance", action="store_true",
                       help="rescale class probabilities so every class gets equal mass (Sinkhorn); only for sets "
                            "known to be class-balanced, like Kaggle's test set (default: off)")
    group = parser.add_argument_group("Output")
    group.add_argument("--output", default=None, help="submission CSV to write (key_id,word; default: none)")
    group.add_argument("--save-probs", default=None, help="also write the blended prediction CSV here (default: none)")
    group.add_argument("--solution", default=None,
                       help="labels CSV (key_id,word) of these drawings: print MAP@3 of each input and of the blend "
                            "(default: none)")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and check flag combinations; conflicts end in parser.error (usage + message, exit 2)."""
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if args.weights is not None and len(args.weights) != len(args.preds):
        parser.error(f"--weights has {len(args.weights)} values for {len(args.preds)} prediction files")
    if args.weights is not None and (min(args.weights) < 0 or sum(args.weights) <= 0):
        parser.error("--weights must be non-negative with a positive sum")
    if args.search_weights and args.solution is None:
        parser.error("--search-weights needs --solution (labels of the blended drawings)")
    if args.search_weights and args.weights is not None:
        parser.error("--search-weights and --weights exclude each other")
    if not (args.output or args.save_probs or args.solution):
        parser.error("nothing to do: give --output, --save-probs or --solution")
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


def format_table(rows: list[tuple[str, dict[str, float]]]) -> str:
    """Small fixed-width table: one line per (name, {"map3","top1","top3"})."""
    width = max(12, *(len(name) for name, _ in rows))
    lines = [f"{'':<{width}}  {'MAP@3':>7}  {'top-1':>7}  {'top-3':>7}"]
    lines += [f"{name:<{width}}  {m['map3']:7.4f}  {m['top1']:7.4f}  {m['top3']:7.4f}" for name, m in rows]
    return "\n".join(lines)


def _load(paths: list[str]) -> list:
    """Read and align the prediction files; any malformed or mismatched file ends the run with one error line."""
    try:
        return align([read_predictions(p) for p in paths], names=paths)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None


def _report(args: argparse.Namespace, probs: list[np.ndarray], labels: np.ndarray, blended: np.ndarray,
            final: np.ndarray) -> None:
    """Print MAP@3 / top-1 / top-3 of each input, the equal-weight blend when weights were searched, and the blend."""
    rows = [(path, ranking_metrics(p, labels)) for path, p in zip(args.preds, probs)]
    if args.search_weights:
        rows.append((f"blend {args.method}, equal weights", ranking_metrics(blend(probs, None, args.method), labels)))
    rows.append((f"blend {args.method}", ranking_metrics(blended, labels)))
    if args.balance:
        rows.append((f"blend {args.method} + balance", ranking_metrics(final, labels)))
    print(format_table(rows))


def main(args: argparse.Namespace) -> None:
    preds = _load(args.preds)
    key_ids, classes = preds[0].key_ids, preds[0].classes
    probs = [p.probs for p in preds]
    if args.output and len(classes) < 3:
        raise SystemExit(f"error: a submission needs at least 3 classes, the files have {len(classes)}")
    labels = None
    if args.solution:
        try:
            labels = labels_for(key_ids, read_labels(args.solution, classes), args.solution)
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
        if args.save_probs:
            write_predictions(args.save_probs, key_ids, final, classes)
        if args.output:
            write_submission(args.output, key_ids, final, classes)
            print(f"wrote {args.output} ({len(key_ids)} drawings, {len(args.preds)} models, {args.method})")
    except OSError as e:
        raise SystemExit(f"error: cannot write output: {e}") from None


if __name__ == "__main__":
    main(parse_args())
