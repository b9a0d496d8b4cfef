"""The training epoch plan: which block of each class an epoch reads, and which drawings of it, in compiled code.

Every epoch takes, for each source (a class, or a class's pseudo-labelled drawings), ONE training block chosen at
random with probability proportional to its size (so every drawing of a class has the same chance to be seen) and
``count`` drawings from it: a random subset when the block is large enough, otherwise the whole block repeated in
fresh random orders until the count is reached. The plan is a pure function of (seed, epoch, sizes, counts), so
resuming at epoch k reproduces epoch k exactly, on any rank, in any thread or process.

Randomness is splitmix64's stream (qdraw.store.mix) from a key per (seed, epoch, source): the block is the first
whose cumulative size exceeds ``u * total`` (u the stream's first unit float), and each order is a Fisher-Yates
shuffle whose j-th swap partner is ``(h >> 32) * (j + 1) >> 32`` (Lemire's multiply-shift; its bias, below
n / 2**32, is nothing at block sizes). Why compiled and counter-based: numpy's generator per class
(``default_rng([seed, epoch, c])``) cost 29 ms an epoch for the 345 classes of the shared slice while the loader
draws those epochs (6 batches) in ~22 ms of one core, and the epoch plan held the GIL all that time; this kernel
plans them in well under a millisecond and releases the GIL. (Epoch plans made before this change used numpy's
generators, so the same (seed, epoch) picks other drawings than it did then; the distribution is the same.)
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .store import GAMMA, Store, mix

PLAN_SALT = np.uint64(0x5EED0F9A7E2B1C3D)  # keeps the plan's streams apart from the flips' (same seed, epoch)


@njit(cache=True, nogil=True)
def _plan_kernel(sizes, size_offsets, counts, seed, epoch, blocks, picks):
    key = mix(mix(np.uint64(seed) ^ PLAN_SALT) ^ np.uint64(epoch))
    for c in range(len(counts)):
        state = mix(key ^ np.uint64(c))
        a, e = size_offsets[c], size_offsets[c + 1]
        total = 0
        for b in range(a, e):
            total += sizes[b]
        target = np.float64(total) * (np.float64(mix(state) >> np.uint64(11)) * (1.0 / 9007199254740992.0))
        state += GAMMA
        run, chosen = 0, e - 1
        for b in range(a, e):
            run += sizes[b]
            if target < run:
                chosen = b
                break
        blocks[c] = chosen - a
        n, k = sizes[chosen], counts[c]
        order = np.empty(n, np.int64)
        done = 0
        while done < k:
            for j in range(n):
                order[j] = j
            for j in range(n - 1, 0, -1):  # Fisher-Yates
                h = mix(state)
                state += GAMMA
                r = np.int64(((h >> np.uint64(32)) * np.uint64(j + 1)) >> np.uint64(32))
                order[j], order[r] = order[r], order[j]
            take = min(n, k - done)
            picks[c, done:done + take] = order[:take]
            done += take


def epoch_plan(block_sizes: list[list[int]], samples_per_class: int | list[int], seed: int,
               epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """The block chosen for each source and the drawings taken from it in that epoch (module docstring).

    samples_per_class: one count for every source, or a count per source (natural sampling).

    Returns:
        int64 (K,) block index per source, and int64 (K, max count) drawing indices within that block (row c holds
        source c's count of them, the rest is padding).
    """
    counts = np.ascontiguousarray(np.broadcast_to(np.asarray(samples_per_class, np.int64), (len(block_sizes),)))
    if any(not s for s in block_sizes) or (counts < 0).any() or seed < 0 or epoch < 0:
        raise ValueError("every source needs a block, and counts, seed and epoch must be >= 0")
    sizes = np.asarray([n for s in block_sizes for n in s], np.int64)
    offsets = np.r_[0, np.cumsum([len(s) for s in block_sizes])].astype(np.int64)
    blocks = np.zeros(len(block_sizes), np.int64)
    picks = np.zeros((len(block_sizes), int(counts.max(initial=0))), np.int64)
    _plan_kernel(sizes, offsets, counts, int(seed), int(epoch), blocks, picks)
    return blocks, picks


def default_samples_per_class(block_sizes: list[list[int]]) -> int:
    """The smallest, over classes, of each class's largest training block: the block size on a full store, so a full
    block is never repeated; it does not depend on the epoch, so len() and DistributedSampler shards stay fixed."""
    return min(max(sizes) for sizes in block_sizes)


def pseudo_sources(store: Store, share: float, train_items: int) -> tuple[list[list[int]], np.ndarray, np.ndarray]:
    """Block sizes, per-epoch counts and labels of the pseudo-labelled sources that make up `share` of an epoch
    holding train_items training drawings; ValueError when the store has none.

    The count is spread over classes in proportion to their pseudo-labelled drawings (largest remainders, so the
    counts sum to the share exactly); a class whose quota rounds to nothing gives no source.
    """
    if not 0 < share < 1:
        raise ValueError(f"pseudo_share must be in [0, 1), got {share}")
    sizes = store.pseudo_block_sizes()
    if not sizes:
        raise ValueError(f"{store.root}: no pseudo-labelled drawings (STORE/pseudo); run pseudo_label.py first")
    labels = np.array(sorted(sizes), np.int64)
    have = np.array([sum(sizes[c]) for c in labels], np.float64)
    total = max(1, round(share / (1 - share) * train_items))
    quota = total * have / have.sum()
    counts = np.floor(quota).astype(np.int64)
    counts[np.argsort(-(quota - counts), kind="stable")[:total - int(counts.sum())]] += 1
    used = counts > 0
    return [list(sizes[c]) for c in labels[used]], counts[used], labels[used]
