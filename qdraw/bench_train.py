"""`bench.py train`: training images/s of one model from pre-made tensors and from the real loader, side by side.

Pre-made uint8 batches already on the device measure what the model alone can do; the real loader (balanced block
dataset, workers, pinned host-to-device copies) measures what a run gets. Their ratio is the stall ratio: 1.0 means
the loader keeps the accelerator fed (goal <= 1.05). The measured setting is bf16 autocast + channels_last on CUDA
by default (fp32 on CPU, where this is a smoke run); the fp32 / NCHW baseline is timed too, so the speed-ups of --amp
and --channels-last show in the same run (--sweep times every pair). One line per variant; nothing is asserted.

    python bench.py train --model resnet34 --size 128
    python bench.py train --model resnet34 --size 128 --amp bf16 --channels-last --batch-size 256 --steps 50
    python bench.py train --model mobilenetv2 --size 64 --sweep --data data/kaggle_simplified
"""
from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Iterator

import torch
from torch import nn

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
    p.add_argument("--workers", type=int, default=None, help="loader processes (default 8 on CUDA, 2 on CPU)")
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
    pick = (lambda gpu, cpu: gpu) if cuda else (lambda gpu, cpu: cpu)
    for key, gpu, cpu in (("batch_size", 256, 16), ("steps", 50, 3), ("warmup", 10, 1), ("workers", 8, 2),
                          ("amp", "bf16", "none"), ("channels_last", True, False)):
        if getattr(args, key) is None:
            setattr(args, key, pick(gpu, cpu))
    return args


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _build(args, num_classes: int, in_chans: int, device: torch.device, channels_last: bool, compile_: bool):
    import models

    model = models.create_model(args.model, num_classes, in_chans=in_chans).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    return (torch.compile(model) if compile_ else model), opt


def time_training(args, batches: Iterator, num_classes: int, in_chans: int, device: torch.device, amp: str,
                  channels_last: bool, compile_: bool) -> float:
    """Images/s of forward + backward + Adam step over args.steps batches after args.warmup untimed ones."""
    from .dataset import to_model_input
    from .engine import autocast

    model, opt = _build(args, num_classes, in_chans, device, channels_last, compile_)
    scaler = torch.amp.GradScaler(device.type) if amp == "fp16" else None
    criterion = nn.CrossEntropyLoss()
    seen, t0 = 0, None
    for i in range(args.warmup + args.steps):
        if i == args.warmup:
            _sync(device)
            t0, seen = time.perf_counter(), 0
        x, y = next(batches)
        x, y = to_model_input(x, device, channels_last), y.to(device, non_blocking=True)
        with autocast(device, AMP[amp]):
            loss = criterion(model(x), y)
        (scaler.scale(loss) if scaler else loss).backward()
        if scaler:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        opt.zero_grad(set_to_none=True)
        seen += len(y)
    _sync(device)
    return seen / (time.perf_counter() - t0)


def _tensor_batches(args, num_classes: int, in_chans: int, device: torch.device) -> Iterator:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (args.batch_size, in_chans, args.size, args.size), dtype=torch.uint8, generator=g)
    y = torch.randint(0, num_classes, (args.batch_size,), generator=g)
    return itertools.repeat((x.to(device), y.to(device)))


def _loader_batches(args, device: torch.device):
    """(batches, num_classes, in_chans) from the real training loader, cycling epochs as needed."""
    from . import dataset as qdata
    from .config import resolve_data
    from .store import Store

    store = Store(resolve_data(args.data, workers=args.workers))
    ds = qdata.BalancedBlockDataset(store, args.encoding, image_size=args.size, seed=0)
    loader = qdata.create_loader(ds, args.batch_size, is_training=True, num_workers=args.workers)

    def gen() -> Iterator:
        for epoch in itertools.count():
            loader.set_epoch(epoch)
            yield from loader

    return gen(), store.num_classes, qdata.get_encoding(args.encoding).channels


def _time_loader_only(args, batches: Iterator) -> float:
    for _ in range(args.warmup):
        next(batches)
    t0, seen = time.perf_counter(), 0
    for _ in range(args.steps):
        seen += len(next(batches)[1])
    return seen / (time.perf_counter() - t0)


def _label(amp: str, cl: bool, comp: bool) -> str:
    return f"{'fp32' if amp == 'none' else amp} {'channels_last' if cl else 'nchw'}{' compiled' if comp else ''}"


def run(args: argparse.Namespace) -> None:
    from .distributed import pick_device

    device = pick_device(args.device)
    args = _defaults(args, device.type == "cuda")
    torch.backends.cudnn.benchmark = True
    loader = None if args.no_loader else _loader_batches(args, device)
    num_classes, in_chans = (loader[1], loader[2]) if loader else (340, 3)
    name = f"train_{args.model}_{args.size}"
    print(f"{name}: device {device}, batch {args.batch_size}, {args.warmup} + {args.steps} steps, "
          f"{num_classes} classes, {in_chans} channels")
    want = (args.amp, args.channels_last, args.compile)
    variants = [("none", False, False), want]
    if args.sweep:
        variants += [(a, c, args.compile) for a in ("none", "bf16") for c in (False, True)]
    rates: dict[tuple, float] = {}
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
    speedup = f" (x{rate / baseline:.2f} vs fp32 nchw)" if baseline and rate != baseline else ""
    print(f"{label}: {rate:.1f} img/s{speedup}", flush=True)
    return rate
