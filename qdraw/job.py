"""What train.py builds before its loop, and the checkpoints it writes: data, model, optimiser, EMA, schedule, resume.

Kept out of the CLI so train.py shows the loop and the flags (torchvision's references keep their ``main`` in the
script and the helpers beside it). Two rules fit a run to its data (both documented in the README):

* **Batch size**: ``--batch-size`` is an upper bound. When an epoch (this process's share) would give fewer than
  ``--min-steps-per-epoch`` optimiser steps, the batch is lowered to ``epoch // min_steps`` (a multiple of 8, at
  least 16), so a short run on a small store still takes hundreds of steps; on the full set (3.4 M drawings an
  epoch) it never applies.
* **Learning rate**: with ``--lr-base-batch B`` the flag ``--lr`` is the rate for B images per step, and the rate
  used is ``lr * (global batch / B) ** p`` with p = 1/2 for Adam and AdamW and p = 1 for SGD (timm's ``lr_base``
  rule), so the rate follows the batch the run really uses (after the rule above, accumulation and all ranks).
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

from . import dataset as qdata
from .atomic import clean_temp_files
from .averaging import Ema
from .checkpoint import CHECKPOINT_VERSION, check_compatible, load_checkpoint, rng_state
from .config import config_dict
from .distributed import DistInfo, all_gather_objects, barrier
from .augment import Augment
from .engine import StepOptions
from .loader import create_loader
from .mix import Mix
from .render import InputSpec, RasterRender, PointsRender, make_render
from .prepare import SYNTHETIC_DIR, ensure_synthetic
from .schedule import CosineRestarts
from .store import Store
from .zoo import create_model, model_input

log = logging.getLogger(__name__)
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Job:
    """Everything main() needs for the loop: data and loaders, the raw model, its optimiser, EMA and schedule."""

    store: Store
    spec: InputSpec
    augment: Augment
    train_set: qdata.BalancedBlockDataset
    train_loader: object
    val_loader: object | None
    model: nn.Module
    optimizer: torch.optim.Optimizer
    opts: StepOptions
    in_chans: int
    batch_size: int
    lr: float
    lr_at: CosineRestarts
    ema: Ema | None


def cap_workers(workers: int) -> int:
    """At most this process's share of the cores: more loader threads or processes than cores only thrash (results
    do not depend on the count: block choice, shuffle and flips are functions of (seed, epoch, index))."""
    share = max(1, len(os.sched_getaffinity(0)) // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    if workers > share:
        log.info("--workers %d capped at %d (cores available to this process)", workers, share)
    return min(workers, share)


def fit_batch(batch_size: int, epoch_items: int, min_steps: int, accum: int = 1) -> int:
    """The batch a run uses: batch_size, lowered so an epoch of epoch_items gives >= min_steps optimiser steps."""
    if min_steps <= 0 or epoch_items // (batch_size * accum) >= min_steps:
        return batch_size
    fitted = (epoch_items // (min_steps * accum)) // 8 * 8
    return max(min(batch_size, 16), min(batch_size, fitted))


def scaled_lr(lr: float, global_batch: int, base_batch: int | None, opt: str) -> float:
    """The rate for global_batch images per step when lr is the rate for base_batch (module docstring)."""
    if base_batch is None:
        return lr
    return lr * (global_batch / base_batch) ** (1.0 if opt == "sgd" else 0.5)


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def input_spec(args: argparse.Namespace, store: Store) -> InputSpec:
    """What the model reads: a picture in --encoding at --image-size, or for a model that reads strokes
    (qdraw.zoo.model_input) --max-points points per drawing, with dt when --point-time (default: raw stores)."""
    if model_input(args.model) == "points":
        time = store.has_time if args.point_time is None else args.point_time
        if time and not store.has_time:
            raise ValueError(f"--point-time needs stroke timing, but {store.root} is simplified")
        return InputSpec.points(args.max_points, time)
    return InputSpec.raster(args.encoding, args.image_size, args.line_width)


def model_kwargs(args: argparse.Namespace) -> dict:
    """--model-args as builder keywords (checkpointed in model_args, so predict.py rebuilds the same network); tuples
    become lists there, which the builders take alike."""
    kwargs = dict(args.model_args or {})
    if not all(isinstance(k, str) and k not in ("num_classes", "in_chans") for k in kwargs):
        raise ValueError("--model-args sets the builder's own settings (not num_classes or in_chans)")
    return {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}


def augmentation(args: argparse.Namespace) -> Augment:
    """The training transform: --augment's strengths, with the flip at probability 0.5 under --hflip."""
    return Augment.from_config(args.augment, hflip=0.5 if args.hflip else 0.0)


def _data(args: argparse.Namespace, info: DistInfo,
          workers: int) -> tuple[Store, InputSpec, Augment, qdata.BalancedBlockDataset, int]:
    if args.data is None and info.is_main:
        ensure_synthetic(SYNTHETIC_DIR, workers=max(1, workers))
    barrier()  # the other ranks wait for rank 0 to prepare the synthetic default
    store = Store(args.data or SYNTHETIC_DIR)
    spec, augment = input_spec(args, store), augmentation(args)
    train_set = qdata.BalancedBlockDataset(store, seed=args.seed, samples_per_class=args.samples_per_class,
                                           class_sampling=args.class_sampling, pseudo_share=args.pseudo_share,
                                           transform=augment)
    if train_set.pseudo_items and info.is_main:
        log.info("%d pseudo-labelled drawings an epoch (--pseudo-share %g) from %s/pseudo (%s)", train_set.pseudo_items,
                 args.pseudo_share, store.root, (store.pseudo_meta() or {}).get("source"))
    batch = fit_batch(args.batch_size, len(train_set) // info.world_size, args.min_steps_per_epoch, args.accum_steps)
    if batch != args.batch_size and info.is_main:
        log.info("batch %d -> %d: an epoch of %d drawings gives at least %d steps (--min-steps-per-epoch)",
                 args.batch_size, batch, len(train_set), args.min_steps_per_epoch)
    return store, spec, augment, train_set, batch


def _loaders(args: argparse.Namespace, info: DistInfo, store: Store, render: RasterRender | PointsRender,
             train_set: qdata.BalancedBlockDataset, batch: int, workers: int) -> tuple[object, object | None]:
    """Training loader (sharded by rank through its sampler) and validation loader (split rank::world_size, no
    padding, so every drawing counts once; None when the store has no validation split)."""
    kw = dict(num_workers=workers, backend=args.loader, prefetch=args.prefetch, chunk=args.chunk)
    train_loader = create_loader(train_set, render, batch, is_training=True, distributed=info.distributed,
                                 seed=args.seed, **kw)
    if len(train_loader) == 0:
        raise ValueError(f"--batch-size {batch} is larger than an epoch ({len(train_set)} drawings over "
                         f"{info.world_size} process(es))")
    if not any(store.val_blocks(c) for c in range(store.num_classes)):
        log.warning("%s has no validation split: no MAP@3, best.pth = last.pth", store.root)
        return train_loader, None
    val_set = qdata.SplitDataset(store, "val", max_per_class=args.val_per_class)
    shard = range(info.rank, len(val_set), info.world_size) if info.distributed else None
    return train_loader, create_loader(val_set, render, batch, is_training=False, indices=shard, **kw)


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases and normalisation weights (1-d tensors), as timm's param_groups_weight_decay."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def _optimizer(model: nn.Module, args: argparse.Namespace, lr: float) -> torch.optim.Optimizer:
    groups = _param_groups(model, args.weight_decay)
    if args.opt == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=args.momentum, nesterov=args.momentum > 0)
    cls = torch.optim.AdamW if args.opt == "adamw" else torch.optim.Adam
    return cls(groups, lr=lr)


def schedule(args: argparse.Namespace, lr: float) -> CosineRestarts:
    """The run's rate as a function of time in epochs (qdraw.schedule), fitted to --epochs unless --no-fit-schedule."""
    return CosineRestarts(lr, args.period, args.t_mult, min(args.min_lr, lr), args.warmup_epochs,
                          min(args.warmup_lr, lr), total=args.epochs if args.fit_schedule else None)


def build_job(args: argparse.Namespace, info: DistInfo) -> Job:
    """Data, model (input channels from the encoding), optimiser, EMA and step options; bad settings raise
    ValueError (the CLI turns it into one error line)."""
    workers = cap_workers(args.workers)
    store, spec, augment, train_set, batch = _data(args, info, workers)
    render = make_render(spec)
    train_loader, val_loader = _loaders(args, info, store, render, train_set, batch, workers)
    in_chans = spec.channels
    model = create_model(args.model, store.num_classes, in_chans=in_chans, pretrained=args.pretrained,
                         **model_kwargs(args))
    with torch.no_grad():  # a too-small --image-size fails here with the model's own message, not mid-epoch
        model.eval()(torch.zeros(render.batch_shape(1), dtype=torch.float32))
    cuda = info.device.type == "cuda"
    if args.sync_bn and info.distributed:
        if not cuda:
            raise ValueError("--sync-bn needs CUDA devices (torch's SyncBatchNorm does not run on the CPU)")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # same state_dict keys: predict.py rebuilds plain BN
    channels_last = cuda if args.channels_last is None else args.channels_last
    model.to(info.device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    amp = cuda if args.amp is None else args.amp
    amp_dtype = AMP_DTYPES[args.amp_dtype] if amp else None
    scaler = torch.amp.GradScaler(info.device.type) if amp_dtype is torch.float16 else None
    mix = Mix(args.mixup, args.cutmix, args.mix_prob)
    if mix.enabled and spec.kind != "raster":
        raise ValueError("--mixup and --cutmix blend pictures; this model reads point sequences")
    opts = StepOptions(args.accum_steps, args.clip_grad, amp_dtype, scaler, channels_last, args.progress,
                       mix if mix.enabled else None, args.seed, store.num_classes)
    lr = scaled_lr(args.lr, batch * args.accum_steps * info.world_size, args.lr_base_batch, args.opt)
    ema = Ema(model, args.ema_decay) if args.ema_decay else None
    return Job(store, spec, augment, train_set, train_loader, val_loader, model, _optimizer(model, args, lr), opts,
               in_chans,
               batch, lr, schedule(args, lr), ema)


def checkpoint_state(args: argparse.Namespace, job: Job, epoch: int, step: int, best: float) -> dict:
    """The flat, weights_only-loadable dict of qdraw.checkpoint (RNG states of every rank, in rank order)."""
    scaler = job.opts.scaler
    state = {"version": CHECKPOINT_VERSION, "arch": args.model,
             "model_args": {"num_classes": job.store.num_classes, "in_chans": job.in_chans} | model_kwargs(args),
             "classes": list(job.store.classes), "num_classes": job.store.num_classes, "encoding": job.spec.encoding,
             "image_size": job.spec.image_size, "line_width": getattr(make_render(job.spec), "line_width", None),
             "input": job.spec.to_dict(), "augment": job.augment.to_dict(), "data_kind": job.store.kind,
             "config": config_dict(args), "model": job.model.state_dict(), "optimizer": job.optimizer.state_dict(),
             "scaler": scaler.state_dict() if scaler is not None else None, "epoch": epoch, "step": step,
             "best_metric": best, "data_seed": args.seed, "batch_size": job.batch_size, "lr": job.lr,
             "rng": all_gather_objects(rng_state())}
    return state | (job.ema.state() if job.ema is not None else {})


def resume(args: argparse.Namespace, job: Job, info: DistInfo) -> tuple[int, int, float, dict | None]:
    """Load --resume into model, optimiser, scaler and EMA; return (start epoch, global step, best metric, RNG)."""
    ckpt = load_checkpoint(args.resume)
    check_compatible(ckpt, classes=job.store.classes, spec=job.spec, arch=args.model)
    job.model.load_state_dict(ckpt["model"])
    job.optimizer.load_state_dict(ckpt["optimizer"])
    if job.opts.scaler is not None and ckpt.get("scaler"):
        job.opts.scaler.load_state_dict(ckpt["scaler"])
    if job.ema is not None:
        if "ema" not in ckpt:
            raise ValueError(f"{args.resume} has no EMA weights; resume without --ema-decay or start a new run")
        job.ema.load(ckpt)
    rng = ckpt["rng"][info.rank] if len(ckpt["rng"]) == info.world_size else None
    if rng is None:
        log.warning("checkpoint holds RNG states of %d processes, this run has %d: augmentation restarts from "
                    "--seed + rank (the run continues, not bit-exactly)", len(ckpt["rng"]), info.world_size)
    log.info("resuming %s after epoch %d (step %d)", args.resume, ckpt["epoch"], ckpt["step"])
    return ckpt["epoch"] + 1, ckpt["step"], ckpt["best_metric"], rng


def output_dir(args: argparse.Namespace, is_main: bool) -> Path:
    """The run folder (checked on every rank so all fail together; created and reset by rank 0 only).

    A resumed run defaults to the checkpoint's folder and appends to its summary.csv; a fresh run refuses a folder
    holding an earlier run's last.pth unless --overwrite, and then starts a new summary.csv. Temporary files left by
    a killed run are removed (qdraw.atomic).
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
            for old in [*out.glob("epoch_*.pth"), *out.glob("snapshot_*.pth")]:
                old.unlink()
        clean_temp_files(out)
    return out


def wrap(model: nn.Module, args: argparse.Namespace, info: DistInfo) -> tuple[nn.Module, nn.Module]:
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


def weights_checksum(model: nn.Module) -> dict[str, float]:
    """Float summaries of the parameters and of the floating-point buffers, equal on ranks holding equal weights
    (compared after DDP; each tensor weighted by its position, so swapped tensors do not cancel out)."""
    params = {id(p) for p in model.parameters()}
    sums = {"parameters": 0.0, "buffers": 0.0}
    with torch.no_grad():
        for i, t in enumerate(model.state_dict(keep_vars=True).values()):
            if t.is_floating_point():
                sums["parameters" if id(t) in params else "buffers"] += t.double().sum().item() * (i + 1)
    return sums


def snapshot_epochs(lr_at: CosineRestarts, epochs: int) -> set[int]:
    """The epoch that ends at, or last before, each cycle end of the fitted schedule (where its rate reaches
    min_lr): the snapshots. Not the epoch after, which ends part-way up the next cycle's high rates."""
    if lr_at.total is None:
        return set()
    return {min(epochs - 1, max(0, math.floor(end + 1e-9) - 1)) for end in lr_at.cycle_ends()}
