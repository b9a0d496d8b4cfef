"""Datasets over a prepared store: balanced epochs of whole blocks, batched rasterising (qdraw.loader feeds them).

Training (:class:`BalancedBlockDataset`): every epoch takes, for each class, ONE training block (chosen at random with
probability proportional to its size, so every drawing of a class has the same chance to be seen) and
``samples_per_class`` drawings from it: a random subset when the block is large enough, otherwise the whole block
repeated in fresh random orders until the count is reached (sampling a small block with replacement). The default
``samples_per_class`` is the smallest, over classes, of each class's largest block: the block size for a full store,
so a full block is never repeated; it does not depend on the epoch, so ``len()`` and DistributedSampler shards stay
fixed. The choice is a pure function of (seed, epoch), so resuming at epoch k reproduces epoch k exactly, on any rank
and in any worker. The horizontal-flip augmentation is a hash of (seed, epoch, index), so it does not depend on worker
count or batch composition either.

Pseudo-labels (``pseudo_share`` > 0): the store's pseudo-labelled drawings (qdraw.pseudo, ``STORE/pseudo/``) join
each epoch as extra sources after the classes, one pseudo block per class that has some, so that they make up
``pseudo_share`` of the epoch's items; the count is spread over classes in proportion to their pseudo-labelled
drawings. The classes' own plan is unchanged by them (each source draws from its own seeded stream).

Evaluation (:class:`SplitDataset`): the fixed validation split (class by class, optionally the first N of each class)
or the test split (labels -1 when unlabelled), in store order, optionally all flipped (test-time augmentation).

Batches: ``__getitems__(indices, out=None)`` gathers and rasterises the whole batch in compiled calls (which release
the GIL, so loader threads draw in parallel) and returns ``(uint8 (B, C, S, S), int64 (B,))``, drawn into ``out`` when
given (a reusable pinned buffer); :func:`qdraw.loader.create_loader` passes it through unchanged. Images stay uint8
until the device (4x less to copy) and are normalised there by :func:`qdraw.loader.to_model_input`. Datasets are
thread-safe: the threads of one loader share one dataset and its open blocks.

    loader = create_loader(BalancedBlockDataset(Store("data/st"), "rgb"), 256, True, num_workers=4)
    for epoch in range(start_epoch, epochs):
        loader.set_epoch(epoch)  # sampler shuffle and block choice, seen by persistent workers too
        for x, y in loader:
            x = to_model_input(x, device)
"""
from __future__ import annotations

import math
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from numba import njit
from torch.utils.data import Dataset, get_worker_info

from .encoding import check_time, get_encoding
from .raster import Sources, check_geometry, rasterize
from .store import Block, Store, StoreError, mix64

__all__ = ["BalancedBlockDataset", "SplitDataset", "epoch_plan", "flip_bits"]


def flip_bits(seed: int, epoch: int, index: np.ndarray) -> np.ndarray:
    """A fair coin per item, a pure function of (seed, epoch, index): bool array like index."""
    index = np.asarray(index, np.int64).astype(np.uint64)
    key = mix64(mix64(np.uint64(seed)) ^ np.uint64(epoch))  # one key per (seed, epoch), hashed once per batch
    return (mix64(key ^ index) >> np.uint64(63)).astype(bool)


@njit(cache=True, nogil=True)
def _locate(idx, offsets, picks, src, local):
    """Source and drawing within its block of each training item, in one compiled pass: the numpy calls it replaces
    held the GIL for ~2 % of a batch at 128 px (measured with perf_counter around each step), time in which the other
    loader thread could not start its next batch. False when an index is out of range."""
    for j in range(len(idx)):
        i = idx[j]
        if i < 0 or i >= offsets[-1]:
            return False
        c = np.searchsorted(offsets, i, side="right") - 1
        src[j], local[j] = c, picks[c, i - offsets[c]]
    return True


def default_samples_per_class(block_sizes: list[list[int]]) -> int:
    """The smallest, over classes, of each class's largest training block (see the module docstring)."""
    return min(max(sizes) for sizes in block_sizes)


def epoch_plan(block_sizes: list[list[int]], samples_per_class: int | list[int], seed: int,
               epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """The block chosen for each class and the drawings taken from it in that epoch.

    samples_per_class: one count for every class, or a count per class (natural sampling).

    Returns:
        int64 (K,) block index per class, and int32 (K, max count) drawing indices within that block (row c holds
        class c's count of them, the rest is padding).
    """
    counts = np.broadcast_to(np.asarray(samples_per_class, np.int64), (len(block_sizes),))
    blocks = np.zeros(len(block_sizes), np.int64)
    picks = np.zeros((len(block_sizes), int(counts.max())), np.int32)
    for c, sizes in enumerate(block_sizes):
        rng = np.random.default_rng([seed, epoch, c])
        w = np.asarray(sizes, np.float64)
        blocks[c] = rng.choice(len(sizes), p=w / w.sum())
        n, k = sizes[blocks[c]], int(counts[c])
        reps = -(-k // n)
        picks[c, :k] = np.concatenate([rng.permutation(n) for _ in range(reps)])[:k]
    return blocks, picks


def _new_batch(shape: tuple[int, ...]) -> torch.Tensor:
    """An uninitialised uint8 tensor (the kernel zeroes each image), in shared memory inside a DataLoader worker.

    Shared memory as default_collate does it: otherwise sending the batch to the main process copies it into shared
    memory first (measured 26k images/s instead of 32k through 2 workers at 128 px).
    """
    if get_worker_info() is None:
        return torch.empty(shape, dtype=torch.uint8)
    storage = torch.UntypedStorage._new_shared(math.prod(shape))
    return torch.empty(0, dtype=torch.uint8).set_(storage).view(shape)


class _RasterDataset(Dataset):
    """What both datasets share: the store, the encoding, the geometry and per-process block sources."""

    def __init__(self, store: Store | str | Path, encoding: str, image_size: int, line_width: int | None):
        self.store = store if isinstance(store, Store) else Store(store)
        self.encoding = get_encoding(encoding)
        check_time(self.encoding, self.store.has_time, self.store.root)
        self.image_size = int(image_size)
        self.line_width, self.margin = check_geometry(self.image_size, line_width)
        self._sources: tuple[object, Sources] | None = None  # (key, sources) opened lazily in each process
        self._lock = threading.Lock()  # loader threads share one dataset: open each epoch's blocks once

    def __getstate__(self) -> dict:
        # Memory maps and numba lists are opened again in each worker, never pickled (that would copy the data).
        return {k: v for k, v in self.__dict__.items() if k != "_lock"} | {"_sources": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _open(self, key: object, blocks: Callable[[], list[Block]]) -> Sources:
        """The sources for key (an epoch), from blocks() when key changed; one key's blocks are open at a time."""
        with self._lock:
            if self._sources is None or self._sources[0] != key:
                self._sources = None  # unmap the previous epoch's blocks first
                self._sources = (key, Sources(blocks()))
            return self._sources[1]

    def batch_shape(self, n: int) -> tuple[int, int, int, int]:
        """Shape of a batch of n images: (n, channels, size, size)."""
        return n, self.encoding.channels, self.image_size, self.image_size

    def _render(self, sources: Sources, src: np.ndarray, idx: np.ndarray, flip: np.ndarray | None,
                out: torch.Tensor | None) -> torch.Tensor:
        images = _new_batch(self.batch_shape(len(idx))) if out is None else out
        if tuple(images.shape) != self.batch_shape(len(idx)) or images.dtype != torch.uint8:
            raise ValueError(f"out must be uint8 {self.batch_shape(len(idx))}, got {images.dtype} {tuple(images.shape)}")
        xy, t, strokes, drawings = sources.gather(src, idx, with_time=self.encoding.needs_time)
        rasterize(xy, t, strokes, drawings, self.encoding, self.image_size, self.line_width, self.margin, flip,
                  out=images.numpy())
        return images

    def __getitems__(self, indices: list[int], out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        images, labels = self.__getitems__([i])
        return images[0], int(labels[0])

    def _check_indices(self, indices: list[int]) -> np.ndarray:
        idx = np.asarray(indices, np.int64).reshape(-1)
        if len(idx) and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"index out of range for a dataset of {len(self)}")
        return idx


class BalancedBlockDataset(_RasterDataset):
    """Training set: per epoch, one block per class and samples_per_class drawings of it (module docstring).

    Items are ``(uint8 tensor (C, S, S), label)``, class by class: with "balanced" class sampling index i belongs to
    class ``i // samples_per_class``; with "natural" sampling each class gives its largest block's count (a small
    store's whole class, so an epoch is every drawing once and classes keep their natural frequencies; the block
    size on the full set, where it is balanced again) and ``class_offsets`` says where each class starts.
    """

    def __init__(self, store: Store | str | Path, encoding: str, image_size: int = 128, line_width: int | None = None,
                 samples_per_class: int | None = None, seed: int = 0, hflip: bool = True,
                 class_sampling: str = "balanced", pseudo_share: float = 0.0):
        super().__init__(store, encoding, image_size, line_width)
        sizes = self.store.block_sizes()
        self.block_sizes = [list(sizes.get(c, [])) for c in range(self.store.num_classes)]
        empty = [self.store.classes[c] for c, s in enumerate(self.block_sizes) if sum(s) == 0]
        if empty:
            raise ValueError(f"{self.store.root}: no training drawings for class(es) {', '.join(empty[:5])}"
                             f"{' ...' if len(empty) > 5 else ''}; prepare the store with those classes left out")
        if samples_per_class is None:
            samples_per_class = default_samples_per_class(self.block_sizes)
        if samples_per_class < 1 or seed < 0:
            raise ValueError(f"samples_per_class must be >= 1 and seed >= 0, got {samples_per_class}, {seed}")
        if class_sampling not in ("balanced", "natural"):
            raise ValueError(f"class_sampling must be 'balanced' or 'natural', got {class_sampling!r}")
        self.samples_per_class, self.seed, self.hflip = int(samples_per_class), int(seed), bool(hflip)
        self.class_sampling = class_sampling
        self.counts = (np.array([max(s) for s in self.block_sizes], np.int64) if class_sampling == "natural"
                       else np.full(len(self.block_sizes), self.samples_per_class, np.int64))
        # Sources 0..K-1 are the classes' training blocks; K.. the pseudo-labelled blocks of source_labels[K:].
        self.num_sources = self.store.num_classes
        self.source_labels = np.arange(self.store.num_classes, dtype=np.int64)
        if pseudo_share:
            sizes, counts, labels = pseudo_sources(self.store, pseudo_share, int(self.counts.sum()))
            self.block_sizes += sizes
            self.counts = np.r_[self.counts, counts]
            self.source_labels = np.r_[self.source_labels, labels]
        self.class_offsets = np.r_[0, np.cumsum(self.counts)]
        self.pseudo_items = int(self.class_offsets[-1] - self.class_offsets[self.num_sources])
        # One shared-memory number: set_epoch in the main process is seen by persistent DataLoader workers.
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        self._plan: tuple[int, np.ndarray, np.ndarray] | None = None

    def __getstate__(self) -> dict:
        return super().__getstate__() | {"_plan": None}  # recomputed from (seed, epoch) where needed

    def __len__(self) -> int:
        return int(self.class_offsets[-1])

    @property
    def epoch(self) -> int:
        return int(self._epoch[0])

    def set_epoch(self, epoch: int) -> None:
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self._epoch[0] = int(epoch)

    def plan(self, epoch: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(block index per class, drawing indices per class) of an epoch (default: the current one)."""
        epoch = self.epoch if epoch is None else epoch
        plan = self._plan
        if plan is None or plan[0] != epoch:
            plan = self._plan = (epoch, *epoch_plan(self.block_sizes, self.counts.tolist(), self.seed, epoch))
        return plan[1], plan[2]

    def epoch_blocks(self, epoch: int | None = None) -> list[Block]:
        """The training block of each class in an epoch, memory-mapped; StoreError when disk and meta.json differ."""
        chosen, _ = self.plan(epoch)
        blocks = []
        for c, b in enumerate(chosen):
            files = (self.store.train_blocks(c) if c < self.num_sources
                     else self.store.pseudo_blocks(int(self.source_labels[c])))
            block = self.store.read_block(files[b]) if len(files) == len(self.block_sizes[c]) else None
            if block is None or len(block) != self.block_sizes[c][b]:
                raise StoreError(f"{self.store.class_dir(c)}: training blocks differ from meta.json; "
                                 f"re-run prepare_data.py")
            blocks.append(block)
        return blocks

    def __getitems__(self, indices: list[int], out: torch.Tensor | None = None,
                     epoch: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Images and labels of the given items of an epoch (default: the current one), drawn into out if given."""
        idx = np.asarray(indices, np.int64).reshape(-1)
        epoch = self.epoch if epoch is None else epoch
        _, picks = self.plan(epoch)
        sources = self._open(epoch, lambda: self.epoch_blocks(epoch))
        src, local = np.empty(len(idx), np.int64), np.empty(len(idx), np.int64)
        if not _locate(idx, self.class_offsets, picks, src, local):
            raise IndexError(f"index out of range for a dataset of {len(self)}")
        flip = flip_bits(self.seed, epoch, idx) if self.hflip else None
        images = self._render(sources, src, local, flip, out)
        return images, torch.from_numpy(self.source_labels[src])

    def is_pseudo(self, indices: list[int]) -> np.ndarray:
        """Bool array: which items are pseudo-labelled drawings (the source mark, kept through training)."""
        return self._check_indices(indices) >= self.class_offsets[self.num_sources]

    def item_keys(self, indices: list[int], epoch: int | None = None) -> np.ndarray:
        """key_ids int64 of the drawings behind the given items of an epoch (default: the current one)."""
        idx = self._check_indices(indices)
        epoch = self.epoch if epoch is None else epoch
        _, picks = self.plan(epoch)
        blocks = self.epoch_blocks(epoch)
        cls = np.searchsorted(self.class_offsets, idx, side="right") - 1
        local = picks[cls, idx - self.class_offsets[cls]]
        return np.array([blocks[c].key_id[i] for c, i in zip(cls.tolist(), local.tolist())], np.int64)


def pseudo_sources(store: Store, share: float, train_items: int) -> tuple[list[list[int]], np.ndarray, np.ndarray]:
    """Block sizes, per-epoch counts and labels of the pseudo-labelled sources that make up `share` of an epoch
    holding train_items training drawings (module docstring); ValueError when the store has none."""
    if not 0 < share < 1:
        raise ValueError(f"pseudo_share must be in [0, 1), got {share}")
    sizes = store.pseudo_block_sizes()
    if not sizes:
        raise ValueError(f"{store.root}: no pseudo-labelled drawings (STORE/pseudo); run pseudo_label.py first")
    labels = np.array(sorted(sizes), np.int64)
    have = np.array([sum(sizes[c]) for c in labels], np.float64)
    total = max(1, round(share / (1 - share) * train_items))
    # largest remainders: the counts sum to total exactly, so the share is what was asked for
    quota = total * have / have.sum()
    counts = np.floor(quota).astype(np.int64)
    counts[np.argsort(-(quota - counts), kind="stable")[:total - int(counts.sum())]] += 1
    used = counts > 0  # a class whose quota rounds to nothing this epoch gives no source
    return [list(sizes[c]) for c in labels[used]], counts[used], labels[used]


def _first_per_label(labels: np.ndarray, n: int) -> np.ndarray:
    """Mask keeping the first n items of each label value, in order."""
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    starts = np.r_[0, np.flatnonzero(sorted_labels[1:] != sorted_labels[:-1]) + 1]
    rank = np.arange(len(labels)) - np.repeat(starts, np.diff(np.r_[starts, len(labels)]))
    keep = np.zeros(len(labels), bool)
    keep[order[rank < n]] = True
    return keep


class SplitDataset(_RasterDataset):
    """Validation ("val") or test ("test") split in store order; ``key_ids`` and ``labels`` (int64, -1 when unlabelled)
    are aligned with the items. ``max_per_class`` keeps the first N drawings of each label; ``flip`` mirrors all."""

    def __init__(self, store: Store | str | Path, split: str, encoding: str, image_size: int = 128,
                 line_width: int | None = None, max_per_class: int | None = None, flip: bool = False):
        super().__init__(store, encoding, image_size, line_width)
        if split == "val":
            self.paths = [p for c in range(self.store.num_classes) for p in self.store.val_blocks(c)]
        elif split == "test":
            self.paths = self.store.test_blocks()
        else:
            raise ValueError(f"split must be 'val' or 'test', got {split!r}")
        if not self.paths:
            raise ValueError(f"{self.store.root}: no {split} split in this store")
        self.split, self.flip = split, bool(flip)
        src, local, labels, keys = [], [], [], []
        for i, path in enumerate(self.paths):
            block = self.store.read_block(path)
            src.append(np.full(len(block), i, np.int64))
            local.append(np.arange(len(block), dtype=np.int64))
            labels.append(np.asarray(block.label, np.int64))
            keys.append(np.asarray(block.key_id, np.int64))
        self._src, self._local = np.concatenate(src), np.concatenate(local)
        self.labels, self.key_ids = np.concatenate(labels), np.concatenate(keys)
        if max_per_class is not None:
            if max_per_class < 1:
                raise ValueError(f"max_per_class must be >= 1, got {max_per_class}")
            keep = _first_per_label(self.labels, max_per_class)
            self._src, self._local = self._src[keep], self._local[keep]
            self.labels, self.key_ids = self.labels[keep], self.key_ids[keep]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitems__(self, indices: list[int], out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Images and labels of the given items, drawn into out if given."""
        idx = self._check_indices(indices)
        sources = self._open(self.split, lambda: [self.store.read_block(p) for p in self.paths])
        flip = np.full(len(idx), self.flip) if self.flip else None
        images = self._render(sources, self._src[idx], self._local[idx], flip, out)
        return images, torch.from_numpy(self.labels[idx])
