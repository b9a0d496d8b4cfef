"""Loaders for the datasets of qdraw.dataset: threads of the training process by default, worker processes on request.

Why threads: the rasteriser's kernels release the GIL (numba ``nogil=True``), so threads inside the training process
draw batches in parallel with no copy between processes. Worker processes (torch's DataLoader) spend their time
moving 49 KB images between processes instead: measured on 2 cores (``python bench.py raster``), 2 worker processes
delivered ~0.3-0.4x of one core's kernel rate while 2 threads deliver 1.5-1.7x (docs/BENCHMARKS.md has the figures).

Both backends give the same batches in the same order for a given (seed, epoch): the index order comes from the same
DistributedSampler (one replica, or sharded by rank when distributed; drop_last in training), batched by the same
BatchSampler, and every batch is a pure function of its indices. :class:`ThreadLoader` runs ``dataset.__getitems__``
for up to ``prefetch`` batches ahead in a pool of ``num_workers`` threads (0: in the caller's thread) and yields them
in order; an error in a thread (a damaged block: StoreError) is raised in the consumer with its own message. With
``pin_memory`` (default: when CUDA is available) batches are drawn straight into page-locked memory from torch's
caching host allocator, which hands a block out again only after its tensor is freed and the asynchronous copies
that read it have finished; without it they are drawn into a small pool of reused arrays (page-faulting fresh 12 MB
batches was the bottleneck of two threads), each reused only once nothing outside the pool refers to it. Either
way a batch stays valid for as long as the consumer holds it.
"""
from __future__ import annotations

import collections
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler, Sampler, SequentialSampler, Subset

from .dataset import _RasterDataset
from .raster import warm_up

BACKENDS = ("threads", "processes")


def to_model_input(x: torch.Tensor, device: torch.device | str, channels_last: bool = False) -> torch.Tensor:
    """uint8 (B, C, S, S) batch → float32 in [0, 1] on device (copied as uint8: 4x less to transfer)."""
    x = x.to(device, non_blocking=True).float().div_(255)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def pass_batch(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Collate for datasets whose __getitems__ already returns the batch."""
    return batch


def seed_worker(worker_id: int) -> None:
    """Seed NumPy's global generator per worker process (the datasets use none, but user transforms might)."""
    np.random.seed(torch.initial_seed() % 2**32)


class EpochLoader(DataLoader):
    """The worker-process backend: a DataLoader with ``set_epoch(epoch)`` (sampler shuffle and block choice)."""

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)


class _BufferPool:
    """Reusable uint8 batch arrays for the threads: page-faulting a fresh 12.6 MB batch each time costs more than
    drawing it once two threads do it at once (measured on 2 cores, rgb at 128 px: two threads drew 58k images/s
    into fresh tensors, 120k into reused arrays). An array is handed out again only when nothing outside the pool
    refers to it any more (the consumer dropped its tensor, and every view of it), so reuse is invisible to callers;
    when all are in use a fresh array is made."""

    def __init__(self, shape: tuple[int, ...], size: int):
        self.shape, self.size, self.arrays = shape, size, []

    def take(self) -> np.ndarray:
        for arr in self.arrays:
            # references: the list, this loop's name, getrefcount's argument; anything more is a user
            if sys.getrefcount(arr) == 3:
                return arr
        arr = np.empty(self.shape, np.uint8)
        if len(self.arrays) < self.size:
            self.arrays.append(arr)
        return arr


class ThreadLoader:
    """Batches of a raster dataset drawn by a pool of threads of this process (module docstring).

    Args:
        dataset: a qdraw.dataset dataset (``__getitems__(indices, out=None)``).
        sampler: the index order of an epoch (``set_epoch`` is forwarded to it).
        batch_size, drop_last: as for a DataLoader.
        num_workers: drawing threads; 0 draws in the consumer's thread.
        prefetch: batches in flight at most (default 2 per thread).
        pin_memory: draw into page-locked host memory (needs CUDA) for asynchronous copies to the device.
    """

    def __init__(self, dataset: _RasterDataset, sampler: Sampler, batch_size: int, drop_last: bool,
                 num_workers: int = 2, prefetch: int | None = None, pin_memory: bool = False):
        self.dataset, self.sampler = dataset, sampler
        self.batch_sampler = BatchSampler(sampler, batch_size, drop_last)
        self.batch_size, self.num_workers = batch_size, num_workers
        self.prefetch = max(1, 2 * num_workers if prefetch is None else prefetch)
        self.pin_memory = pin_memory
        self._pool: ThreadPoolExecutor | None = None
        self._buffers = _BufferPool(dataset.batch_shape(batch_size), self.prefetch + 3)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def _out(self, n: int) -> torch.Tensor:
        """Where the next batch of n images is drawn (called in the consumer's thread, in batch order)."""
        if self.pin_memory:
            # torch's caching host allocator reuses pinned blocks once the tensor is freed and the copies that
            # read it (recorded on their streams) are done: safe reuse with no bookkeeping here.
            return torch.empty(self.dataset.batch_shape(n), dtype=torch.uint8, pin_memory=True)
        return torch.from_numpy(self._buffers.take()[:n])

    def _fetch(self, indices: list[int], out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.dataset.__getitems__(indices, out=out)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        batches = iter(self.batch_sampler)
        if self.num_workers == 0:
            for indices in batches:
                yield self._fetch(indices, self._out(len(indices)))
            return
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.num_workers, thread_name_prefix="qdraw-loader")
        pending: collections.deque[Future] = collections.deque()

        def submit() -> None:
            indices = next(batches, None)
            if indices is not None:
                pending.append(self._pool.submit(self._fetch, indices, self._out(len(indices))))

        try:
            for _ in range(self.prefetch):
                submit()
            while pending:
                batch = pending.popleft().result()
                submit()
                yield batch
                del batch  # the consumer's reference alone decides when its buffer is drawn into again
        finally:  # the consumer stopped early or failed: let the threads finish before the next epoch starts
            for fut in pending:
                fut.cancel()
            for fut in pending:
                if not fut.cancelled():
                    fut.exception()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __del__(self) -> None:
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False)


def _raster_dataset(dataset: Dataset) -> _RasterDataset | None:
    inner = dataset
    while not isinstance(inner, _RasterDataset) and hasattr(inner, "dataset"):  # e.g. a Subset shard
        inner = inner.dataset
    return inner if isinstance(inner, _RasterDataset) else None


def create_loader(dataset: Dataset, batch_size: int, is_training: bool, num_workers: int, distributed: bool = False,
                  seed: int = 0, pin_memory: bool | None = None, backend: str = "threads",
                  prefetch: int | None = None, indices: range | None = None) -> ThreadLoader | EpochLoader:
    """A loader over one of qdraw.dataset's datasets; call ``loader.set_epoch(epoch)`` before each training epoch.

    Training shuffles with a DistributedSampler (seeded by seed + epoch; one replica unless distributed, then sharded
    by rank from torch.distributed) and drops the last incomplete batch; evaluation keeps order over ``indices``
    (default: all items; give a rank's shard, e.g. ``range(rank, n, world)``). ``backend`` "threads" (default) draws
    in ``num_workers`` threads of this process, "processes" in persistent, seeded DataLoader workers; both give the
    same batches. pin_memory defaults to CUDA being available.
    """
    if batch_size < 1 or num_workers < 0:
        raise ValueError(f"batch_size must be >= 1 and num_workers >= 0, got {batch_size}, {num_workers}")
    if backend not in BACKENDS:
        raise ValueError(f"loader backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if prefetch is not None and prefetch < 1:
        raise ValueError(f"prefetch must be >= 1 batch, got {prefetch}")
    if indices is not None:
        if is_training:
            raise ValueError("indices selects an evaluation shard; training shards through the sampler")
        dataset = Subset(dataset, indices) if backend == "processes" else dataset
    raster = _raster_dataset(dataset)
    if num_workers > 0 and raster is not None:
        warm_up(raster.encoding)  # compile once here: forked workers inherit it, threads share it
    if distributed:
        sampler = DistributedSampler(dataset, shuffle=is_training, seed=seed)
    elif is_training:
        sampler = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=seed)
    else:
        sampler = indices if (indices is not None and backend == "threads") else SequentialSampler(dataset)
    pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
    if backend == "threads":
        if raster is None or raster is not dataset:
            raise ValueError("the threads backend takes a qdraw.dataset dataset (use indices= for a shard)")
        return ThreadLoader(dataset, sampler, batch_size, drop_last=is_training, num_workers=num_workers,
                            prefetch=prefetch, pin_memory=pin_memory)
    return EpochLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                       collate_fn=pass_batch, pin_memory=pin_memory, drop_last=is_training,
                       persistent_workers=num_workers > 0, worker_init_fn=seed_worker,
                       prefetch_factor=None if num_workers == 0 else 2 if prefetch is None else max(
                           1, -(-prefetch // num_workers)),
                       generator=torch.Generator().manual_seed(seed))
