"""Predict with one trained model: a prediction CSV (key_id + one probability column per class name), a Kaggle
submission (top-3 words), and MAP@3 / top-1 / top-3 when the input has labels.

The model is rebuilt from the checkpoint alone, or, for a model exported by export.py (``--checkpoint model.onnx``),
run by onnxruntime with no torch model built: same inputs, flags and outputs, the probabilities within 1e-4 of the
checkpoint's. Input: a Kaggle test CSV (simplified or raw, matching the checkpoint's encoding), one Google ndjson
file (.ndjson or .ndjson.gz: a per-word download, or the file serve.py --collect writes; labels from each record's
word), a prepared store (its test split, or --split val), or a per-class folder in any format prepare_data.py reads
(<word>.ndjson, .csv, .bin, .npz with all its splits, or their .gz; docs/FORMATS.md).

    python predict.py --checkpoint runs/demo/best.pth --input data/synthetic --split val --preds preds_val.csv \\
        --labels val_labels.csv
    python predict.py --checkpoint runs/r34/best.pth --input ../shared/data/quickdraw/kaggle/test_simplified.csv \\
        --preds preds.csv.gz --submission sub.csv --tta --balance
    python predict.py --checkpoint model.onnx --input data/synthetic --split val --preds preds_val.csv

Second-stage vocabulary (shared with blend2.py and stack.py): --preds is the prediction CSV a script writes,
--submission the Kaggle submission it writes, --labels the key_id,word labels file (written here, read there).
The older names --output and --labels-output still work.
"""
from __future__ import annotations

import argparse
import sys
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch

import data_loader_rgb  # noqa: F401  (registers the grey and rgb encodings)
import data_loader_time  # noqa: F401  (registers the time encoding)
import models  # noqa: F401  (registers the architectures a checkpoint names)
from qdraw.checkpoint import CheckpointError
from qdraw.classifier import check_fits, load_classifier
from qdraw.dataset import SplitDataset
from qdraw.distributed import pick_device
from qdraw.inference import WEIGHTS, open_input, predict_probs
from qdraw.metrics import format_table, ranking_metrics
from qdraw.predictions import balance, write_labels, write_predictions, write_submission
from qdraw.render import make_render
from qdraw.store import StoreError


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 2)[2])
    p.add_argument("--checkpoint", required=True,
                   help="best.pth or last.pth written by train.py, or a model.onnx written by export.py")
    p.add_argument("--input", required=True, help="Kaggle test CSV, one .ndjson[.gz] file, prepared store folder, "
                   "or per-class folder (.ndjson/.csv/.bin/.npz, .gz too)")
    p.add_argument("--split", choices=["val", "test"], default=None,
                   help="split of a prepared store (default: test when it has one, else val)")
    p.add_argument("--preds", "--output", dest="preds", default=None,
                   help="prediction CSV to write (.csv or .csv.gz; --output is its older name; default: none)")
    p.add_argument("--submission", default=None, help="Kaggle submission CSV to write (key_id,word; default: none)")
    p.add_argument("--labels", "--labels-output", dest="labels", default=None,
                   help="write the input's labels as key_id,word, for blend2.py / stack.py (--labels-output is its "
                   "older name; default: none)")
    p.add_argument("--weights", choices=WEIGHTS, default="auto",
                   help="the checkpoint's EMA weights, its raw training weights, or auto: EMA when the run kept one "
                   "(default auto)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=False,
                   help="average with the horizontally flipped drawings (default off)")
    p.add_argument("--balance", action=argparse.BooleanOptionalAction, default=False,
                   help="rescale probabilities so predicted class counts are even, for class-balanced test sets "
                   "(qdraw.predictions.balance; default off)")
    p.add_argument("--batch-size", type=int, default=256, help="images per batch (default 256)")
    p.add_argument("--workers", type=int, default=2, help="loader threads drawing batches (default 2)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--amp", choices=["off", "bf16", "fp16"], default="off",
                   help="autocast on CUDA (default off; an .onnx model runs on the CPU in float32)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _check_outputs(args: argparse.Namespace) -> None:
    """Fail before the model runs, not after: sane loader settings, and every output a file in an existing folder."""
    if args.batch_size < 1 or args.workers < 0:
        raise ValueError(f"need --batch-size >= 1 and --workers >= 0, got {args.batch_size} and {args.workers}")
    for flag, path in (("--preds", args.preds), ("--submission", args.submission), ("--labels", args.labels)):
        if path and (Path(path).is_dir() or not Path(path).resolve().parent.is_dir()):
            raise ValueError(f"{flag} {path}: not a file name in an existing folder")


def main(args: argparse.Namespace) -> None:
    try:
        _check_outputs(args)
        device = pick_device(args.device)
        amp = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp] if device.type == "cuda" else None
        clf = load_classifier(args.checkpoint, device, args.weights, amp)
        classes = clf.classes
        with ExitStack() as stack:
            store, split = open_input(args.input, classes, args.split, stack)
            check_fits(clf, store.classes)
            render = make_render(clf.spec)
            render.check_data(store.has_time, args.input)
            ds = SplitDataset(store, split)
            if not (args.preds or args.submission or args.labels):  # said before the long part
                print("note: no --preds or --submission given; only metrics are printed", file=sys.stderr)
            probs, rate = predict_probs(clf, ds, render, args.batch_size, args.workers, tta=args.tta,
                                        progress=not args.quiet)
    except (CheckpointError, StoreError, ValueError, OSError) as exc:
        raise SystemExit(f"error: {exc}") from None
    where = device if clf.backend == "torch" else "cpu (onnxruntime)"
    print(f"{len(ds)} drawings, {rate:.0f} drawings/s on {where}" + (" (each drawn twice for TTA)" if args.tta else ""))
    if args.balance:
        probs = balance(probs)
    labelled = ds.labels >= 0
    if labelled.any():
        rows = [(f"{Path(args.checkpoint).name} ({clf.weights}){' + TTA' if args.tta else ''}",
                 ranking_metrics(probs[labelled], ds.labels[labelled]))]
        print(format_table(rows, title=f"{int(labelled.sum())} labelled drawings"))
    try:  # each file is written to a temporary name and renamed: a failure or a kill leaves no partial file
        _write_outputs(args, ds, probs, classes, labelled)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"error: cannot write output: {exc}") from None


def _write_outputs(args: argparse.Namespace, ds: SplitDataset, probs: np.ndarray, classes: list[str],
                   labelled: np.ndarray) -> None:
    """The prediction CSV, the submission and the labels file that were asked for, in that order."""
    if args.preds:
        write_predictions(args.preds, ds.key_ids, probs, classes)
        print(f"predictions written to {args.preds}")
    if args.submission:
        write_submission(args.submission, ds.key_ids, probs, classes)
        print(f"submission written to {args.submission}")
    if args.labels:
        if not labelled.all():
            raise SystemExit(f"error: {args.input} is not fully labelled; no labels file written")
        write_labels(args.labels, ds.key_ids, ds.labels, classes)
        print(f"labels written to {args.labels}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
