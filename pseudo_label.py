"""Pseudo-label a store's test split from a prediction CSV: the confident drawings, labelled with their top-1 class,
become a separate, marked source of the store (STORE/pseudo/) that train.py mixes in with --pseudo-share.

Fifth place's recipe, one round: predict the test set with the best blend, keep the confident top-1 labels,
fine-tune on training + pseudo-labelled drawings, and repeat. The validation split never receives a test drawing.
With --output a new store is made (hard links to the input's files, plus pseudo/); without it the input store
gets (or replaces) its pseudo/ folder.

    python pseudo_label.py --preds runs/blend_test.csv.gz --input data/s16 --output data/s16_pseudo --top-share 0.5
    python pseudo_label.py --preds runs/blend_test.csv.gz --input data/s16 --threshold 0.9
    python train.py --config runs/a/config.yaml --data data/s16_pseudo --pseudo-share 0.2 --output runs/a_pseudo
"""
from __future__ import annotations

import argparse
from pathlib import Path

from qdraw.predictions import read_predictions
from qdraw.pseudo import mirror_store, pseudo_label
from qdraw.store import Store, StoreError


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preds", required=True, help="prediction CSV over the test split of --input (e.g. a blend's)")
    p.add_argument("--input", required=True, help="prepared store whose test split the predictions cover")
    p.add_argument("--output", default=None, help="new store folder: the input's files (hard links) plus pseudo/ "
                   "(default: add pseudo/ to --input itself, replacing an older one)")
    p.add_argument("--threshold", type=float, default=None,
                   help="keep drawings whose top-1 probability is at least this, in (0, 1] (default: none)")
    p.add_argument("--top-share", type=float, default=None,
                   help="keep the most confident share (0, 1] of the drawings of each predicted class, so a "
                   "balanced test set stays balanced (default: none; give it, --threshold, or both)")
    return p


def check_args(args: argparse.Namespace) -> None:
    """Values no run could use: ValueError, which main turns into one error line."""
    if args.threshold is None and args.top_share is None:
        raise ValueError("give --threshold, --top-share or both")
    if args.threshold is not None and not 0 < args.threshold <= 1:
        raise ValueError(f"--threshold must be in (0, 1], got {args.threshold}")
    if args.top_share is not None and not 0 < args.top_share <= 1:
        raise ValueError(f"--top-share must be in (0, 1], got {args.top_share}")


def main(args: argparse.Namespace) -> None:
    try:
        check_args(args)
        store = Store(args.input)
        preds = read_predictions(args.preds)
        out = Path(args.output) if args.output else store.root
        if out.resolve() != store.root.resolve():
            mirror_store(store.root, out)
        meta = pseudo_label(Store(out), preds, out, args.threshold, args.top_share, str(args.preds))
    except (ValueError, StoreError, OSError) as exc:
        raise SystemExit(f"error: {exc}") from None
    acc = meta["label_accuracy"]
    print(f"{meta['drawings']} of {meta['candidates']} test drawings pseudo-labelled into {out / 'pseudo'} "
          f"({len(meta['block_sizes'])} classes; {meta['dropped_in_validation']} dropped as validation drawings)"
          + (f"; {acc:.4f} of them carry the right label (from the store's test labels)" if acc is not None else ""))


if __name__ == "__main__":
    main(get_args_parser().parse_args())
