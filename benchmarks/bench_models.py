"""`bench.py models`: a model card for the README, one Markdown row per registered model.

Each row gives the parameter count, multiply-accumulates per image at `--size` (torch's FlopCounterMode counts conv,
linear and matmul FLOPs; MACs = FLOPs / 2, so BatchNorm, activations and pooling are not included) and the CPU
forward time per image in eval mode (batch `--batch-size`, median of `--iters` timed runs after one warm-up, at the
current torch thread count). Figures are printed, never asserted.

    python bench.py models
    python bench.py models --size 64 --models resnet34,mobilenetv2 --threads 1
"""

import argparse
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", type=int, default=128, help="input side in px (default 128)")
    p.add_argument("--models", default="", help="comma-separated registry names (default: all image models)")
    p.add_argument("--num-classes", type=int, default=340, help="classifier size (default 340, Kaggle classes)")
    p.add_argument("--batch-size", type=int, default=8, help="images per timed forward (default 8)")
    p.add_argument("--iters", type=int, default=3, help="timed forwards per model; the median counts (default 3)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")


def count_macs(model: torch.nn.Module, size: int, in_chans: int = 3) -> int:
    """Multiply-accumulates of one (1, in_chans, size, size) forward pass."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, in_chans, size, size))
    return counter.get_total_flops() // 2


def time_forward(model: torch.nn.Module, size: int, batch_size: int, iters: int) -> float:
    """Median CPU seconds per image of an eval-mode forward on a (batch_size, 3, size, size) batch."""
    x = torch.randn(batch_size, 3, size, size)
    times = []
    with torch.inference_mode():
        model(x)  # warm-up: oneDNN picks and caches its kernels on the first call
        for _ in range(iters):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    return statistics.median(times) / batch_size


def bench_models(args: argparse.Namespace) -> None:
    """Print the Markdown model card for `args.models` (all registered models when empty)."""
    import models  # the zoo; imported here so `bench.py --help` stays light

    # point models read sequences, not images: `bench.py points` times them
    names = [n for n in args.models.split(",") if n] or [n for n in models.list_models()
                                                         if models.model_input(n) == "raster"]
    unknown = [n for n in names if n not in models.list_models() and not n.startswith("timm/")]
    if unknown:
        raise SystemExit(f"error: unknown model(s) {', '.join(unknown)}; known: {', '.join(models.list_models())}")
    if args.size < 1 or args.batch_size < 1 or args.iters < 1:
        raise SystemExit("error: --size, --batch-size and --iters must be positive")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print(f"{args.size} px, {args.num_classes} classes, batch {args.batch_size}, {torch.get_num_threads()} threads\n")
    print(f"| model | params (M) | GMACs @ {args.size} px | CPU ms / image |")
    print("|---|---:|---:|---:|")
    for name in names:
        model = models.create_model(name, args.num_classes).eval()
        params = sum(p.numel() for p in model.parameters())
        try:
            macs = count_macs(model, args.size)
        except ValueError as e:  # the size hook: this architecture cannot run at --size
            print(f"| {name} | {params / 1e6:.1f} | n/a ({e}) | n/a |")
            continue
        ms = 1000 * time_forward(model, args.size, args.batch_size, args.iters)
        print(f"| {name} | {params / 1e6:.1f} | {macs / 1e9:.2f} | {ms:.1f} |", flush=True)


run = bench_models  # the name bench.py dispatches to
