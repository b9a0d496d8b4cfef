"""Average the weights of several checkpoints of one run into one checkpoint that predict.py reads like any other.

Top teams gained from averaging (14th place: the last 10 checkpoints; 5th and 21st: snapshots). Pick the files
(`--checkpoints`), or a run folder's last K kept epochs (`--run DIR --last K`, from `train.py --keep-checkpoints K`)
or its end-of-cycle snapshots (`--run DIR --snapshots`, from `train.py --snapshots`). Floating weights are averaged
uniformly; the BatchNorm statistics of an average belong to no trained network, so they are re-estimated on
`--bn-batches` training batches of the run's store (qdraw.averaging.recompute_bn; 0 keeps the averaged ones).

    python average_checkpoints.py --run runs/r34 --last 5 --output runs/r34/avg5.pth
    python average_checkpoints.py --run runs/r34 --snapshots --output runs/r34/snapshots.pth
    python average_checkpoints.py --checkpoints runs/a/last.pth --weights ema --output runs/a/ema_bn.pth
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

import data_loader_rgb  # noqa: F401  (registers the grey and rgb encodings)
import data_loader_time  # noqa: F401  (registers the time encoding)
import models  # noqa: F401  (registers the architectures)
from qdraw.augment import Augment
from qdraw.averaging import average_checkpoints, has_batchnorm, recompute_bn
from qdraw.checkpoint import CheckpointError, save_checkpoint
from qdraw.dataset import BalancedBlockDataset
from qdraw.inference import build_model
from qdraw.loader import create_loader
from qdraw.prepare import SYNTHETIC_DIR
from qdraw.render import make_render, spec_of_checkpoint
from qdraw.store import Store, StoreError


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 2)[2])
    src = p.add_argument_group("Checkpoints")
    src.add_argument("--checkpoints", nargs="+", default=None, help="checkpoint files of one run (default: none)")
    src.add_argument("--run", default=None, help="a train.py output folder to take kept checkpoints from")
    src.add_argument("--last", type=int, default=None, help="with --run: the last K kept epochs (epoch_*.pth)")
    src.add_argument("--snapshots", action="store_true", help="with --run: its end-of-cycle snapshots")
    src.add_argument("--weights", choices=("raw", "ema"), default="raw",
                     help="average each file's raw weights or its EMA weights (default raw)")
    bn = p.add_argument_group("BatchNorm")
    bn.add_argument("--bn-batches", type=int, default=50,
                    help="training batches to re-estimate BatchNorm statistics on; 0 keeps the averaged ones "
                    "(default 50)")
    bn.add_argument("--data", default=None, help="store for those batches (default: the run's --data)")
    bn.add_argument("--batch-size", type=int, default=128, help="images per BatchNorm batch (default 128)")
    bn.add_argument("--workers", type=int, default=2, help="loader threads (default 2)")
    p.add_argument("--output", required=True, help="checkpoint to write")
    return p


def _paths(args: argparse.Namespace) -> list[Path]:
    """The files to average, from --checkpoints or --run with --last / --snapshots; ValueError when none."""
    if bool(args.checkpoints) == bool(args.run):
        raise ValueError("give --checkpoints FILES or --run DIR (with --last K or --snapshots)")
    if args.checkpoints:
        return [Path(p) for p in args.checkpoints]
    run = Path(args.run)
    if args.snapshots == (args.last is not None):
        raise ValueError("with --run, give --last K or --snapshots")
    if args.snapshots:
        paths = sorted(run.glob("snapshot_*.pth"))
    else:
        if args.last < 1:
            raise ValueError(f"--last must be >= 1, got {args.last}")
        paths = sorted(run.glob("epoch_*.pth"))[-args.last:]
    if not paths:
        what = "snapshot_*.pth (train with --snapshots)" if args.snapshots else "epoch_*.pth (train with " \
                                                                              "--keep-checkpoints K)"
        raise ValueError(f"{run}: no {what}")
    return paths


def _bn_batches(ckpt: dict, args: argparse.Namespace):
    """Training batches as the run drew them (its store, encoding, geometry, flips), from the checkpoint's epoch."""
    cfg, spec = ckpt["config"], spec_of_checkpoint(ckpt)
    store = Store(args.data or cfg.get("data") or SYNTHETIC_DIR)
    augment = Augment.from_config(ckpt.get("augment") or cfg.get("augment"), 0.5 if cfg.get("hflip", True) else 0.0)
    ds = BalancedBlockDataset(store, samples_per_class=cfg.get("samples_per_class"), seed=int(cfg.get("seed", 0)),
                              class_sampling=cfg.get("class_sampling", "balanced"), transform=augment)
    loader = create_loader(ds, make_render(spec), args.batch_size, is_training=True, num_workers=args.workers,
                           seed=int(cfg.get("seed", 0)))
    loader.set_epoch(int(ckpt["epoch"]))
    return loader


def main(args: argparse.Namespace) -> None:
    try:
        if args.bn_batches < 0 or args.batch_size < 1 or args.workers < 0:
            raise ValueError("need --bn-batches >= 0, --batch-size >= 1 and --workers >= 0")
        if not Path(args.output).resolve().parent.is_dir():
            raise ValueError(f"--output {args.output}: no such folder")
        paths = _paths(args)
        ckpt = average_checkpoints(paths, args.weights)
        model = build_model(ckpt, paths[-1], "raw")
        used = 0
        if args.bn_batches and has_batchnorm(model):
            used = recompute_bn(model, _bn_batches(ckpt, args), torch.device("cpu"), args.bn_batches)
            ckpt["model"] = model.state_dict()
        ckpt["bn_recomputed_batches"] = used
        save_checkpoint(ckpt, args.output)
    except (ValueError, CheckpointError, StoreError, OSError) as exc:
        raise SystemExit(f"error: {exc}") from None
    bn = f"BatchNorm re-estimated on {used} batches" if used else "BatchNorm statistics averaged"
    print(f"averaged {len(paths)} checkpoint(s) ({args.weights} weights: {', '.join(p.name for p in paths)}); {bn}; "
          f"wrote {args.output}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
