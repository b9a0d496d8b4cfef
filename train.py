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
import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Subset

import data_loader_rgb  # noqa: F401  (registers the grey and rgb encodings)
import data_loader_time  # noqa: F401  (registers the time encoding)
import models
from qdraw import dataset as qdata
from qdraw.atomic import clean_temp_files
from qdraw.checkpoint import (
    CHECKPOINT_VERSION,
    CheckpointError,
    check_compatible,
    copy_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from qdraw.config import add_config_arg, config_dict, parse_args, write_config
from qdraw.distributed import DistInfo, all_gather_objects, barrier, cleanup, init_distributed
from qdraw.encoding import get_encoding
from qdraw.engine import StepOptions, evaluate, train_one_epoch
from qdraw.logs import TensorBoard, plot_curves, setup_logging, trim_summary, update_summary
from qdraw.prepare import SYNTHETIC_DIR, ensure_synthetic
from qdraw.schedule import CosineRestarts
from qdraw.store import Store, StoreError

log = logging.getLogger("train")
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
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
    g.add_argument("--val-per-class", type=int, default=None,
                   help="validation drawings per class, at most (default: all)")
    g.add_argument("--hflip", action=argparse.BooleanOptionalAction, default=True,
                   help="random horizontal flips in training (default on)")
    g.add_argument("--workers", type=int, default=4, help="loader processes per training process, capped at its "
                   "share of the cores (default 4)")


def _add_model_args(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--model", default="resnet34", help="registered architecture, see models.list_models() "
                   "(default resnet34)")
    g.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=False,
                   help="start from ImageNet weights (default off)")
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="NHWC memory layout (default: on with CUDA)")
    g.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                   help="torch.compile the model (default off)")


def _add_optim_args(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--epochs", type=int, default=40, help="epochs to train, counting resumed ones (default 40)")
    g.add_argument("--batch-size", type=int, default=256, help="images per micro-batch per process (default 256)")
    g.add_argument("--accum-steps", type=int, default=1, help="micro-batches per optimiser step (default 1)")
    g.add_argument("--opt", default="adam", choices=["adam", "adamw", "sgd"], help="optimiser (default adam)")
    g.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default 1e-3)")
    g.add_argument("--min-lr", type=float, default=1e-5, help="learning rate at the end of each cosine period "
                   "(default 1e-5)")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum, Nesterov (default 0.9)")
    g.add_argument("--weight-decay", type=float, default=0.0, help="L2 (adam, sgd) or decoupled (adamw) decay, "
                   "not on biases and norms (default 0)")
    g.add_argument("--period", type=float, default=32.0, help="first cosine period in epochs (default 32)")
    g.add_argument("--t-mult", type=float, default=1.2, help="each next period is this many times longer, real "
                   ">= 1 (default 1.2)")
    g.add_argument("--warmup-epochs", type=float, default=0.0, help="linear warm-up in epochs (default 0)")
    g.add_argument("--warmup-lr", type=float, default=1e-5, help="learning rate at the start of the warm-up "
                   "(default 1e-5)")
    g.add_argument("--label-smoothing", type=float, default=0.0, help="cross-entropy label smoothing, 0..1 "
                   "(default 0)")
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
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="tqdm bar per epoch (default on)")
    g.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=True,
                   help="TensorBoard scalars in OUTPUT/tb when tensorboard is installed (default on)")


def _check_args(args: argparse.Namespace) -> None:
    """Reject values no run could use, with one line each (the CLI turns ValueError into 'error: ...')."""
    positive = ("image_size", "epochs", "batch_size", "accum_steps", "period", "line_width", "samples_per_class",
                "val_per_class", "clip_grad")
    for key in positive:
        value = getattr(args, key)
        if value is not None and not value > 0:
            raise ValueError(f"--{key.replace('_', '-')} must be > 0, got {value}")
    if args.workers < 0 or args.lr <= 0 or not 0 <= args.label_smoothing < 1:
        raise ValueError("need --workers >= 0, --lr > 0 and 0 <= --label-smoothing < 1")


def _build_data(args: argparse.Namespace, info: DistInfo) -> tuple[Store, qdata.BalancedBlockDataset,
                                                                   qdata.EpochLoader, qdata.EpochLoader | None]:
    """Store, training set, training loader and validation loader (None when the store has no validation split).

    Training shards by rank through the loader's DistributedSampler, whose shuffle seed must be the same on every
    rank; validation is split rank::world_size here (no padding, so every drawing counts once).
    """
    workers = _cap_workers(args.workers)
    if args.data is None and info.is_main:
        ensure_synthetic(SYNTHETIC_DIR, workers=max(1, workers))
    barrier()  # the other ranks wait for rank 0 to prepare the synthetic default
    store = Store(args.data or SYNTHETIC_DIR)
    train_set = qdata.BalancedBlockDataset(store, args.encoding, image_size=args.image_size,
                                           line_width=args.line_width, samples_per_class=args.samples_per_class,
                                           seed=args.seed, hflip=args.hflip)
    train_loader = qdata.create_loader(train_set, args.batch_size, is_training=True, num_workers=workers,
                                       distributed=info.distributed, seed=args.seed)
    if len(train_loader) == 0:
        raise ValueError(f"--batch-size {args.batch_size} is larger than an epoch ({len(train_set)} drawings "
                         f"over {info.world_size} process(es))")
    if not any(store.val_blocks(c) for c in range(store.num_classes)):
        log.warning("%s has no validation split: no MAP@3, best.pth = last.pth", store.root)
        return store, train_set, train_loader, None
    val_set = qdata.SplitDataset(store, "val", args.encoding, image_size=args.image_size,
                                 line_width=args.line_width, max_per_class=args.val_per_class)
    val_shard = Subset(val_set, range(info.rank, len(val_set), info.world_size)) if info.distributed else val_set
    val_loader = qdata.create_loader(val_shard, args.batch_size, is_training=False, num_workers=workers)
    return store, train_set, train_loader, val_loader


def _cap_workers(workers: int) -> int:
    """At most this process's share of the cores: more loader processes than cores only thrash (results do not
    depend on the worker count: block choice, shuffle and flips are functions of (seed, epoch, index))."""
    share = max(1, len(os.sched_getaffinity(0)) // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    if workers > share:
        log.info("--workers %d capped at %d (cores available to this process)", workers, share)
    return min(workers, share)


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases and normalisation weights (1-d tensors), as timm's param_groups_weight_decay."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def _create_optimizer(model: nn.Module, args: argparse.Namespace) -> torch.optim.Optimizer:
    groups = _param_groups(model, args.weight_decay)
    if args.opt == "sgd":
        return torch.optim.SGD(groups, lr=args.lr, momentum=args.momentum, nesterov=args.momentum > 0)
    cls = torch.optim.AdamW if args.opt == "adamw" else torch.optim.Adam
    return cls(groups, lr=args.lr)


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _checkpoint(args: argparse.Namespace, job: Job, epoch: int, step: int, best: float) -> dict:
    """The flat, weights_only-loadable dict of qdraw.checkpoint (RNG states of every rank, in rank order)."""
    scaler = job.opts.scaler
    return {"version": CHECKPOINT_VERSION, "arch": args.model,
            "model_args": {"num_classes": job.store.num_classes, "in_chans": job.in_chans},
            "classes": list(job.store.classes), "num_classes": job.store.num_classes, "encoding": args.encoding,
            "image_size": args.image_size, "config": config_dict(args), "model": job.model.state_dict(),
            "optimizer": job.optimizer.state_dict(), "scaler": scaler.state_dict() if scaler is not None else None,
            "epoch": epoch, "step": step, "best_metric": best, "data_seed": args.seed,
            "rng": all_gather_objects(rng_state())}


def _resume(args: argparse.Namespace, job: Job, info: DistInfo) -> tuple[int, int, float, dict | None]:
    """Load --resume into model, optimiser and scaler; return (start epoch, global step, best metric, RNG state)."""
    ckpt = load_checkpoint(args.resume)
    check_compatible(ckpt, classes=job.store.classes, encoding=args.encoding, image_size=args.image_size,
                     arch=args.model)
    job.model.load_state_dict(ckpt["model"])
    job.optimizer.load_state_dict(ckpt["optimizer"])
    if job.opts.scaler is not None and ckpt.get("scaler"):
        job.opts.scaler.load_state_dict(ckpt["scaler"])
    rng = ckpt["rng"][info.rank] if len(ckpt["rng"]) == info.world_size else None
    if rng is None:
        log.warning("checkpoint holds RNG states of %d processes, this run has %d: augmentation restarts from "
                    "--seed + rank (the run continues, not bit-exactly)", len(ckpt["rng"]), info.world_size)
    log.info("resuming %s after epoch %d (step %d)", args.resume, ckpt["epoch"], ckpt["step"])
    return ckpt["epoch"] + 1, ckpt["step"], ckpt["best_metric"], rng


def _output_dir(args: argparse.Namespace, is_main: bool) -> Path:
    """The run folder (checked on every rank so all fail together; created and reset by rank 0 only).

    A resumed run defaults to the checkpoint's folder and appends to its summary.csv; a fresh run refuses a folder
    holding an earlier run's last.pth unless --overwrite, and then starts a new summary.csv. Temporary checkpoints
    left by a killed run are removed.
    """
    default = Path(args.resume).parent if args.resume else Path(f"runs/{args.model}-{args.encoding}-{args.image_size}")
    out = Path(args.output) if args.output else default
    if not args.resume and not args.overwrite and (out / "last.pth").exists():
        raise ValueError(f"{out} holds an earlier run; continue it with --resume {out / 'last.pth'}, or pass "
                         f"--overwrite or another --output")
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        if not args.resume:
            (out / "summary.csv").unlink(missing_ok=True)
        clean_temp_files(out)  # a checkpoint a killed run was writing (never read: hidden name)
    return out


@dataclass
class Job:
    """What main() builds before the loop: data, the raw model and its optimiser, and how steps are taken."""

    store: Store
    train_set: qdata.BalancedBlockDataset
    train_loader: qdata.EpochLoader
    val_loader: qdata.EpochLoader | None
    model: nn.Module
    optimizer: torch.optim.Optimizer
    opts: StepOptions
    in_chans: int


def _setup(args: argparse.Namespace, info: DistInfo) -> Job:
    """Data, model (input channels from the encoding), optimiser and step options; bad settings raise ValueError."""
    store, train_set, train_loader, val_loader = _build_data(args, info)
    in_chans = get_encoding(args.encoding).channels
    model = models.create_model(args.model, store.num_classes, in_chans=in_chans, pretrained=args.pretrained)
    with torch.no_grad():  # a too-small --image-size fails here with the model's own message, not mid-epoch
        model.eval()(torch.zeros(1, in_chans, args.image_size, args.image_size))
    cuda = info.device.type == "cuda"
    channels_last = cuda if args.channels_last is None else args.channels_last
    model.to(info.device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    amp = cuda if args.amp is None else args.amp
    amp_dtype = AMP_DTYPES[args.amp_dtype] if amp else None
    scaler = torch.amp.GradScaler(info.device.type) if amp_dtype is torch.float16 else None
    opts = StepOptions(args.accum_steps, args.clip_grad, amp_dtype, scaler, channels_last, args.progress)
    return Job(store, train_set, train_loader, val_loader, model, _create_optimizer(model, args), opts, in_chans)


def _wrap(model: nn.Module, args: argparse.Namespace, info: DistInfo) -> tuple[nn.Module, nn.Module]:
    """Training and evaluation views of the raw module (which is what gets saved: no 'module.' prefixes).

    Training goes through DDP (and torch.compile when asked); evaluation uses the module itself, because ranks
    evaluate shards of different lengths and DDP's forward may call collectives that would then not match.
    """
    net = model
    if info.distributed:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[info.device] if info.device.type == "cuda"
                                                  else None)
    if args.compile:
        return torch.compile(net), torch.compile(model)
    return net, model


def main(args: argparse.Namespace) -> None:
    try:
        info = init_distributed(args.device)
        setup_logging(info.is_main)
        _check_args(args)
        lr_at = CosineRestarts(args.lr, args.period, args.t_mult, args.min_lr, args.warmup_epochs, args.warmup_lr)
        if args.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = not args.deterministic
        _seed_all(args.seed)  # same initial weights on every rank (DDP broadcasts rank 0's anyway)
        job = _setup(args, info)
        out = _output_dir(args, info.is_main)
        start_epoch, step, best, rng = _resume(args, job, info) if args.resume else (0, 0, -math.inf, None)
        if args.resume and info.is_main:
            trim_summary(out / "summary.csv", start_epoch)  # rows a killed run wrote after its last checkpoint
    except (ValueError, StoreError, CheckpointError, OSError) as exc:
        cleanup()
        raise SystemExit(f"error: {exc}") from None
    net, eval_net = _wrap(job.model, args, info)
    criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    tb = TensorBoard(out / "tb", enabled=args.tensorboard and info.is_main)
    if info.is_main:
        write_config(args, out / "config.yaml")
        log.info("%s on %s: %d classes, %s %dpx, %d train drawings/epoch, %d val, device %s x%d", args.model,
                 job.store.root, job.store.num_classes, args.encoding, args.image_size, len(job.train_set),
                 len(job.val_loader.dataset) if job.val_loader else 0, info.device, info.world_size)
    # Last thing before the loop, so a resumed run continues from exactly the state the killed one saved.
    if rng is not None:
        set_rng_state(rng)
    else:
        _seed_all(args.seed + info.rank)
    val, saved = {"map3": math.nan}, start_epoch - 1
    try:
        for epoch in range(start_epoch, args.epochs):
            # Pick this epoch's data: dataset.set_epoch (one block per class, a pure function of (seed, epoch)) and
            # sampler.set_epoch (shuffle and rank shard), both through the loader so persistent workers see it.
            job.train_loader.set_epoch(epoch)
            train = train_one_epoch(net, criterion, job.train_loader, job.optimizer, lr_at, info.device, epoch,
                                    step, job.opts)
            step = int(train["step"])
            val = evaluate(eval_net, job.val_loader or [], info.device, job.opts.amp_dtype, job.opts.channels_last)
            is_best = not val["map3"] <= best  # NaN (no validation drawings) counts as best: best.pth = last.pth
            best = val["map3"] if is_best else best
            state = _checkpoint(args, job, epoch, step, best)
            if info.is_main:
                _save_epoch(out, state, is_best, train, val, tb)
            saved = epoch
    except (StoreError, OSError) as exc:  # a damaged block met mid-run (maybe in a loader worker), a full disk
        cleanup()
        kept = f"; {out / 'last.pth'} holds epoch {saved}, continue with --resume" if saved >= 0 else ""
        raise SystemExit(f"error: {_last_line(exc)}{kept}") from None
    if info.is_main:
        _finish(out, tb, val, best)
    cleanup()


def _save_epoch(out: Path, state: dict, is_best: bool, train: dict[str, float], val: dict[str, float],
                tb: TensorBoard) -> None:
    """The summary.csv row, checkpoints and TensorBoard scalars of one finished epoch (rank 0 only).

    Order matters for a kill at any point: the row comes first (a resume trims rows past its checkpoint), and a best
    epoch is saved as best.pth before last.pth links to it, so best.pth is never older than last.pth's best_metric.
    """
    epoch = state["epoch"]
    row = {"epoch": epoch, "step": int(train["step"]), "lr": train["lr"], "train_loss": train["loss"],
           "val_loss": val["loss"], "val_top1": val["top1"], "val_top3": val["top3"], "val_map3": val["map3"],
           "images_per_s": train["images_per_s"], "epoch_s": train["seconds"]}
    update_summary(out / "summary.csv", row)
    if is_best:
        save_checkpoint(state, out / "best.pth")
        copy_checkpoint(out / "best.pth", out / "last.pth")
    else:
        save_checkpoint(state, out / "last.pth")
    tb.log({f"train/{k}": train[k] for k in ("loss", "lr", "images_per_s")} |
           {f"val/{k}": val[k] for k in ("loss", "top1", "top3", "map3")}, epoch)
    log.info("epoch %d: train loss %.4f, val loss %.4f, top-1 %.4f, MAP@3 %.4f (%.0f img/s)%s", epoch, train["loss"],
             val["loss"], val["top1"], val["map3"], train["images_per_s"], " *best*" if is_best else "")


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
    main(parse_args(get_args_parser()))
