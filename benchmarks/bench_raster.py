"""`bench.py raster`: rasterising speed from a prepared store, against a per-segment PIL baseline, and DataLoader
throughput, in one run so the figures are comparable.

Single-thread figures (numba kernels are serial; torch and cv2 are set to one thread): the compiled path (gather +
encode + draw of 256-drawing batches in random store order, into fresh zeroed arrays) and the original solution's
way (PIL ``ImageDraw.line`` per segment and ``ellipse`` per dot, same colours and geometry), then wall-clock images/s
through :func:`qdraw.loader.create_loader` with K loader threads (``loader_<enc>_<size>_t<K>``, K = 1, 2, ... up to
the cores) and with DataLoader worker processes (``..._w<K>``), and each loader's ratio to the one-core kernel rate,
side by side. Figures are printed, never asserted.

Like is compared with like: the kernel line draws the drawings of the loaders' epoch (a training set of
``--drawings`` / classes drawings of each class, in a random order), the loaders draw that same epoch again and
again, and each figure is timed over whole passes adding up to at least ``--min-seconds``: one-pass timings of a
fraction of a second varied by +-15 % between runs on the shared 2-core machine.

    python bench.py raster --encoding rgb --size 128 --data data/kaggle_simplified
    python bench.py raster --encoding time --size 128 --data data/raw --workers 0
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

import data_loader_rgb  # noqa: F401  (registers grey, rgb)
import data_loader_time  # noqa: F401  (registers time)
from qdraw.dataset import BalancedBlockDataset
from qdraw.loader import create_loader
from qdraw.encoding import Encoding, check_time, get_encoding
from qdraw.raster import Sources, check_geometry, draw
from qdraw.store import Store


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="prepared store folder (prepare_data.py)")
    p.add_argument("--encoding", default="rgb", help="encoding name (default rgb)")
    p.add_argument("--size", type=int, default=128, help="image size in px (default 128)")
    p.add_argument("--line-width", type=int, default=None, help="line width in px (default round(3 * size / 128))")
    p.add_argument("--batch-size", type=int, default=256, help="drawings per batch (default 256)")
    p.add_argument("--drawings", type=int, default=20000,
                   help="drawings of an epoch, spread evenly over the classes (default 20000)")
    p.add_argument("--baseline-drawings", type=int, default=1000, help="drawings for the PIL baseline (default 1000)")
    p.add_argument("--min-seconds", type=float, default=2.0,
                   help="time each figure over whole passes or epochs adding up to at least this (default 2 s)")
    p.add_argument("--threads", default=None, help="comma list of loader thread counts ('' to skip; default 1, 2, "
                   "4, ... up to the cores)")
    p.add_argument("--workers", default="0,2", help="comma list of DataLoader worker-process counts ('' to skip; "
                   "default 0,2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the drawing order (default 0)")


def pil_draw(xy: np.ndarray, strokes: np.ndarray, drawings: np.ndarray, colors: np.ndarray, size: int,
             line_width: int, margin: int) -> np.ndarray:
    """The original solution's way: one PIL call per segment (colour of its first point), one ellipse per dot."""
    from PIL import Image, ImageDraw

    n_ch = colors.shape[1]
    out = np.zeros((len(drawings) - 1, n_ch, size, size), np.uint8)
    ext = max(size - 1 - 2 * margin, 0)
    r = (line_width - 1) / 2
    for b in range(len(drawings) - 1):
        p0, p1 = strokes[drawings[b]], strokes[drawings[b + 1]]
        pts = xy[p0:p1].astype(np.int64)
        c = pts.min(0) + pts.max(0)
        pix = ((size - 1) * 255 + (2 * pts - c) * ext + 255) // 510
        img = Image.new("RGB" if n_ch == 3 else "L", (size, size))
        pen = ImageDraw.Draw(img)
        for s in range(drawings[b], drawings[b + 1]):
            a, e = strokes[s] - p0, strokes[s + 1] - p0
            seg = pix[a:e].tolist()
            col = [tuple(v) if n_ch == 3 else int(v[0]) for v in colors[p0 + a:p0 + e].tolist()]
            if e - a == 1:
                x, y = seg[0]
                pen.ellipse([x - r, y - r, x + r, y + r], fill=col[0])
            for k in range(e - a - 1):
                pen.line([tuple(seg[k]), tuple(seg[k + 1])], fill=col[k], width=line_width)
        arr = np.asarray(img)
        out[b] = arr.transpose(2, 0, 1) if n_ch == 3 else arr[None]
    return out


def _dataset(store: Store, args: argparse.Namespace) -> BalancedBlockDataset:
    """The loaders' training set: --drawings / classes drawings of each class an epoch."""
    per_class = max(1, -(-args.drawings // store.num_classes))
    return BalancedBlockDataset(store, args.encoding, args.size, args.line_width, per_class, seed=args.seed)


def _epoch_items(ds: BalancedBlockDataset, seed: int) -> tuple[Sources, np.ndarray, np.ndarray]:
    """The (sources, source, drawing) of every item of the dataset's epoch 0, in a random order."""
    _, picks = ds.plan(0)
    src = np.repeat(np.arange(len(ds.counts)), ds.counts)
    idx = np.concatenate([picks[c, :k] for c, k in enumerate(ds.counts)])
    perm = np.random.default_rng(seed).permutation(len(src))
    return Sources(ds.epoch_blocks(0)), src[perm], idx[perm]


def _time_path(sources: Sources, src: np.ndarray, idx: np.ndarray, enc: Encoding, size: int, lw: int, margin: int,
               batch: int, baseline: bool, min_seconds: float = 0.0) -> float:
    """Drawings per CPU second of this process to gather, encode and draw the drawings in batches (compiled kernels,
    or PIL when baseline), over whole passes until min_seconds; CPU time, so that other load does not count."""
    start, n = time.process_time(), 0
    while n == 0 or time.process_time() - start < min_seconds:
        for i in range(0, len(src), batch):
            xy, t, strokes, drawings = sources.gather(src[i:i + batch], idx[i:i + batch], with_time=enc.needs_time)
            colors = enc.colors(xy, t, strokes, drawings)
            if baseline:
                pil_draw(xy, strokes, drawings, colors, size, lw, margin)
            else:
                draw(xy, strokes, drawings, colors, size, lw, margin)
        n += len(src)
    return n / (time.process_time() - start)


def _loader_rate(store: Store, args: argparse.Namespace, workers: int, backend: str) -> float:
    """Images/s (wall clock) through create_loader in training mode, epoch 0 over and over, after a first pass that
    pays the start-up (thread pool or worker processes, first block maps)."""
    loader = create_loader(_dataset(store, args), args.batch_size, True, workers, seed=args.seed, pin_memory=False,
                           backend=backend)
    loader.set_epoch(0)
    passes, n, start = 0, 0, 0.0
    while passes < 2 or time.perf_counter() - start < args.min_seconds:
        if passes == 1:
            start = time.perf_counter()
        for x, _ in loader:
            n += len(x) if passes else 0
        passes += 1
    rate = n / max(time.perf_counter() - start, 1e-9)
    del loader
    return rate


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    try:
        import cv2
        cv2.setNumThreads(1)
    except ImportError:
        pass
    try:
        store = Store(args.data)
        enc = get_encoding(args.encoding)
        check_time(enc, store.has_time, store.root)
        lw, margin = check_geometry(args.size, args.line_width)
        workers = [int(w) for w in args.workers.split(",") if w.strip()]
        cores = len(os.sched_getaffinity(0))
        threads = ([2 ** i for i in range(cores.bit_length()) if 2 ** i <= cores] + ([cores] if cores & (cores - 1)
                   else []) if args.threads is None else [int(k) for k in args.threads.split(",") if k.strip()])
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    try:
        sources, src, idx = _epoch_items(_dataset(store, args), args.seed)
    except ValueError as exc:  # e.g. a class with no training drawings
        raise SystemExit(f"error: {exc}") from None
    _time_path(sources, src[:8], idx[:8], enc, args.size, lw, margin, args.batch_size, False)  # JIT load

    def kernel() -> float:
        return _time_path(sources, src, idx, enc, args.size, lw, margin, args.batch_size, False, args.min_seconds)

    kernels = [kernel()]
    nb = min(args.baseline_drawings, len(src))
    slow = _time_path(sources, src[:nb], idx[:nb], enc, args.size, lw, margin, args.batch_size, True)
    loaders = []
    # Each loader is timed between two kernel timings and divided by their mean: the machine's speed drifts over a
    # run (seen here: the same kernel at 37k and 54k drawings/s in runs minutes apart), so a ratio is only read
    # against a kernel figure taken at the same time.
    for backend, k in [("threads", k) for k in threads] + [("processes", w) for w in workers]:
        loaders.append((backend, k, _loader_rate(store, args, k, backend), kernels[-1]))
        kernels.append(kernel())
        loaders[-1] = loaders[-1][:3] + ((loaders[-1][3] + kernels[-1]) / 2,)
    fast = float(np.mean(kernels))
    tag = f"{args.encoding}_{args.size}"
    print(f"raster_{tag} {fast:.0f} drawings/s/core  ({len(src)} drawings, line width {lw}, batch {args.batch_size}; "
          f"mean of {len(kernels)} timings, {min(kernels):.0f} to {max(kernels):.0f})")
    print(f"pil_{tag} {slow:.0f} drawings/s/core  ({nb} drawings, PIL ImageDraw.line per segment)")
    print(f"speedup_{tag} {fast / slow:.1f}x")
    for backend, k, rate, near in loaders:
        what = f"{k} loader threads" if backend == "threads" else f"{k} DataLoader worker processes"
        print(f"loader_{tag}_{'t' if backend == 'threads' else 'w'}{k} {rate:.0f} images/s  ({rate / near:.2f}x the "
              f"one-core kernel timed around it, {near:.0f}; {what}, batch {args.batch_size})", flush=True)
