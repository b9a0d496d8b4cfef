"""Train one CNN on a prepared Quick, Draw! store; each epoch reads one random block per class (balanced), then
validates with MAP@3 and writes last.pth / best.pth, a summary.csv row, and at the end a PNG of the curves.

    python train.py --config configs/demo.yaml                      # synthetic doodles, about a minute on a CPU
    python train.py --config configs/resnet34.yaml --data data/kaggle_simplified --epochs 2 --image-size 64
    torchrun --standalone --nproc_per_node=4 train.py --config configs/dpn68.yaml --data data/kaggle_simplified
    python train.py --config runs/demo/config.yaml --resume runs/demo/last.pth --epochs 8

Settings come from code defaults < the YAML given by --config < command-line flags; the resolved set is written to
OUTPUT/config.yaml. Without --data the embedded synthetic set is prepared once into data/synthetic.
"""
from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

import torch
from torch import nn

import data_loader_rgb  # noqa: F401  (registers the grey and rgb encodings)
import data_loader_time  # noqa: F401  (registers the time encoding)
import models  # noqa: F401  (registers the architectures)
from qdraw.atomic import link_or_copy
from qdraw.augment import parse_augment
from qdraw.zoo import parse_model_args
from qdraw.checkpoint import CheckpointError, copy_checkpoint, save_checkpoint, set_rng_state
from qdraw.config import ConfigArgumentParser, add_config_arg, write_config
from qdraw.distributed import DistInfo, all_gather_objects, broadcast_buffers, cleanup, init_distributed
from qdraw.engine import evaluate, train_one_epoch
from qdraw.job import (AMP_DTYPES, Job, build_job, checkpoint_state, output_dir, resume, seed_all, snapshot_epochs,
                       weights_checksum, wrap)
from qdraw.loader import BACKENDS, CHUNK
from qdraw.logs import TensorBoard, plot_curves, setup_logging, trim_summary, update_summary
from qdraw.store import StoreError

log = logging.getLogger(__name__)


def get_args_parser() -> argparse.ArgumentParser:
    p = ConfigArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arg(p)
    _add_data_args(p.add_argument_group("Data"))
    _add_model_args(p.add_argument_group("Model"))
    _add_optim_args(p.add_argument_group("Optimisation"))
    _add_output_args(p.add_argument_group("Output"))
    return p


def _add_data_args(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--data", default=None, help="prepared store folder (default: the synthetic set in data/synthetic)")
    g.add_argument("--encoding", default="rgb", help="stroke encoding: grey (1 channel), rgb, time (raw stores "
                   "only); see data_loader_rgb.py, data_loader_time.py (default rgb)")
    g.add_argument("--image-size", type=int, default=128, help="input side in px (default 128)")
    g.add_argument("--line-width", type=int, default=None, help="stroke width in px (default: the encoding's)")
    g.add_argument("--samples-per-class", type=int, default=None,
                   help="training drawings per class per epoch, drawn from one block (default: the smallest "
                   "class's largest block, the block size on a full store)")
    g.add_argument("--class-sampling", default="balanced", choices=["balanced", "natural"],
                   help="balanced: --samples-per-class drawings of every class per epoch; natural: each class its "
                   "largest block (a small store's whole class: every drawing once, classes at their natural "
                   "frequencies; the block size, so balanced again, on the full set) (default balanced)")
    g.add_argument("--pseudo-share", type=float, default=0.0,
                   help="share of each epoch's drawings taken from the store's pseudo-labelled test drawings "
                   "(pseudo_label.py, STORE/pseudo), in [0, 1); never in validation (default 0 = none)")
    g.add_argument("--val-per-class", type=int, default=None,
                   help="validation drawings per class, at most (default: all)")
    g.add_argument("--hflip", action=argparse.BooleanOptionalAction, default=True,
                   help="random horizontal flips in training, probability 0.5 (default on)")
    g.add_argument("--augment", type=parse_augment, default="none",
                   help="stroke augmentation in training (qdraw/augment.py): a preset, none, light, medium or strong, "
                   "or per-transform strengths like rotate=10,scale=0.15,stroke_drop=0.05 (fields: scale, aspect, "
                   "rotate, shear, translate, stroke_drop, jitter, time_scale; YAML: a name or a mapping) "
                   "(default none)")
    g.add_argument("--mixup", type=float, default=0.0, help="mixup of the pictures after the loader: Beta(a, a) "
                   "concentration a, e.g. 0.2 (qdraw/mix.py; default 0 = off)")
    g.add_argument("--cutmix", type=float, default=0.0, help="CutMix of the pictures: Beta(a, a) concentration, "
                   "e.g. 1.0 (default 0 = off)")
    g.add_argument("--mix-prob", type=float, default=1.0, help="share of batches mixed when --mixup or --cutmix is "
                   "on; with both, each mixed batch picks one at even odds (default 1.0)")
    g.add_argument("--workers", type=int, default=4, help="loader threads (or processes, see --loader) per training "
                   "process, capped at its share of the cores; 0 draws in the training thread (default 4)")
    g.add_argument("--loader", default="threads", choices=BACKENDS, help="draw batches in threads of the training "
                   "process, or in DataLoader worker processes; both give the same batches (default threads)")
    g.add_argument("--prefetch", type=int, default=None, help="batches drawn ahead, in all (default chunk x "
                   "(workers + 1))")
    g.add_argument("--chunk", type=int, default=None, help="batches a loader thread draws per compiled call, taking "
                   f"the GIL once (default {CHUNK}; docs/DATA_PATH.md)")


def _add_model_args(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--model", default="resnet34", help="registered architecture, see models.list_models() "
                   "(default resnet34)")
    g.add_argument("--model-args", type=parse_model_args, default=None,
                   help="the builder's own settings, e.g. hidden=256,layers=3 or trunk=resnet18,grid=16 (see "
                   "models.py; YAML: a mapping); saved in the checkpoint (default: the model's)")
    g.add_argument("--max-points", type=int, default=128, help="models that read strokes: points per drawing, "
                   "longer drawings evenly resampled keeping every pen lift (qdraw/points.py) (default 128)")
    g.add_argument("--point-time", action=argparse.BooleanOptionalAction, default=None,
                   help="models that read strokes: dt (time since the previous point) as a 7th feature "
                   "(default: on for raw stores, which have timing)")
    g.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=False,
                   help="start from ImageNet weights (default off)")
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="NHWC memory layout (default: on with CUDA)")
    g.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                   help="torch.compile the model (default off)")
    g.add_argument("--sync-bn", action=argparse.BooleanOptionalAction, default=False,
                   help="under torchrun on GPUs, BatchNorm statistics over the global batch (torch's SyncBatchNorm) "
                   "instead of each GPU's own; helps when the per-GPU batch is small (< 32), costs a collective per "
                   "BatchNorm layer (default off)")


def _add_optim_args(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--epochs", type=int, default=40, help="epochs to train, counting resumed ones (default 40)")
    g.add_argument("--batch-size", type=int, default=256, help="images per micro-batch per process, at most: "
                   "lowered when an epoch would give fewer than --min-steps-per-epoch steps (default 256)")
    g.add_argument("--min-steps-per-epoch", type=int, default=100, help="lower the batch (to a multiple of 8, >= 16) "
                   "until an epoch has this many optimiser steps; 0 = never (default 100)")
    g.add_argument("--accum-steps", type=int, default=1, help="micro-batches per optimiser step (default 1)")
    g.add_argument("--opt", default="adam", choices=["adam", "adamw", "sgd"], help="optimiser (default adam)")
    g.add_argument("--lr", type=float, default=1e-3, help="peak learning rate, for --lr-base-batch images per step "
                   "when that is set (default 1e-3)")
    g.add_argument("--lr-base-batch", type=int, default=None, help="the global batch --lr is meant for; the rate "
                   "used is scaled by (global batch / this) ** 0.5 for adam/adamw, ** 1 for sgd (default: no "
                   "scaling)")
    g.add_argument("--min-lr", type=float, default=1e-5, help="learning rate at the end of each cosine period "
                   "(default 1e-5)")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum, Nesterov (default 0.9)")
    g.add_argument("--weight-decay", type=float, default=0.0, help="L2 (adam, sgd) or decoupled (adamw) decay, "
                   "not on biases and norms (default 0)")
    g.add_argument("--period", type=float, default=32.0, help="first cosine period in epochs (default 32)")
    g.add_argument("--t-mult", type=float, default=1.2, help="each next period is this many times longer, real "
                   ">= 1 (default 1.2)")
    g.add_argument("--fit-schedule", action=argparse.BooleanOptionalAction, default=True,
                   help="fit the last cosine cycle to --epochs so the run ends at --min-lr: the cycle running at the "
                   "end is shortened to end with the run, or, when less than half of it would fit, the previous "
                   "cycle is stretched to the end instead (default on)")
    g.add_argument("--warmup-epochs", type=float, default=0.0, help="linear warm-up in epochs (default 0)")
    g.add_argument("--warmup-lr", type=float, default=1e-5, help="learning rate at the start of the warm-up "
                   "(default 1e-5)")
    g.add_argument("--label-smoothing", type=float, default=0.0, help="cross-entropy label smoothing, 0..1 "
                   "(default 0)")
    g.add_argument("--ema-decay", type=float, default=0.0, help="keep an exponential moving average of the weights "
                   "with this decay per step (warmed up as min(decay, (1+n)/(10+n))), evaluated each epoch and "
                   "saved as 'ema' in the checkpoints; 0 = off (default 0)")
    g.add_argument("--clip-grad", type=float, default=None, help="max gradient L2 norm (default: no clipping)")
    g.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="mixed precision autocast (default: on with CUDA, off on CPU)")
    g.add_argument("--amp-dtype", default="bf16", choices=list(AMP_DTYPES), help="autocast dtype; fp16 adds a "
                   "GradScaler (default bf16)")
    g.add_argument("--seed", type=int, default=0, help="seed of the weights, block choice, shuffle and flips; "
                   "each rank's global generators get seed + rank (default 0)")
    g.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=False,
                   help="deterministic kernels, no cuDNN autotuning (default off)")


def _add_output_args(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--output", default=None, help="run folder (default runs/<model>-<encoding>-<image size>)")
    g.add_argument("--resume", default=None, metavar="PATH", help="continue from a last.pth (default: fresh run)")
    g.add_argument("--overwrite", action=argparse.BooleanOptionalAction, default=False,
                   help="let a fresh run replace the checkpoints of an earlier run in --output (default off)")
    g.add_argument("--keep-checkpoints", type=int, default=0, help="also keep the last K epochs' checkpoints as "
                   "epoch_<e>.pth, for average_checkpoints.py (default 0)")
    g.add_argument("--snapshots", action=argparse.BooleanOptionalAction, default=False,
                   help="keep snapshot_<epoch>.pth at the end of every cosine cycle (default off)")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="tqdm bar per epoch (default on)")
    g.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=True,
                   help="TensorBoard scalars in OUTPUT/tb when tensorboard is installed (default on)")


def _check_args(args: argparse.Namespace) -> None:
    """Reject values no run could use, with one line each (the CLI turns ValueError into 'error: ...')."""
    positive = ("image_size", "epochs", "batch_size", "accum_steps", "period", "line_width", "samples_per_class",
                "val_per_class", "clip_grad", "lr_base_batch", "prefetch", "chunk")
    for key in positive:
        value = getattr(args, key)
        if value is not None and not value > 0:
            raise ValueError(f"--{key.replace('_', '-')} must be > 0, got {value}")
    if args.workers < 0 or args.lr <= 0 or not 0 <= args.label_smoothing < 1:
        raise ValueError("need --workers >= 0, --lr > 0 and 0 <= --label-smoothing < 1")
    if not 0 <= args.pseudo_share < 1:
        raise ValueError(f"--pseudo-share must be in [0, 1), got {args.pseudo_share}")
    if not 0 <= args.ema_decay < 1 or args.keep_checkpoints < 0 or args.min_steps_per_epoch < 0:
        raise ValueError("need 0 <= --ema-decay < 1, --keep-checkpoints >= 0 and --min-steps-per-epoch >= 0")


def main(args: argparse.Namespace) -> None:
    try:
        info = init_distributed(args.device)
        setup_logging(info.is_main)
        _check_args(args)
        if args.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = not args.deterministic
        seed_all(args.seed)  # same initial weights on every rank (DDP broadcasts rank 0's anyway)
        job = build_job(args, info)
        out = output_dir(args, info.is_main)
        start_epoch, step, best, rng = resume(args, job, info) if args.resume else (0, 0, -math.inf, None)
        if args.resume and info.is_main:
            trim_summary(out / "summary.csv", start_epoch)  # rows a killed run wrote after its last checkpoint
    except (ValueError, StoreError, CheckpointError, OSError) as exc:
        cleanup()
        raise SystemExit(f"error: {exc}") from None
    net, eval_net = wrap(job.model, args, info)
    criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    tb = TensorBoard(out / "tb", enabled=args.tensorboard and info.is_main)
    if info.is_main:
        write_config(args, out / "config.yaml")
        log.info("%s on %s: %d classes, input %s, %d train drawings/epoch, %d val, batch %d, lr %.3g, device %s x%d",
                 args.model, job.store.root, job.store.num_classes, job.spec.describe(),
                 len(job.train_set), len(job.val_loader.dataset) if job.val_loader else 0, job.batch_size, job.lr,
                 info.device, info.world_size)
    # Last thing before the loop, so a resumed run continues from exactly the state the killed one saved.
    if rng is not None:
        set_rng_state(rng)
    else:
        seed_all(args.seed + info.rank)
    val, saved = {"map3": math.nan}, start_epoch - 1
    snapshots = snapshot_epochs(job.lr_at, args.epochs) if args.snapshots else set()
    try:
        for epoch in range(start_epoch, args.epochs):
            # Pick this epoch's data: dataset.set_epoch (one block per class, a pure function of (seed, epoch)) and
            # sampler.set_epoch (shuffle and rank shard), both through the loader so its threads or workers see it.
            job.train_loader.set_epoch(epoch)
            train = train_one_epoch(net, criterion, job.train_loader, job.optimizer, job.lr_at, info.device, epoch,
                                    step, job.opts, ema=job.ema)
            step = int(train["step"])
            sync_buffers(job)  # one model from here on: validation, checkpoint and the final check see rank 0's
            val = _validate(eval_net, job, info)
            is_best = not val["map3"] <= best  # NaN (no validation drawings) counts as best: best.pth = last.pth
            best = val["map3"] if is_best else best
            state = checkpoint_state(args, job, epoch, step, best)
            if info.is_main:
                _save_epoch(out, state, is_best, train, val, tb, args.keep_checkpoints, epoch in snapshots)
            saved = epoch
    except (StoreError, OSError) as exc:  # a damaged block met mid-run (in a loader thread or worker), a full disk
        cleanup()
        kept = f"; {out / 'last.pth'} holds epoch {saved}, continue with --resume" if saved >= 0 else ""
        raise SystemExit(f"error: {_last_line(exc)}{kept}") from None
    _check_ranks_agree(job, info)
    if info.is_main:
        _finish(out, tb, val, best)
    cleanup()


def sync_buffers(job: Job) -> None:
    """Rank 0's BatchNorm statistics on every rank, for the raw model and the EMA (qdraw.distributed)."""
    broadcast_buffers(job.model)
    if job.ema is not None:
        broadcast_buffers(job.ema.averaged)


def _validate(eval_net: nn.Module, job: Job, info: DistInfo) -> dict[str, float]:
    """Validation metrics of the raw weights and, with an EMA, of the averaged ones: "map3" is the one that picks
    best.pth (the EMA's when there is one, as predict.py uses those by default), "raw_map3" the raw weights'."""
    val = evaluate(eval_net, job.val_loader or [], info.device, job.opts.amp_dtype, job.opts.channels_last)
    out = {f"raw_{k}": v for k, v in val.items()} | val
    if job.ema is not None:
        ema = evaluate(job.ema.module, job.val_loader or [], info.device, job.opts.amp_dtype, job.opts.channels_last)
        out |= {f"ema_{k}": v for k, v in ema.items()} | ema
    return out


def _check_ranks_agree(job: Job, info: DistInfo) -> None:
    """After DDP training every rank must hold the same parameters and buffers (raw and EMA); say so (or fail)
    once, on rank 0. Buffers agree because the loop broadcasts rank 0's before each validation (sync_buffers)."""
    if not info.distributed:
        return
    models = {"weights": job.model} | ({"EMA weights": job.ema.module} if job.ema is not None else {})
    for name, model in models.items():
        sums = all_gather_objects(weights_checksum(model))
        for part in ("parameters", "buffers"):
            values = [s[part] for s in sums]
            if max(values) - min(values) > 1e-9 * max(1.0, abs(values[0])):
                cleanup()
                raise SystemExit(f"error: the {info.world_size} ranks ended with different {name} ({part} "
                                 f"checksums {values})")
        log.info("ranks agree: %s checksum %.12g (parameters), %.12g (buffers) on %d processes", name,
                 sums[0]["parameters"], sums[0]["buffers"], info.world_size)


def _save_epoch(out: Path, state: dict, is_best: bool, train: dict[str, float], val: dict[str, float],
                tb: TensorBoard, keep: int, snapshot: bool) -> None:
    """The summary.csv row, checkpoints and TensorBoard scalars of one finished epoch (rank 0 only).

    Order matters for a kill at any point: the row comes first (a resume trims rows past its checkpoint), and a best
    epoch is saved as best.pth before last.pth links to it, so best.pth is never older than last.pth's best_metric.
    Kept epochs and snapshots are links to last.pth (free), written after it.
    """
    epoch = state["epoch"]
    row = {"epoch": epoch, "step": int(train["step"]), "lr": train["lr"], "train_loss": train["loss"],
           "val_loss": val["raw_loss"], "val_top1": val["raw_top1"], "val_top3": val["raw_top3"],
           "val_map3": val["raw_map3"], "images_per_s": train["images_per_s"], "epoch_s": train["seconds"],
           "loader_wait_s": train["data_wait_s"]}
    if "ema_map3" in val:
        row |= {"ema_val_loss": val["ema_loss"], "ema_val_top1": val["ema_top1"], "ema_val_map3": val["ema_map3"]}
    update_summary(out / "summary.csv", row)
    if is_best:
        save_checkpoint(state, out / "best.pth")
        copy_checkpoint(out / "best.pth", out / "last.pth")
    else:
        save_checkpoint(state, out / "last.pth")
    if keep:
        link_or_copy(out / "last.pth", out / f"epoch_{epoch:03d}.pth")
        for old in sorted(out.glob("epoch_*.pth"))[:-keep]:
            old.unlink()
    if snapshot:
        link_or_copy(out / "last.pth", out / f"snapshot_{epoch:03d}.pth")
    tb.log({f"train/{k}": train[k] for k in ("loss", "lr", "images_per_s", "data_wait_s")} |
           {f"val/{k}": v for k, v in val.items() if isinstance(v, float)}, epoch)
    ema = f", EMA MAP@3 {val['ema_map3']:.4f}" if "ema_map3" in val else ""
    log.info("epoch %d: train loss %.4f, val loss %.4f, top-1 %.4f, MAP@3 %.4f%s (%.0f img/s, %.1f s waiting for "
             "data)%s", epoch, train["loss"], val["raw_loss"], val["raw_top1"], val["raw_map3"], ema,
             train["images_per_s"], train["data_wait_s"], " *best*" if is_best else "")


def _last_line(exc: BaseException) -> str:
    """An exception's message on one line: a DataLoader worker's error arrives with the worker's whole traceback."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[-1].split(": ", 1)[-1] if len(lines) > 1 else (lines[0] if lines else type(exc).__name__)


def _finish(out: Path, tb: TensorBoard, val: dict[str, float], best: float) -> None:
    """Close the logs, draw curves.png from summary.csv and print the final validation MAP@3."""
    tb.close()
    if (out / "summary.csv").is_file():
        plot_curves(out / "summary.csv", out / "curves.png")
    print(f"validation MAP@3 {val['map3']:.4f} (best {best:.4f}); checkpoints, summary.csv and curves.png in {out}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
