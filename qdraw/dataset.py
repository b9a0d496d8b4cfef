"""Datasets over a prepared store: batches of packed strokes (qdraw.batch.StrokeBatch), for any render stage.

Training (:class:`BalancedBlockDataset`): every epoch takes, for each class, ONE training block and
``samples_per_class`` drawings from it (qdraw.sampling: a pure function of (seed, epoch)), so resuming at epoch k
reproduces epoch k exactly, on any rank, in any thread or process. The default ``samples_per_class`` is the smallest,
over classes, of each class's largest block (a full block is never repeated on a full store); it does not depend on
the epoch, so ``len()`` and DistributedSampler shards stay fixed. Pseudo-labels (``pseudo_share`` > 0): the store's
pseudo-labelled drawings (``STORE/pseudo/``) join each epoch as extra sources after the classes, making up
``pseudo_share`` of its items; the classes' own plan is unchanged by them.

Evaluation (:class:`SplitDataset`): the fixed validation split (class by class, optionally the first N of each class)
or the test split (labels -1 when unlabelled), in store order.

The protocol every loader accepts (qdraw.loader): ``len()``, ``set_epoch(epoch)``, ``batch(indices, epoch)`` →
StrokeBatch (also ``__getitems__(indices)`` for the current epoch, torch's batched-fetch hook), and ``locator(epoch)``
(where each item of an epoch lives, for the compiled producer of qdraw.produce). ``transform`` is a callable
``(batch, seed, epoch) -> batch`` applied after the gather: a qdraw.augment.Augment (the training flip and stroke
augmentations; for evaluation ``Augment(hflip=1.0)`` is the test-time flip), or any user function. Rendering is
not the dataset's job: qdraw.render turns a batch into pictures or point sequences.

Blocks are opened and validated (CRC included) once per dataset and kept memory-mapped (at most MAX_OPEN_BLOCKS, each
holds a file descriptor), an epoch's sources and plan are built once and cached, and the next epoch's are built by the
loader thread that reaches it first, under the dataset's lock: on the 345 classes of the shared slice re-opening and
re-validating every block at each epoch held the GIL for ~90 ms an epoch of 6 batches. Datasets are thread-safe.

    loader = create_loader(BalancedBlockDataset(Store("data/st"), transform=Augment(hflip=0.5)),
                           RasterRender(InputSpec.raster("rgb", 128)), 256, True, num_workers=4)
"""
from __future__ import annotations

import collections
import os
import resource
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .augment import flip_bits  # noqa: F401  (the flip coin, re-exported for callers of the earlier API)
from .batch import StrokeBatch
from .produce import locate
from .raster import Sources
from .sampling import default_samples_per_class, epoch_plan, pseudo_sources
from .store import Block, Store, StoreError

__all__ = ["BalancedBlockDataset", "Locator", "SplitDataset", "StrokeDataset", "epoch_plan"]

# Each open block is a memory map holding a file descriptor; stay well inside the process's limit (1024 on many
# desktops) while holding a few epochs of a full store's blocks (one per class an epoch).
MAX_OPEN_BLOCKS = max(64, min(2048, resource.getrlimit(resource.RLIMIT_NOFILE)[0] // 4))

_LIVE: weakref.WeakSet = weakref.WeakSet()  # every dataset of this process, for the fork hook below


def _after_fork_in_child() -> None:
    """Give each dataset a fresh lock in a forked child (a DataLoader worker): a loader thread of the parent may have
    held the lock at the fork, and no thread of the child would ever release it (a worker hung for good on
    ``locator`` in tests/test_augment.py). The caches are left as they were: forking happens under the GIL, so
    they are whole, and re-validating every block in each worker is what the cache avoids."""
    for ds in list(_LIVE):
        ds._lock = threading.RLock()


os.register_at_fork(after_in_child=_after_fork_in_child)


@dataclass
class Locator:
    """Where the items of an epoch live (qdraw.produce.locate): row r holds items offsets[r] .. offsets[r+1] - 1,
    reading drawings picks[r, :] of source row_src[r] of ``sources``, labelled row_label[r]. All int64."""

    offsets: np.ndarray
    picks: np.ndarray
    row_src: np.ndarray
    row_label: np.ndarray
    sources: Sources


class StrokeDataset(Dataset):
    """What the datasets share: the store, the transform, the block cache and the StrokeBatch protocol."""

    seed = 0

    def __init__(self, store: Store | str | Path, transform=None):
        self.store = store if isinstance(store, Store) else Store(store)
        self.transform = transform
        # One shared-memory number: set_epoch in the main process is seen by persistent DataLoader workers.
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        self._init_caches()
        _LIVE.add(self)

    def _init_caches(self) -> None:
        self._lock = threading.RLock()
        self._blocks: collections.OrderedDict[Path, Block] = collections.OrderedDict()
        self._sources: collections.OrderedDict[tuple, Sources] = collections.OrderedDict()
        self._locators: collections.OrderedDict[int, Locator] = collections.OrderedDict()

    def __getstate__(self) -> dict:
        # Memory maps, numba lists and locks are made again in each worker process, never pickled.
        return {k: v for k, v in self.__dict__.items() if k not in ("_lock", "_blocks", "_sources", "_locators")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._init_caches()
        _LIVE.add(self)

    @property
    def epoch(self) -> int:
        return int(self._epoch[0])

    def set_epoch(self, epoch: int) -> None:
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self._epoch[0] = int(epoch)

    def _block(self, path: Path) -> Block:
        """A block of the store, opened and validated once (LRU-cached, MAX_OPEN_BLOCKS at most)."""
        with self._lock:
            block = self._blocks.get(path)
            if block is None:
                block = self._blocks[path] = self.store.read_block(path)
                while len(self._blocks) > MAX_OPEN_BLOCKS:
                    self._blocks.popitem(last=False)
            self._blocks.move_to_end(path)
            return block

    def _sources_of(self, paths: tuple[Path, ...]) -> Sources:
        """Sources over these blocks, in order; the last few sets are kept (an epoch's and the next one's)."""
        with self._lock:
            sources = self._sources.get(paths)
            if sources is None:
                sources = self._sources[paths] = Sources([self._block(p) for p in paths])
                while len(self._sources) > 3:
                    self._sources.popitem(last=False)
            return sources

    def locator(self, epoch: int | None = None) -> Locator:
        """Where the items of an epoch (default: the current one) live; built once per epoch, under the lock."""
        epoch = self.epoch if epoch is None else int(epoch)
        with self._lock:
            loc = self._locators.get(epoch)
            if loc is None:
                loc = self._locators[epoch] = self._make_locator(epoch)
                while len(self._locators) > 3:
                    self._locators.popitem(last=False)
            return loc

    def _make_locator(self, epoch: int) -> Locator:
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError

    def batch(self, indices, epoch: int | None = None) -> StrokeBatch:
        """The items' packed strokes, labels and keys (their indices), transformed: one StrokeBatch."""
        epoch = self.epoch if epoch is None else int(epoch)
        idx = np.ascontiguousarray(np.asarray(indices, np.int64).reshape(-1))
        loc = self.locator(epoch)
        src, local, labels = (np.empty(len(idx), np.int64) for _ in range(3))
        if locate(idx, loc.offsets, loc.picks, loc.row_src, loc.row_label, src, local, labels):
            raise IndexError(f"index out of range for a dataset of {len(self)}")
        xy, t, strokes, drawings = loc.sources.gather(src, local, with_time=self.store.has_time)
        batch = StrokeBatch(xy, t, strokes, drawings, labels, idx)
        return batch if self.transform is None else self.transform(batch, self.seed, epoch)

    def __getitems__(self, indices: list[int]) -> StrokeBatch:
        return self.batch(indices)

    def __getitem__(self, i: int) -> StrokeBatch:
        return self.batch([i])

    def _check_indices(self, indices) -> np.ndarray:
        idx = np.asarray(indices, np.int64).reshape(-1)
        if len(idx) and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"index out of range for a dataset of {len(self)}")
        return idx


class BalancedBlockDataset(StrokeDataset):
    """Training set: per epoch, one block per class and samples_per_class drawings of it (module docstring).

    Items come class by class: with "balanced" class sampling index i belongs to class ``i // samples_per_class``;
    with "natural" sampling each class gives its largest block's count (a small store's whole class, so an epoch is
    every drawing once and classes keep their natural frequencies) and ``class_offsets`` says where each class starts.
    """

    def __init__(self, store: Store | str | Path, seed: int = 0, samples_per_class: int | None = None,
                 class_sampling: str = "balanced", pseudo_share: float = 0.0, transform=None):
        super().__init__(store, transform)
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
        self.samples_per_class, self.seed, self.class_sampling = int(samples_per_class), int(seed), class_sampling
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
        self.class_offsets = np.r_[0, np.cumsum(self.counts)].astype(np.int64)
        self.pseudo_items = int(self.class_offsets[-1] - self.class_offsets[self.num_sources])
        # Block files listed once (a glob per class per epoch cost ~17 ms an epoch on 345 classes), checked against
        # meta.json's counts; each block's own length is checked when it is first opened.
        self._files = [self.store.train_blocks(c) if c < self.num_sources
                       else self.store.pseudo_blocks(int(self.source_labels[c])) for c in range(len(self.counts))]
        for c, files in enumerate(self._files):
            if len(files) != len(self.block_sizes[c]):
                raise StoreError(f"{self.store.class_dir(c)}: training blocks differ from meta.json; "
                                 f"re-run prepare_data.py")

    def __len__(self) -> int:
        return int(self.class_offsets[-1])

    def plan(self, epoch: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(block index per source, drawing indices per source) of an epoch (default: the current one)."""
        epoch = self.epoch if epoch is None else epoch
        return epoch_plan(self.block_sizes, self.counts, self.seed, epoch)

    def epoch_blocks(self, epoch: int | None = None) -> list[Block]:
        """The training block of each source in an epoch, memory-mapped; StoreError when disk and meta.json differ."""
        chosen, _ = self.plan(epoch)
        blocks = []
        for c, b in enumerate(chosen):
            block = self._block(self._files[c][b])
            if len(block) != self.block_sizes[c][b]:
                raise StoreError(f"{self.store.class_dir(c)}: training blocks differ from meta.json; "
                                 f"re-run prepare_data.py")
            blocks.append(block)
        return blocks

    def _make_locator(self, epoch: int) -> Locator:
        chosen, picks = self.plan(epoch)
        self.epoch_blocks(epoch)  # opens and checks them
        sources = self._sources_of(tuple(self._files[c][b] for c, b in enumerate(chosen)))
        return Locator(self.class_offsets, picks, np.arange(len(chosen), dtype=np.int64), self.source_labels, sources)

    def is_pseudo(self, indices) -> np.ndarray:
        """Bool array: which items are pseudo-labelled drawings (the source mark, kept through training)."""
        return self._check_indices(indices) >= self.class_offsets[self.num_sources]

    def item_keys(self, indices, epoch: int | None = None) -> np.ndarray:
        """key_ids int64 of the drawings behind the given items of an epoch (default: the current one)."""
        idx = self._check_indices(indices)
        epoch = self.epoch if epoch is None else epoch
        _, picks = self.plan(epoch)
        blocks = self.epoch_blocks(epoch)
        cls = np.searchsorted(self.class_offsets, idx, side="right") - 1
        local = picks[cls, idx - self.class_offsets[cls]]
        return np.array([blocks[c].key_id[i] for c, i in zip(cls.tolist(), local.tolist())], np.int64)


def _first_per_label(labels: np.ndarray, n: int) -> np.ndarray:
    """Mask keeping the first n items of each label value, in order."""
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    starts = np.r_[0, np.flatnonzero(sorted_labels[1:] != sorted_labels[:-1]) + 1]
    rank = np.arange(len(labels)) - np.repeat(starts, np.diff(np.r_[starts, len(labels)]))
    keep = np.zeros(len(labels), bool)
    keep[order[rank < n]] = True
    return keep


class SplitDataset(StrokeDataset):
    """Validation ("val") or test ("test") split in store order; ``key_ids`` and ``labels`` (int64, -1 when unlabelled)
    are aligned with the items. ``max_per_class`` keeps the first N drawings of each label. The epoch changes
    nothing (the transform still sees it: a random transform would draw anew)."""

    def __init__(self, store: Store | str | Path, split: str, max_per_class: int | None = None, transform=None):
        super().__init__(store, transform)
        if split == "val":
            self.paths = [p for c in range(self.store.num_classes) for p in self.store.val_blocks(c)]
        elif split == "test":
            self.paths = self.store.test_blocks()
        else:
            raise ValueError(f"split must be 'val' or 'test', got {split!r}")
        if not self.paths:
            raise ValueError(f"{self.store.root}: no {split} split in this store")
        self.split = split
        src, local, labels, keys = [], [], [], []
        for i, path in enumerate(self.paths):
            block = self._block(path)
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

    def _make_locator(self, epoch: int) -> Locator:
        # one row per drawing: the same for every epoch
        return Locator(np.arange(len(self) + 1, dtype=np.int64), self._local[:, None].copy(), self._src, self.labels,
                       self._sources_of(tuple(self.paths)))
