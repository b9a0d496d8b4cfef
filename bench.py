"""Benchmarks that print figures measured side by side in one run (never asserted in tests); the code is in
benchmarks/, one module per command, each timing the real code paths.

    python bench.py prepare --input ../shared/data/quickdraw/kaggle/train_simplified
    python bench.py raster --encoding rgb --size 128 --data data/kaggle_simplified
    python bench.py models --size 128
    python bench.py train --model resnet34 --size 128
    python bench.py store --data data/kaggle_simplified
    python bench.py serve --model resnet34 --size 128
    python bench.py gpu --data data/synthetic_long --data2 data/s16      # first thing on a lent GPU machine
    python bench.py points --models stroke_gru,learned_rasterizer:trunk=resnet18:width=32
"""
from __future__ import annotations

import argparse
import importlib

# subcommand -> module exposing add_args(parser) and run(args); imported only when chosen, so `bench.py prepare`
# never pays for torch.
COMMANDS = {
    "prepare": "benchmarks.bench_prepare",
    "raster": "benchmarks.bench_raster",
    "models": "benchmarks.bench_models",
    "train": "benchmarks.bench_train",
    "store": "benchmarks.bench_store",
    "serve": "benchmarks.bench_serve",
    "gpu": "benchmarks.bench_gpu",
    "points": "benchmarks.bench_points",
}


def get_args_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module in COMMANDS.items():
        p = sub.add_parser(name, help=f"see {module}")
        if argv is None or name in argv:
            importlib.import_module(module).add_args(p)
    return parser


def main(args: argparse.Namespace) -> None:
    try:
        importlib.import_module(COMMANDS[args.command]).run(args)
    except (ValueError, OSError) as exc:  # a missing store or file, a bad setting (StoreError is a ValueError)
        raise SystemExit(f"error: {exc}") from None


if __name__ == "__main__":
    import sys

    main(get_args_parser(sys.argv[1:]).parse_args())
