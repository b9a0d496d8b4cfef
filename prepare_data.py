"""Pack Quick, Draw! drawings once into a memory-mappable store that the loaders read at every epoch.

Input: a per-class folder in any format (Kaggle train_simplified/ or train_raw/ CSVs, Google simplified/ or raw/
ndjson, Google binary ``<word>.bin``, Sketch-RNN ``<word>.npz`` / ``<word>.full.npz``; ndjson, CSV and bin also
gzip-compressed; detected automatically, one format per folder; docs/FORMATS.md) or the word ``synthetic`` for the
embedded doodle generator. A Kaggle test CSV next to a Kaggle train folder (``../test_<kind>.csv``) is packed as the
test set, with labels when its ``test_<kind>_solution.csv`` is there too; Sketch-RNN files bring their own test split.

    python prepare_data.py --input synthetic --output data/synthetic
    python prepare_data.py --input ../shared/data/quickdraw/kaggle/train_simplified --output data/kaggle_simplified
    python prepare_data.py --input ../shared/data/quickdraw/raw --output data/raw16 --classes airplane,cat,eye
    python prepare_data.py --input data/quickdraw/sketchrnn --output data/sketchrnn      # <word>.npz, own split
    python prepare_data.py --verify data/kaggle_simplified      # check every block, CRC-32 included
"""
from __future__ import annotations

import argparse
import os
from dataclasses import fields

from qdraw.prepare import PrepareOptions, prepare_input, report
from qdraw.store import Store, StoreError


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", default=None, help="folder of per-class .ndjson/.csv/.bin/.npz files (.gz too), or "
                   "'synthetic' (required unless --verify)")
    p.add_argument("--output", default=None, help="store folder to write (reruns skip finished classes; required "
                   "unless --verify)")
    p.add_argument("--verify", default=None, metavar="STORE",
                   help="check every block of a prepared store (structure, labels, CRC-32) instead of packing")
    p.add_argument("--block-size", type=int, default=10000, help="drawings per training block (default 10000)")
    p.add_argument("--val-every", type=int, default=30,
                   help="1 in N drawings (by key_id) go to validation (default 30)")
    p.add_argument("--split-by", choices=("file", "keyid"), default="file",
                   help="Sketch-RNN .npz only: keep the files' train/valid/test split (file) or split every drawing "
                   "by its key_id hash like the other formats (keyid) (default file)")
    p.add_argument("--classes", default=None, help="comma list or a file of class names to keep (default all)")
    p.add_argument("--max-per-class", type=int, default=None,
                   help="read at most N rows per class, per split for .npz (default all)")
    p.add_argument("--test", default=None, help="Kaggle test CSV to pack (default: ../test_<kind>.csv when present)")
    p.add_argument("--no-test", action="store_true", help="do not look for a test CSV")
    p.add_argument("--workers", type=int, default=os.cpu_count(),
                   help="processes, one class at a time each (default: cores)")
    p.add_argument("--synthetic-per-class", type=int, default=1500,
                   help="drawings per class for 'synthetic' (default 1500)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic generator (default 0)")
    return p


def verify(root: str) -> None:
    """Check a whole store; one line per damaged block, and a non-zero exit when any is found."""
    try:
        n, problems = Store(root).verify()
    except StoreError as exc:
        raise SystemExit(f"error: {exc}") from None
    for line in problems:
        print(f"damaged: {line}")
    if problems:
        raise SystemExit(f"error: {len(problems)} problem(s) in {n} blocks of {root}")
    print(f"{root}: {n} blocks verified (structure, labels, CRC-32): all sound")


def main(args: argparse.Namespace) -> None:
    if args.verify:
        return verify(args.verify)
    if not (args.input and args.output):
        raise SystemExit("error: --input and --output are required (or --verify STORE)")
    if args.block_size < 1 or args.val_every < 2:
        raise SystemExit("error: --block-size must be >= 1 and --val-every >= 2")
    if (args.max_per_class is not None and args.max_per_class < 1) or args.synthetic_per_class < 1:
        raise SystemExit("error: --max-per-class and --synthetic-per-class must be >= 1")
    if os.path.exists(args.output) and not os.path.isdir(args.output):
        raise SystemExit(f"error: --output {args.output} is a file, not a folder")
    opts = PrepareOptions(**{f.name: getattr(args, f.name) for f in fields(PrepareOptions)})
    try:
        result = prepare_input(args.input, opts)
    except (ValueError, OSError) as exc:
        raise SystemExit(f"error: {exc}") from None
    report(result)
    print(f"store written to {args.output}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
