"""`bench.py points`: training drawings/s of the point models (qdraw.strokenets) and the cost of packing their input.

Batches are real code paths end to end: synthetic raw drawings (qdraw.synthetic) put in the 0..255 frame, packed
by qdraw.raster.pack_strokes and qdraw.points.pack_points (timed per batch), then ``--steps`` timed training steps
(forward, cross-entropy, backward, AdamW step) after one untimed one, per model. train.py does not feed point
sequences yet, so the step is written out here rather than taken from qdraw.engine. One Markdown row per model;
figures are printed, never asserted. A model is given as ``name[:key=value...]`` (values parsed as YAML).

    python bench.py points
    python bench.py points --models stroke_gru:hidden=192,learned_rasterizer:trunk=resnet18:width=32 --threads 2
    python bench.py points --length 64 --batch-size 128 --no-time
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from qdraw.points import num_features, pack_points
from qdraw.raster import pack_strokes
from qdraw.simplify import normalize
from qdraw.strokes import to_arrays
from qdraw.synthetic import SYNTHETIC_CLASSES, generate_records

POINT_MODELS = "stroke_gru,stroke_lstm,stroke_transformer,learned_rasterizer"


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", default=POINT_MODELS, help="comma-separated name[:key=value...] (default: the four "
                   "point models at their defaults)")
    p.add_argument("--batch-size", type=int, default=64, help="drawings per step (default 64)")
    p.add_argument("--length", type=int, default=128, help="points per drawing, L (default 128)")
    p.add_argument("--steps", type=int, default=4, help="timed training steps per model (default 4)")
    p.add_argument("--time", action=argparse.BooleanOptionalAction, default=True,
                   help="raw drawings with dt, F = 7 (default on; --no-time: F = 6, as simplified data)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")


def parse_spec(spec: str) -> tuple[str, dict]:
    """"name:key=value:..." → (name, kwargs), values read as YAML (so 32 is an int and [16, 32] a list)."""
    name, *pairs = spec.split(":")
    kwargs = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"model setting {pair!r} in {spec!r} is not key=value")
        kwargs[key] = yaml.safe_load(value)
    return name, kwargs


def synthetic_batch(n: int, seed: int = 0) -> list[list[np.ndarray]]:
    """n synthetic raw drawings (classes in turn) as (k, 3) strokes in the 0..255 frame, with times."""
    per_class = -(-n // len(SYNTHETIC_CLASSES))
    drawings = []
    for name in SYNTHETIC_CLASSES:
        for rec in generate_records(name, per_class, seed):
            strokes = to_arrays(rec["drawing"])
            drawings.append([np.column_stack([np.round(p), s[:, 2]]) for p, s in zip(normalize(strokes), strokes)])
    return drawings[:n]


def time_pack(packed: tuple, length: int, repeats: int = 20) -> float:
    """Median seconds of one pack_points call on the batch (after a warm-up call that loads the compiled kernel)."""
    pack_points(*packed, max_len=length)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        pack_points(*packed, max_len=length)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def time_training(name: str, kwargs: dict, x: torch.Tensor, num_classes: int, steps: int) -> tuple[float, int]:
    """(drawings/s over `steps` timed training steps after one untimed one, parameter count)."""
    import models

    torch.manual_seed(0)
    model = models.create_model(name, num_classes, in_chans=x.shape[2], **kwargs).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    y = torch.arange(len(x)) % num_classes
    for i in range(steps + 1):
        if i == 1:
            t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return steps * len(x) / (time.perf_counter() - t0), sum(p.numel() for p in model.parameters())


def run(args: argparse.Namespace) -> None:
    if min(args.batch_size, args.length, args.steps) < 1:
        raise ValueError("--batch-size, --length and --steps must be >= 1")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    specs = [parse_spec(s) for s in args.models.split(",") if s]
    xy, t, strokes, offsets = pack_strokes(synthetic_batch(args.batch_size))
    packed = (xy, t if args.time else None, strokes, offsets)
    pack_s = time_pack(packed, args.length)
    x = torch.from_numpy(pack_points(*packed, max_len=args.length))
    fill = float(x[..., 0].mean())
    print(f"batch {args.batch_size}, L {args.length}, F {num_features(args.time)} ({fill:.0%} of rows valid), "
          f"{torch.get_num_threads()} threads; pack_points {pack_s * 1e3:.2f} ms / batch\n")
    print("| model | settings | params (M) | train drawings/s |")
    print("|---|---|---:|---:|")
    for name, kwargs in specs:
        rate, params = time_training(name, kwargs, x, len(SYNTHETIC_CLASSES), args.steps)
        settings = ", ".join(f"{k}={v}" for k, v in kwargs.items()) or "defaults"
        print(f"| {name} | {settings} | {params / 1e6:.2f} | {rate:.0f} |", flush=True)
