"""`bench.py train`: training images/s of one model from pre-made tensors and from the real loader, side by side.

Both variants time the real training step, :func:`qdraw.engine.train_one_epoch` (forward, loss, backward, Adam step;
the same function train.py's loop calls), over ``--steps`` batches after ``--warmup`` untimed ones. Pre-made uint8
batches already on the device measure what the model alone can do; the real loader (balanced block dataset, pinned
host-to-device copies) measures what a run gets. Their ratio is the stall ratio: 1.0 means the loader keeps the
accelerator fed (goal <= 1.05). The measured setting is bf16 autocast + channels_last on CUDA by default (fp32 on
CPU, where this is a smoke run); the fp32 / NCHW baseline is timed too, so the speed-ups of --amp and
--channels-last show in the same run (--sweep times every pair). One line per variant; nothing is asserted.

    python bench.py train --model resnet34 --size 128
    python bench.py train --model resnet34 --size 128 --amp bf16 --channels-last --batch-size 256 --steps 50
    python bench.py train --model mobilenetv2 --size 64 --sweep --data data/kaggle_simplified
"""
from __future__ import annotations

import argparse
import itertools
import math
from collections.abc import Iterator

import torch
from torch import nn

import data_loader_rgb  # noqa: F401  (registers grey, rgb)
import data_loader_time  # noqa: F401  (registers time)
import models
from qdraw import dataset as qdata
from qdraw.augment import Augment
from qdraw.distributed import pick_device
from qdraw.encoding import get_encoding
from qdraw.engine import StepOptions, train_one_epoch
from qdraw.loader import create_loader
from qdraw.prepare import SYNTHETIC_DIR, ensure_synthetic
from qdraw.render import InputSpec, make_render
from qdraw.store import Store

AMP = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="resnet34", help="registered architecture (default resnet34)")
    p.add_argument("--size", type=int, default=128, help="image side in px (default 128)")
    p.add_argument("--encoding", default="rgb", help="encoding of the loader variant (default rgb)")
    p.add_argument("--data", default=None, help="prepared store (default: the synthetic set in data/synthetic)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--batch-size", type=int, default=None, help="images per step (default 256 on CUDA, 16 on CPU)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per variant (default 50 on CUDA, 3 on CPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 10 on CUDA, 1 on CPU)")
    p.add_argument("--workers", type=int, default=None, help="loader workers (default 8 on CUDA, 2 on CPU)")
    p.add_argument("--amp", default=None, choices=list(AMP), help="autocast dtype of the measured setting "
                   "(default bf16 on CUDA, none on CPU)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="NHWC layout in the measured setting (default: on with CUDA)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                   help="torch.compile in the measured setting (default off)")
    p.add_argument("--sweep", action="store_true", help="also time every amp (none, bf16) x channels-last pair on "
                   "tensors")
    p.add_argument("--no-loader", action="store_true", help="skip the loader variants (tensors only)")


def _defaults(args: argparse.Namespace, cuda: bool) -> argparse.Namespace:
    """Fill the settings left unset with values that fit the device (a CPU run is a smoke run)."""
    for key, gpu, cpu in (("batch_size", 256, 16), ("steps", 50, 3), ("warmup", 10, 1), ("workers", 8, 2),
                          ("amp", "bf16", "none"), ("channels_last", True, False)):
        if getattr(args, key) is None:
            setattr(args, key, gpu if cuda else cpu)
    return args


class _Take:
    """The next n batches of an iterator, as a sized iterable (train_one_epoch needs len() for its schedule)."""

    def __init__(self, batches: Iterator, n: int):
        self.batches, self.n = batches, n

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator:
        return itertools.islice(self.batches, self.n)


def time_training(args: argparse.Namespace, batches: Iterator, num_classes: int, in_chans: int,
                  device: torch.device, amp: str, channels_last: bool, compile_: bool) -> float:
    """Images/s of train_one_epoch over args.steps batches, after one untimed call over args.warmup batches."""
    model = models.create_model(args.model, num_classes, in_chans=in_chans).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    net = torch.compile(model) if compile_ else model
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(device.type) if amp == "fp16" else None
    opts = StepOptions(amp_dtype=AMP[amp], scaler=scaler, channels_last=channels_last, progress=False)
    criterion = nn.CrossEntropyLoss()
    step = 0
    for n in (args.warmup, args.steps):  # train_one_epoch ends with a host sync (.item()), so timings do not overlap
        stats = train_one_epoch(net, criterion, _Take(batches, n), opt, lambda t: 1e-4, device, 0, step, opts)
        step = int(stats["step"])
    return stats["images_per_s"]


def _tensor_batches(args: argparse.Namespace, num_classes: int, in_chans: int, device: torch.device) -> Iterator:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (args.batch_size, in_chans, args.size, args.size), dtype=torch.uint8, generator=g)
    y = torch.randint(0, num_classes, (args.batch_size,), generator=g)
    return itertools.repeat((x.to(device), y.to(device)))


def _loader_batches(args: argparse.Namespace) -> tuple[Iterator, int, int]:
    """(batches, num_classes, in_chans) from the real training loader, cycling epochs as needed."""
    store = Store(args.data or ensure_synthetic(SYNTHETIC_DIR, workers=2))
    ds = qdata.BalancedBlockDataset(store, seed=0, transform=Augment(hflip=0.5))
    render = make_render(InputSpec.raster(args.encoding, args.size))
    loader = create_loader(ds, render, args.batch_size, is_training=True, num_workers=args.workers)

    def gen() -> Iterator:
        for epoch in itertools.count():
            loader.set_epoch(epoch)
            yield from loader

    return gen(), store.num_classes, get_encoding(args.encoding).channels


def _time_loader_only(args: argparse.Namespace, batches: Iterator) -> float:
    import time

    for _ in range(args.warmup):
        next(batches)
    t0, seen = time.perf_counter(), 0
    for _ in range(args.steps):
        seen += len(next(batches)[1])
    return seen / (time.perf_counter() - t0)


def _label(amp: str, cl: bool, comp: bool) -> str:
    return f"{'fp32' if amp == 'none' else amp} {'channels_last' if cl else 'nchw'}{' compiled' if comp else ''}"


def run(args: argparse.Namespace) -> None:
    device = pick_device(args.device)
    args = _defaults(args, device.type == "cuda")
    if min(args.batch_size, args.steps, args.warmup + 1, args.workers + 1, args.size) < 1:
        raise ValueError("--batch-size, --steps and --size must be >= 1, --warmup and --workers >= 0")
    torch.backends.cudnn.benchmark = True
    loader = None if args.no_loader else _loader_batches(args)
    num_classes, in_chans = (loader[1], loader[2]) if loader else (340, 3)
    name = f"train_{args.model}_{args.size}"
    print(f"{name}: device {device}, batch {args.batch_size}, {args.warmup} + {args.steps} steps, "
          f"{num_classes} classes, {in_chans} channels")
    want = (args.amp, args.channels_last, args.compile)
    variants = [("none", False, False), want]
    if args.sweep:
        variants += [(a, c, args.compile) for a in ("none", "bf16") for c in (False, True)]
    rates: dict[tuple, float | None] = {}
    for v in dict.fromkeys(variants):  # ordered, without repeats
        rates[v] = _report(f"{name} tensors {_label(*v)}", lambda v=v: time_training(
            args, _tensor_batches(args, num_classes, in_chans, device), num_classes, in_chans, device, *v),
            rates.get(variants[0]))
    if loader is None:
        return
    batches = loader[0]
    _report(f"{name} loader only ({args.workers} workers)", lambda: _time_loader_only(args, batches), None)
    real = _report(f"{name} loader {_label(*want)}", lambda: time_training(
        args, batches, num_classes, in_chans, device, *want), None)
    if real and rates.get(want):
        print(f"{name} stall ratio {rates[want] / real:.3f} (tensors / loader, goal <= 1.05)")


def _report(label: str, measure, baseline: float | None) -> float | None:
    """Run one measurement and print its line; an out-of-memory or compile failure prints instead of aborting."""
    try:
        rate = measure()
    except (torch.cuda.OutOfMemoryError, RuntimeError) as exc:
        print(f"{label}: failed ({str(exc).splitlines()[0][:160]})")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return None
    if not math.isfinite(rate):
        return None
    speedup = f" (x{rate / baseline:.2f} vs fp32 nchw)" if baseline and rate != baseline else ""
    print(f"{label}: {rate:.1f} img/s{speedup}", flush=True)
    return rate
