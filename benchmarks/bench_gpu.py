"""`bench.py gpu`: the diagnosis to run first on a lent GPU machine, one run, printed (scripts/gpu_check.sh calls it).

1. The machine: cores, this process's CPU affinity and its cgroup CPU quota (a container may see 16 cores and be
   allowed 4), torch and CUDA.
2. The bare kernels: the compiled chunk producer (qdraw.produce, what each loader thread runs) in 1, 4, 12 ... plain
   threads with no loader around it. If 12 threads give only ~1.3x of one, the limit is that machine's CPU (quota,
   memory bandwidth, shared cores), not the loader.
3. The stall ratio: training images/s from pre-made tensors over images/s through the real loader
   (bench.py train's two figures), for each store (one with long epochs, >= 150 batches, so epoch turnover does not
   dominate; and e.g. the 16-class store), each batch size, at bf16 + channels_last, with the loader at each thread
   count and with worker processes. 1.0 means the loader keeps the GPU fed.

On a CPU it runs as a smoke test with small settings (tests/test_bench.py); figures mean nothing there.

    python bench.py gpu --data data/synthetic_long --data2 data/s16
    python bench.py gpu --data data/s16 --device cpu --model squeezenet --size 32 --batch-sizes 16 --threads 1,2
"""
from __future__ import annotations

import argparse
import os
import threading
import time
from pathlib import Path

import numpy as np
import torch

import data_loader_rgb  # noqa: F401  (registers grey, rgb)
from benchmarks.bench_train import _tensor_batches, time_training
from qdraw.augment import Augment
from qdraw.dataset import BalancedBlockDataset
from qdraw.distributed import pick_device
from qdraw.loader import create_loader
from qdraw.produce import produce
from qdraw.render import InputSpec, make_render
from qdraw.store import Store


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="a prepared store with long epochs (>= 150 batches)")
    p.add_argument("--data2", default=None, help="a second store, e.g. the 16-class one (default: none)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda (default auto)")
    p.add_argument("--model", default="resnet34", help="model of the stall ratio (default resnet34)")
    p.add_argument("--size", type=int, default=128, help="image side in px (default 128)")
    p.add_argument("--encoding", default="rgb", help="encoding (default rgb)")
    p.add_argument("--batch-sizes", default="256,512", help="comma list (default 256,512)")
    p.add_argument("--kernel-threads", default="1,4,12", help="thread counts of the bare kernels (default 1,4,12)")
    p.add_argument("--threads", default="4,8,12,16", help="loader thread counts (default 4,8,12,16)")
    p.add_argument("--processes", type=int, default=8, help="worker processes of the processes backend, 0 to skip "
                   "(default 8)")
    p.add_argument("--steps", type=int, default=40, help="timed training steps per figure (default 40)")
    p.add_argument("--warmup", type=int, default=8, help="untimed steps first (default 8)")
    p.add_argument("--seconds", type=float, default=3.0, help="seconds of each bare-kernel timing (default 3)")


def machine() -> None:
    quota = "none found"
    for path, fmt in (("/sys/fs/cgroup/cpu.max", "v2"), ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "v1")):
        try:
            text = Path(path).read_text().split()
        except OSError:
            continue
        if fmt == "v2":
            quota = "unlimited" if text[0] == "max" else f"{int(text[0]) / int(text[1]):.1f} cores (cgroup v2)"
        else:
            period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
            quota = "unlimited" if int(text[0]) < 0 else f"{int(text[0]) / period:.1f} cores (cgroup v1)"
        break
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
    print(f"machine: {os.cpu_count()} cores, affinity {len(os.sched_getaffinity(0))}, CPU quota {quota}; torch "
          f"{torch.__version__}, {gpu}", flush=True)


def bare_kernels(store: Store, args: argparse.Namespace, threads: list[int], batch: int) -> None:
    """Images/s of the chunk producer in N plain threads, each drawing its own chunks of the store's epoch 0."""
    ds = BalancedBlockDataset(store, transform=Augment(hflip=0.5))
    render = make_render(InputSpec.raster(args.encoding, args.size))
    order = np.arange(len(ds))
    chunks = order[:len(order) // (4 * batch) * 4 * batch].reshape(-1, 4, batch)
    if not len(chunks):
        raise ValueError(f"{store.root}: an epoch of {len(ds)} drawings holds no chunk of 4 batches of {batch}")
    shape = (4, *render.batch_shape(batch))
    produce(ds, render, chunks[0], 0, np.empty(shape, np.uint8), np.empty((4, batch), np.int64))  # compile, open
    base = None
    for n in threads:
        stop, counts = threading.Event(), [0] * n

        def work(k: int) -> None:
            out, labels = np.empty(shape, np.uint8), np.empty((4, batch), np.int64)
            i = k
            while not stop.is_set():
                produce(ds, render, chunks[i % len(chunks)], 0, out, labels)
                counts[k] += 4 * batch
                i += n

        pool = [threading.Thread(target=work, args=(k,)) for k in range(n)]
        for t in pool:
            t.start()
        time.sleep(args.seconds / 4)
        start, t0 = sum(counts), time.perf_counter()
        time.sleep(args.seconds)
        rate = (sum(counts) - start) / (time.perf_counter() - t0)
        stop.set()
        for t in pool:
            t.join()
        base = base or rate
        print(f"kernels_t{n} {rate:.0f} images/s  ({rate / base:.2f}x one thread; {args.encoding} {args.size}px, "
              f"batch {batch})", flush=True)


def _loader_batches(store: Store, args: argparse.Namespace, batch: int, workers: int, backend: str):
    ds = BalancedBlockDataset(store, transform=Augment(hflip=0.5))
    loader = create_loader(ds, make_render(InputSpec.raster(args.encoding, args.size)), batch, True, workers,
                           backend=backend)

    def gen():
        epoch = 0
        while True:
            loader.set_epoch(epoch)
            yield from loader
            epoch += 1

    return gen(), loader, len(loader)


def stall_ratios(store: Store, args: argparse.Namespace, device: torch.device, batch: int,
                 threads: list[int]) -> None:
    cuda = device.type == "cuda"
    amp, cl = ("bf16", True) if cuda else ("none", False)
    targs = argparse.Namespace(model=args.model, size=args.size, batch_size=batch, steps=args.steps,
                               warmup=args.warmup)
    channels = make_render(InputSpec.raster(args.encoding, args.size)).encoding.channels
    tensors = time_training(targs, _tensor_batches(targs, store.num_classes, channels, device), store.num_classes,
                            channels, device, amp, cl, False)
    tag = f"{store.root.name} batch {batch}"
    print(f"stall {tag}: tensors {tensors:.0f} img/s ({'bf16 channels_last' if cuda else 'fp32'})", flush=True)
    for backend, n in [("threads", k) for k in threads] + ([("processes", args.processes)] if args.processes else []):
        batches, loader, per_epoch = _loader_batches(store, args, batch, n, backend)
        try:
            rate = time_training(targs, batches, store.num_classes, channels, device, amp, cl, False)
            print(f"stall {tag}: {backend} {n}: loader {rate:.0f} img/s, stall ratio {tensors / rate:.3f} "
                  f"({per_epoch} batches an epoch)", flush=True)
        finally:
            getattr(loader, "close", lambda: None)()


def run(args: argparse.Namespace) -> None:
    device = pick_device(args.device)
    sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    threads = [int(k) for k in args.threads.split(",") if k.strip()]
    if not sizes or min(sizes) < 1 or (threads and min(threads) < 1):
        raise ValueError("--batch-sizes and --threads need positive numbers")
    torch.backends.cudnn.benchmark = True
    machine()
    stores = [Store(args.data)] + ([Store(args.data2)] if args.data2 else [])
    bare_kernels(stores[0], args, [int(k) for k in args.kernel_threads.split(",") if k.strip()], sizes[0])
    for store in stores:
        for batch in sizes:
            stall_ratios(store, args, device, batch, threads)

