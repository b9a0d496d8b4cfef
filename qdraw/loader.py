"""Loaders: a dataset's batches through a render stage (qdraw.render), drawn by threads (default) or processes.

Threads (:class:`ThreadLoader`): each thread draws a chunk of ``chunk`` batches in one compiled call that releases
the GIL (qdraw.produce), so it takes the GIL once per chunk, not ~9 times per batch, and leaves the training thread
alone. Training loaders keep drawing across epoch boundaries: epoch e + 1's batches (its sampler order and epoch
plan, pure functions of (seed, epoch)) are drawn while the training thread finishes epoch e, so nothing drains at
``set_epoch``; a different epoch than e + 1 (a resume, a repeated epoch) restarts the stream. Worker processes
(torch's DataLoader, ``backend="processes"``) spend their time moving pictures between processes instead: measured
on 2 cores (``python bench.py raster``) 2 worker processes delivered ~0.3-0.4x of one core's kernel rate while 2
threads delivered 1.5-1.7x (docs/BENCHMARKS.md).

Both backends give the same batches in the same order for a given (seed, epoch): the index order comes from the same
sampler (a DistributedSampler: one replica, or sharded by rank; drop_last in training) and every batch is a pure
function of its indices. An error in a thread (a damaged block: StoreError) is raised in the consumer. With
``pin_memory`` (default: when CUDA is available) chunks are drawn into page-locked memory from torch's caching host
allocator, which hands a block out again only after its tensors are freed and the asynchronous copies that read
them have finished; pictures and labels both, so both copy asynchronously. Without it chunks are drawn into a small
pool of reused arrays (page-faulting fresh 12 MB batches was the bottleneck of two threads), each reused only once
nothing outside the pool refers to it. Either way a batch stays valid for as long as the consumer holds it.
"""
from __future__ import annotations

import collections
import contextlib
import copy
import math
import os
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, SequentialSampler, get_worker_info

from .produce import produce
from .render import PointsRender, RasterRender, to_model_input  # noqa: F401  (to_model_input: the earlier home)

BACKENDS = ("threads", "processes")
# Batches per compiled call: the GIL is taken once per chunk. Medians of 15 rounds of bench.py raster's GIL probes
# (2 cores, rgb @128, batch 256, one loader thread): chunk 4 let a torch-op consumer keep 0.72 of its rate and the
# loader 0.51 beside a pure-Python one; chunk 8 0.91 and 0.75 (docs/BENCHMARKS.md). Costs chunk x (threads + 1)
# batches of buffers (prefetch); lower it with --chunk where memory is short.
CHUNK = 8


class _ForkGate:
    """A fork waits until no loader thread is drawing a chunk and holds new chunks back until it is done.

    A forked child (a DataLoader worker of ``backend="processes"``) inherits every lock as it was, and a lock held by a
    thread that does not exist in the child is never released there: a worker hung for good on llvmlite's lock, taken
    by a loader thread of the parent looking up a compiled kernel while training loaders drew ahead. Waiting costs at
    most one chunk (tens of ms); a chunk pays two uncontended lock operations."""

    def __init__(self):
        self._cond = threading.Condition()
        self._busy = 0

    @contextlib.contextmanager
    def drawing(self):
        with self._cond:  # held by a fork in progress: wait for it
            self._busy += 1
        try:
            yield
        finally:
            with self._cond:
                self._busy -= 1
                self._cond.notify_all()

    def before_fork(self) -> None:
        self._cond.acquire()  # held through the fork, so no chunk starts; wait() lets running ones finish
        self._cond.wait_for(lambda: self._busy == 0)

    def after_fork_in_parent(self) -> None:
        self._cond.release()


_GATE = _ForkGate()


def _after_fork_in_child() -> None:
    global _GATE
    _GATE = _ForkGate()  # the child has no loader threads; the parent's gate stays held in its copy


os.register_at_fork(before=lambda: _GATE.before_fork(), after_in_parent=lambda: _GATE.after_fork_in_parent(),
                    after_in_child=_after_fork_in_child)


def sampler_order(sampler, epoch: int) -> np.ndarray:
    """The indices a sampler gives in an epoch, without changing the sampler (a copy is set to that epoch)."""
    s = copy.copy(sampler)
    if hasattr(s, "set_epoch"):
        s.set_epoch(epoch)
    return np.fromiter(iter(s), np.int64)


class _ChunkPool:
    """Reusable (pictures, labels) chunk arrays: page-faulting a fresh 12.6 MB batch each time cost more than
    drawing it once two threads did it at once (measured on 2 cores, rgb at 128 px: two threads drew 58k images/s
    into fresh tensors, 120k into reused arrays). A pair is handed out again only when nothing outside the pool
    refers to either array (the consumer dropped every batch tensor viewing them); when all are in use a fresh pair
    is made."""

    def __init__(self, size: int):
        self.size, self.pairs = size, []

    def take(self, x_shape: tuple[int, ...], x_dtype: np.dtype, y_shape: tuple[int, ...]) -> tuple[np.ndarray, ...]:
        for pair in self.pairs:
            # references: the pair tuple and getrefcount's argument; anything more is a user
            if pair[0].shape == x_shape and sys.getrefcount(pair[0]) == 2 and sys.getrefcount(pair[1]) == 2:
                return pair
        pair = (np.empty(x_shape, x_dtype), np.empty(y_shape, np.int64))
        if len(self.pairs) < self.size:
            self.pairs.append(pair)
        return pair


class ThreadLoader:
    """Batches of a qdraw.dataset dataset, rendered by a pool of threads of this process (module docstring).

    Args:
        dataset: a qdraw.dataset dataset (``batch``, ``locator``, ``set_epoch``, ``len``).
        render: a qdraw.render stage (``batch_shape``, ``dtype``; called on a StrokeBatch).
        sampler: the index order of an epoch (``set_epoch`` is forwarded to a copy of it).
        batch_size, drop_last: as for a DataLoader.
        num_workers: drawing threads; 0 draws in the consumer's thread.
        prefetch: batches in flight at most (default chunk x (threads + 1)).
        pin_memory: draw into page-locked host memory (needs CUDA) for asynchronous copies to the device.
        chunk: batches per compiled call (default CHUNK).
        follow_epochs: after an epoch, go on drawing the next one (training); off for evaluation.
    """

    def __init__(self, dataset: Dataset, render: RasterRender | PointsRender, sampler: Sampler, batch_size: int,
                 drop_last: bool, num_workers: int = 2, prefetch: int | None = None, pin_memory: bool = False,
                 chunk: int | None = None, follow_epochs: bool = True):
        self.dataset, self.render, self.sampler = dataset, render, sampler
        self.batch_size, self.drop_last, self.num_workers = batch_size, drop_last, num_workers
        self.chunk = max(1, CHUNK if chunk is None else chunk)
        self.prefetch = max(self.chunk, self.chunk * (num_workers + 1) if prefetch is None else prefetch)
        self.pin_memory, self.follow_epochs = pin_memory, follow_epochs
        self._pool: ThreadPoolExecutor | None = None
        self._buffers = _ChunkPool(self.prefetch // self.chunk + 3)
        self._x_dtype = np.dtype(torch.empty(0, dtype=render.dtype).numpy().dtype)
        self._epoch = 0
        self._pending: collections.deque[tuple[int, int, Future]] = collections.deque()
        self._stream: Iterator | None = None
        self._next_start: int | None = None  # the epoch whose first chunk heads the pending queue, if any
        self._lock = threading.Lock()

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self._epoch = int(epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def _chunks(self, epoch: int, follow: bool) -> Iterator[tuple[int, np.ndarray]]:
        """(epoch, int64 (K, B) item indices) of each chunk from `epoch` on: rectangular chunks of <= chunk batches
        (a short last batch is a chunk of its own); the next epochs follow when follow."""
        while True:
            order = sampler_order(self.sampler, epoch)
            full = len(order) // self.batch_size
            if full == 0 and (self.drop_last or not len(order)):
                return  # an epoch without a batch: every epoch is
            for c in range(0, full, self.chunk):
                k = min(self.chunk, full - c)
                yield epoch, order[c * self.batch_size:(c + k) * self.batch_size].reshape(k, self.batch_size)
            if not self.drop_last and len(order) % self.batch_size:
                yield epoch, order[full * self.batch_size:][None]
            if not follow:
                return
            epoch += 1

    def _buffers_for(self, k: int, b: int) -> tuple[np.ndarray, np.ndarray, torch.Tensor, torch.Tensor]:
        """Where a chunk of k batches of b items is drawn (called in the consumer's thread, in order)."""
        shape = (k, *self.render.batch_shape(b))
        if self.pin_memory:
            # torch's caching host allocator reuses pinned blocks once their tensors are freed and the copies that
            # read them (recorded on their streams) are done: safe reuse with no bookkeeping here.
            x = torch.empty(shape, dtype=self.render.dtype, pin_memory=True)
            y = torch.empty((k, b), dtype=torch.int64, pin_memory=True)
            return x.numpy(), y.numpy(), x, y
        x_np, y_np = self._buffers.take(shape, self._x_dtype, (k, b))
        return x_np, y_np, torch.from_numpy(x_np), torch.from_numpy(y_np)

    def _draw(self, epoch: int, idx: np.ndarray, bufs: tuple) -> list[tuple[torch.Tensor, torch.Tensor]]:
        x_np, y_np, x, y = bufs
        with _GATE.drawing():
            produce(self.dataset, self.render, idx, epoch, x_np, y_np)
        return [(x[k], y[k]) for k in range(len(idx))]

    def _fill(self) -> None:
        """Submit chunks until `prefetch` batches are in flight."""
        while sum(len(p[1]) for p in self._pending) + self.chunk <= self.prefetch:
            item = next(self._stream, None)
            if item is None:
                return
            epoch, idx = item
            self._pending.append((epoch, idx, self._pool.submit(self._draw, epoch, idx,
                                                                self._buffers_for(*idx.shape))))

    def _restart(self, epoch: int) -> None:
        for _, _, fut in self._pending:
            fut.cancel()
        for _, _, fut in self._pending:  # a running chunk finishes into its own buffers; its result is dropped
            if not fut.cancelled():
                fut.exception()
        self._pending.clear()
        self._stream = self._chunks(epoch, self.follow_epochs)
        self._fill()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = self._epoch
        if self.num_workers == 0:
            for e, idx in self._chunks(epoch, follow=False):
                yield from self._draw(e, idx, self._buffers_for(*idx.shape))
            return
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.num_workers, thread_name_prefix="qdraw-loader")
        if self._next_start != epoch:
            self._restart(epoch)
        self._next_start = None  # until this epoch completes, the queue's head is no epoch's start
        while self._pending and self._pending[0][0] == epoch:
            _, _, fut = self._pending.popleft()
            batches = fut.result()
            self._fill()
            while batches:
                yield batches.pop(0)  # the consumer's reference alone then decides when a buffer is reused
        self._next_start = self._pending[0][0] if self._pending else None

    def close(self) -> None:
        for _, _, fut in self._pending:
            fut.cancel()
        self._pending.clear()
        self._next_start = None
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __del__(self) -> None:
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


def _shared_empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised tensor, in shared memory inside a DataLoader worker (as default_collate makes them):
    otherwise sending the batch to the main process copies it into shared memory first (measured 26k images/s
    instead of 32k through 2 workers at 128 px)."""
    if get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    n = math.prod(shape) * torch.empty(0, dtype=dtype).element_size()
    return torch.empty(0, dtype=dtype).set_(torch.UntypedStorage._new_shared(n)).view(shape)


class _Rendered(Dataset):
    """A dataset's batches rendered in a DataLoader worker: ``__getitems__`` returns (x, labels) of the current
    epoch, drawn by the same producer as the threads."""

    def __init__(self, dataset: Dataset, render: RasterRender | PointsRender):
        self.dataset, self.render = dataset, render

    def __len__(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        x = _shared_empty((1, *self.render.batch_shape(len(indices))), self.render.dtype)
        y = _shared_empty((1, len(indices)), torch.int64)
        produce(self.dataset, self.render, np.asarray([indices], np.int64), self.dataset.epoch, x.numpy(), y.numpy())
        return x[0], y[0]


class EpochLoader(DataLoader):
    """The worker-process backend: a DataLoader with ``set_epoch(epoch)`` (sampler shuffle and block choice)."""

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)
        self.dataset.set_epoch(epoch)


def pass_batch(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Collate for datasets whose __getitems__ already returns the batch."""
    return batch


def seed_worker(worker_id: int) -> None:
    """Seed NumPy's global generator per worker process (the datasets use none, but user transforms might)."""
    np.random.seed(torch.initial_seed() % 2**32)


def create_loader(dataset: Dataset, render: RasterRender | PointsRender, batch_size: int, is_training: bool,
                  num_workers: int, distributed: bool = False, seed: int = 0, pin_memory: bool | None = None,
                  backend: str = "threads", prefetch: int | None = None, indices: range | None = None,
                  chunk: int | None = None) -> ThreadLoader | EpochLoader:
    """A loader of rendered batches ``(x, labels)``; call ``loader.set_epoch(epoch)`` before each training epoch.

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
    if indices is not None and is_training:
        raise ValueError("indices selects an evaluation shard; training shards through the sampler")
    render.check_data(dataset.store.has_time, dataset.store.root)
    if distributed:
        sampler = DistributedSampler(dataset, shuffle=is_training, seed=seed)
    elif is_training:
        sampler = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=seed)
    else:
        sampler = list(indices) if indices is not None else SequentialSampler(dataset)
    pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
    if backend == "threads":
        return ThreadLoader(dataset, render, sampler, batch_size, drop_last=is_training, num_workers=num_workers,
                            prefetch=prefetch, pin_memory=pin_memory, chunk=chunk, follow_epochs=is_training)
    if num_workers > 0:  # compile (or load) the kernels once here: forked workers inherit them
        produce(dataset, render, np.zeros((1, 1), np.int64), 0,
                np.empty((1, *render.batch_shape(1)), np.dtype(torch.empty(0, dtype=render.dtype).numpy().dtype)),
                np.empty((1, 1), np.int64))
    return EpochLoader(_Rendered(dataset, render), batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                       collate_fn=pass_batch, pin_memory=pin_memory, drop_last=is_training,
                       persistent_workers=num_workers > 0, worker_init_fn=seed_worker,
                       prefetch_factor=None if num_workers == 0 else 2 if prefetch is None else max(
                           1, -(-prefetch // num_workers)),
                       generator=torch.Generator().manual_seed(seed))
