"""`bench.py raster`: rasterising speed from a prepared store, against a per-segment PIL baseline, the loaders'
throughput, what epoch boundaries cost them, and how the loader and a training thread share the GIL, in one run so
the figures are comparable. Figures are printed, never asserted.

1. Single-thread figures (numba kernels are serial; torch and cv2 are set to one thread): the compiled path (gather +
   encode + draw of 256-drawing batches of the loaders' epoch, in random order) and the original solution's way (PIL
   ``ImageDraw.line`` per segment, same colours and geometry).
2. Wall-clock images/s through :func:`qdraw.loader.create_loader` in training mode, cycling epochs as training does,
   with K loader threads (``loader_<enc>_<size>_t<K>``) and K DataLoader worker processes (``..._w<K>``), each
   divided by the one-core kernel rate timed around it (the machine's speed drifts).
3. ``loader_cycle_over_repeat``: images/s cycling epochs (set_epoch(0), (1), ...: each epoch's plan, blocks and
   order) over images/s repeating one epoch with no boundary (its chunks streamed over and over), same store, same
   threads, measured alternately. Many classes with few drawings each is where boundaries cost.
4. GIL probes (``--probe-seconds``): a consumer thread alone, the loader alone (a thread iterating it, cycling
   epochs), then both at once for the same seconds, at the default switch interval, with 1 and 2 loader threads.
   Consumers: ``torch`` (tiny torch ops, each releasing and re-taking the GIL, as a loop launching GPU work does) and
   ``python`` (a pure-Python loop that never releases it). ``consumer_keep`` and ``loader_keep`` are each one's
   rate together over its rate alone: medians over rounds of the three phases in turn. The control (``--probes 0``)
   puts a thread in the loader's place that writes batches in compiled calls holding no GIL: what the consumer keeps
   beside it is what sharing the cores and memory costs, the ceiling of any loader on that machine.

    python bench.py raster --encoding rgb --size 128 --data data/kaggle_simplified
    python bench.py raster --encoding rgb --size 128 --data data/k345 --threads 2 --workers '' --probes ''
    python bench.py raster --encoding time --size 128 --data data/raw --workers 0
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
import time

import numpy as np
import torch

import data_loader_rgb  # noqa: F401  (registers grey, rgb)
import data_loader_time  # noqa: F401  (registers time)
from qdraw.augment import Augment
from qdraw.dataset import BalancedBlockDataset
from qdraw.encoding import Encoding, check_time, get_encoding
from qdraw.loader import ThreadLoader, create_loader
from qdraw.raster import Sources, check_geometry, draw
from qdraw.render import InputSpec, make_render
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
    p.add_argument("--augment", default="none", help="stroke augmentation preset of the loaders (default none)")
    p.add_argument("--cycle-threads", default="2", help="comma list of thread counts for loader_cycle_over_repeat "
                   "('' to skip; default 2)")
    p.add_argument("--probes", default="0,1,2", help="comma list of loader thread counts for the GIL probes, 0 = the "
                   "GIL-free control in place of the loader ('' to skip; default 0,1,2)")
    p.add_argument("--probe-seconds", type=float, default=2.0, help="seconds of each probe phase (default 2)")
    p.add_argument("--probe-rounds", type=int, default=5, help="rounds of the three phases, medians reported "
                   "(default 5)")
    p.add_argument("--chunk", type=int, default=None, help="batches per compiled call of a loader thread (default: "
                   "qdraw.loader.CHUNK)")


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
    """The loaders' training set: --drawings / classes drawings of each class an epoch, --augment with the flip."""
    per_class = max(1, -(-args.drawings // store.num_classes))
    return BalancedBlockDataset(store, seed=args.seed, samples_per_class=per_class,
                                transform=Augment.from_config(args.augment, hflip=0.5))


def _loader(store: Store, args: argparse.Namespace, workers: int, backend: str = "threads"):
    render = make_render(InputSpec.raster(args.encoding, args.size, args.line_width))
    return create_loader(_dataset(store, args), render, args.batch_size, True, workers, seed=args.seed,
                         pin_memory=False, backend=backend, chunk=args.chunk if backend == "threads" else None)


class _Repeat(ThreadLoader):
    """One epoch streamed over and over as if it never ended: the loader without any epoch-boundary work (plan,
    blocks, sampler order, drained prefetch), the baseline of loader_cycle_over_repeat."""

    def _chunks(self, epoch: int, follow: bool):
        while True:
            yield from super()._chunks(epoch, follow=False)


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


def _drive(loader, stop: threading.Event, count: list[int], cycle: bool = True) -> None:
    """Iterate a loader as training does (set_epoch(0), (1), ...) until stop, adding images to count[0]."""
    epoch = 0
    while not stop.is_set():
        loader.set_epoch(epoch if cycle else 0)
        for _, y in loader:
            count[0] += len(y)
            if stop.is_set():
                break
        epoch += 1


def _rates(phases: dict, seconds: float, warm: float = 0.5) -> dict[str, float]:
    """Run each named worker function(stop, count) in its own thread; once each has counted its first unit and
    min(warm, seconds) more seconds have passed, count for `seconds`; return units per second of each."""
    stop, counts = threading.Event(), {k: [0] for k in phases}
    threads = [threading.Thread(target=fn, args=(stop, counts[k]), daemon=True) for k, fn in phases.items()]
    for t in threads:
        t.start()
    deadline = time.perf_counter() + 600  # a first call may compile (numba caches per checkout): not in the window
    while any(c[0] == 0 for c in counts.values()) and time.perf_counter() < deadline:
        time.sleep(0.01)
    time.sleep(min(warm, seconds))
    start = {k: c[0] for k, c in counts.items()}
    t0 = time.perf_counter()
    time.sleep(seconds)
    end = {k: c[0] for k, c in counts.items()}
    elapsed = time.perf_counter() - t0
    stop.set()
    for t in threads:
        t.join()
    return {k: (end[k] - start[k]) / elapsed for k in phases}


def _loader_rate(store: Store, args: argparse.Namespace, workers: int, backend: str) -> float:
    """Images/s (wall clock) through create_loader in training mode, cycling epochs, after a warm-up that pays the
    start-up (thread pool or worker processes, first block maps, compiled code)."""
    loader = _loader(store, args, workers, backend)
    rate = _rates({"loader": lambda stop, count: _drive(loader, stop, count)}, args.min_seconds, warm=1.0)["loader"]
    getattr(loader, "close", lambda: None)()
    return rate


def _fill(buf: np.ndarray, value: int) -> None:
    for i in range(buf.size):
        buf[i] = (i + value) & 255


_fill_nogil = None


def _nogil_load(stop: threading.Event, count: list[int]) -> None:
    """The GIL-free control: a thread writing one batch of rgb 128 px pictures (256 x 3 x 128 x 128 bytes) per
    compiled call that releases the GIL, counting batches. Beside a consumer it costs only what sharing the cores
    and memory costs, so the consumer's keep against it is the ceiling any loader can reach on this machine."""
    global _fill_nogil
    if _fill_nogil is None:
        from numba import njit

        _fill_nogil = njit(nogil=True, cache=True)(_fill)
    buf = np.empty(256 * 3 * 128 * 128, np.uint8)
    while not stop.is_set():
        _fill_nogil(buf, count[0])
        count[0] += 256


def _torch_ops(stop: threading.Event, count: list[int]) -> None:
    a = torch.zeros(16)
    while not stop.is_set():
        for _ in range(100):
            a.add_(1.0)
        count[0] += 100


def _python_loop(stop: threading.Event, count: list[int]) -> None:
    while not stop.is_set():
        x = 0
        for i in range(1000):
            x += i
        count[0] += 1


def cycle_over_repeat(store: Store, args: argparse.Namespace, threads: int, rounds: int = 2) -> tuple[float, float]:
    """(images/s cycling epochs, images/s repeating one epoch), each the mean of `rounds` alternating timings."""
    cyc, rep = [], []
    for _ in range(rounds):
        loader = _loader(store, args, threads)
        cyc.append(_rates({"l": lambda stop, count: _drive(loader, stop, count)}, args.min_seconds, 1.0)["l"])
        loader.close()
        base = _loader(store, args, threads)
        repeat = _Repeat(base.dataset, base.render, base.sampler, base.batch_size, True, threads, chunk=args.chunk)
        rep.append(_rates({"l": lambda stop, count: _drive(repeat, stop, count, cycle=False)}, args.min_seconds,
                          1.0)["l"])
        repeat.close()
    return float(np.mean(cyc)), float(np.mean(rep))


def gil_probe(store: Store, args: argparse.Namespace, threads: int, consumer: str) -> dict[str, float]:
    """Consumer alone, loader alone, both together, --probe-rounds times in turn: each round's two keep ratios
    (module docstring), so a drift of the machine's speed (steal time of 0-12 % seen here from second to second)
    falls on both sides of a ratio; returns the medians over rounds and their ranges. threads 0: the GIL-free
    control (_nogil_load) in place of the loader."""
    work = _torch_ops if consumer == "torch" else _python_loop
    loader = _loader(store, args, threads) if threads else None

    def drive(stop, count):
        _drive(loader, stop, count) if loader is not None else _nogil_load(stop, count)

    rounds = []
    for _ in range(args.probe_rounds):
        alone_c = _rates({"c": work}, args.probe_seconds)["c"]
        alone_l = _rates({"l": drive}, args.probe_seconds)["l"]
        both = _rates({"c": work, "l": drive}, args.probe_seconds)
        rounds.append((both["c"] / alone_c, both["l"] / alone_l, alone_c, alone_l))
    getattr(loader, "close", lambda: None)()
    r = np.array(rounds)
    return {"consumer_keep": float(np.median(r[:, 0])), "loader_keep": float(np.median(r[:, 1])),
            "consumer_range": (r[:, 0].min(), r[:, 0].max()), "loader_range": (r[:, 1].min(), r[:, 1].max()),
            "consumer_alone": float(np.median(r[:, 2])), "loader_alone": float(np.median(r[:, 3]))}


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
              f"one-core kernel timed around it, {near:.0f}; {what}, batch {args.batch_size}, cycling epochs)",
              flush=True)
    epoch_batches = len(src) // args.batch_size
    for k in [int(k) for k in args.cycle_threads.split(",") if k.strip()]:
        cyc, rep = cycle_over_repeat(store, args, k)
        print(f"loader_cycle_over_repeat_t{k} {cyc / rep:.2f}  (cycling epochs {cyc:.0f} images/s, one epoch "
              f"repeated {rep:.0f}; {store.num_classes} classes, {epoch_batches} batches an epoch)", flush=True)
    print(f"switch interval {sys.getswitchinterval() * 1000:g} ms; probe phases of {args.probe_seconds:g} s")
    for k in [int(k) for k in args.probes.split(",") if k.strip()]:
        for consumer in ("torch", "python"):
            r = gil_probe(store, args, k, consumer)
            (c0, c1), (l0, l1) = r["consumer_range"], r["loader_range"]
            name = f"gil_{consumer}_t{k}" if k else f"gil_{consumer}_control"
            print(f"{name} consumer_keep {r['consumer_keep']:.2f} loader_keep {r['loader_keep']:.2f}  "
                  f"(medians of {args.probe_rounds} rounds, ranges {c0:.2f}-{c1:.2f} and {l0:.2f}-{l1:.2f}; consumer "
                  f"alone {r['consumer_alone']:.0f}/s, loader alone {r['loader_alone']:.0f} images/s)", flush=True)
