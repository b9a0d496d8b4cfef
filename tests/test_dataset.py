"""Datasets and loaders over tiny hand-made stores: balanced epochs of one block per class, reproducibility,
resuming, DDP sharding, the fixed splits, the StrokeBatch protocol and the render stage, and a real-data store
prepared from ../shared when it is there.

Each hand-made drawing is dots only, drawn 1 px wide at 64 px: two corner dots fix the bounding box, block b adds
b + 1 dots on the top row and one dot marks the item, so an image's ink count is b + 4 whatever the flip: the block
an item came from can be read off the image the loader yields.
"""
from __future__ import annotations

import json
import os
import pickle
import re
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from qdraw.augment import Augment, flip_bits
from qdraw.batch import StrokeBatch
from qdraw.dataset import BalancedBlockDataset, SplitDataset, epoch_plan
from qdraw.loader import create_loader
from qdraw.raster import rasterize
from qdraw.render import InputSpec, make_render, to_model_input
from qdraw.store import FORMAT_VERSION, Block, Store, StoreError, make_block, read_block, write_block

SIZES = [[6, 6, 3], [6, 2], [7]]  # training blocks per class; default samples_per_class = min(6, 6, 7) = 6
VAL = [3, 0, 2]


def _block(c: int, b: int, n: int, raw: bool, label: int | None = None) -> Block:
    xy, t, stroke_lens, drawing_lens = [], [], [], []
    for i in range(n):
        dots = [(0, 0), (255, 255)] + [(40 * k + 40, 0) for k in range(b + 1)] + [(10 + 20 * (i % 12), 128)]
        xy += dots
        t += [100 * j for j in range(len(dots))]
        stroke_lens += [1] * len(dots)
        drawing_lens.append(len(dots))
    key = 1000 * (100 * c + b) + np.arange(n)
    return make_block(np.array(xy), np.array(t) if raw else None, np.array(stroke_lens), np.array(drawing_lens),
                      np.full(n, c if label is None else label), key, np.full(n, b"US"), np.ones(n))


def make_store(root: Path, raw: bool = False, test: bool = True) -> Store:
    """A store of 3 classes with SIZES training blocks, VAL validation drawings and a 5-drawing unlabelled test."""
    for c, sizes in enumerate(SIZES):
        d = root / "classes" / f"{c:03d}"
        d.mkdir(parents=True)
        for b, n in enumerate(sizes):
            write_block(d / f"train_{b:04d}.qdb", _block(c, b, n, raw))
        if VAL[c]:
            write_block(d / "val_0000.qdb", _block(c, 4, VAL[c], raw))
    if test:
        (root / "test").mkdir()
        write_block(root / "test" / "block_0000.qdb", _block(0, 5, 5, raw, label=-1))
    meta = {"version": FORMAT_VERSION, "kind": "raw" if raw else "simplified", "classes": ["a", "b", "c"],
            "train_block_sizes": {str(c): s for c, s in enumerate(SIZES)}}
    (root / "meta.json").write_text(json.dumps(meta))
    return Store(root)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return make_store(tmp_path / "st")


RGB64 = make_render(InputSpec.raster("rgb", 64, 1))


def dataset(store: Store, hflip: bool = True, **kw) -> BalancedBlockDataset:
    return BalancedBlockDataset(store, transform=Augment(hflip=0.5) if hflip else None, **kw)


def images(ds, indices, epoch: int | None = None, render=RGB64) -> tuple[torch.Tensor, torch.Tensor]:
    """Items rendered through the protocol: ds.batch (a StrokeBatch) then the render stage."""
    batch = ds.batch(indices, epoch)
    return torch.from_numpy(render(batch)), torch.from_numpy(batch.labels)


def mirrored(xy: np.ndarray) -> np.ndarray:
    """The points mirrored about their bounding box: x' = xmin + xmax - x."""
    out = xy.astype(np.int64)
    out[:, 0] = out[:, 0].min() + out[:, 0].max() - out[:, 0]
    return out.astype(np.uint8)


def expected(ds: BalancedBlockDataset, indices: list[int]) -> torch.Tensor:
    """The images of items indices, rasterised directly from the epoch plan with the flip coin (flip_bits) applied
    by hand (independent of the dataset's, the augment's and the loader's paths)."""
    blocks, picks = ds.plan()
    out = []
    for i in indices:
        c = int(np.searchsorted(ds.class_offsets, i, side="right")) - 1  # class_offsets: multiples of samples_per_class
        j = i - int(ds.class_offsets[c])  # when balanced, so (c, j) = divmod(i, samples_per_class)
        b = read_block(ds.store.train_blocks(c)[blocks[c]]).select([picks[c, j]])
        flip = ds.transform is not None and flip_bits(ds.seed, ds.epoch, np.array([i]))[0]
        out.append(rasterize(mirrored(b.xy) if flip else b.xy, b.t, b.strokes, b.drawings, "rgb", 64, 1)[0])
    return torch.from_numpy(np.stack(out))


def epoch_batches(loader, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader.set_epoch(epoch)
    return [(x.clone(), y.clone()) for x, y in loader]


def test_epoch_plan():
    blocks, picks = epoch_plan(SIZES, 6, seed=0, epoch=3)
    again = epoch_plan(SIZES, 6, seed=0, epoch=3)
    assert (blocks == again[0]).all() and (picks == again[1]).all()
    assert picks.shape == (3, 6) and picks.dtype == np.int64
    for c, sizes in enumerate(SIZES):
        n = sizes[blocks[c]]
        counts = np.bincount(picks[c], minlength=n)
        assert len(counts) == n and counts.min() >= 6 // n and counts.max() <= -(-6 // n)
    plans = [epoch_plan(SIZES, 6, 0, e)[0] for e in range(60)]
    assert {tuple(p) for p in plans} != {tuple(plans[0])}
    assert set(np.array(plans)[:, 0]) == {0, 1, 2}  # every block of class 0 comes up
    assert (epoch_plan(SIZES, 6, 1, 3)[1] != picks).any()


def test_items_match_direct_rasterisation(store):
    ds = dataset(store, seed=2)
    assert len(ds) == 18 and ds.samples_per_class == 6
    ds.set_epoch(1)
    batch = ds.__getitems__(list(range(18)))
    assert isinstance(batch, StrokeBatch) and batch.keys.tolist() == list(range(18)) and batch.t is None
    assert batch.labels.dtype == np.int64 and batch.labels.tolist() == [0] * 6 + [1] * 6 + [2] * 6
    x, y = images(ds, list(range(18)))
    assert x.dtype == torch.uint8 and x.shape == (18, 3, 64, 64)
    assert torch.equal(x, expected(ds, list(range(18))))
    one = ds[7]
    assert torch.equal(torch.from_numpy(RGB64(one))[0], x[7]) and one.labels.tolist() == [1] and len(one) == 1
    copy = pickle.loads(pickle.dumps(ds))  # what a spawned worker gets: no maps, no caches, same items
    assert not copy._blocks and not copy._locators and torch.equal(images(copy, [3, 17])[0], x[[3, 17]])
    assert flip_bits(2, 1, np.arange(18)).any() and not flip_bits(2, 1, np.arange(18)).all()
    for bad in ([18], [0, -1], [3, 2**40]):
        with pytest.raises(IndexError, match="index out of range for a dataset of 18"):
            ds.batch(bad)


def test_two_workers_one_block_per_class(store):
    ds = dataset(store, seed=1)
    loader = create_loader(ds, RGB64, 6, is_training=True, num_workers=2, seed=1)
    for epoch in (0, 1, 2):
        batches = epoch_batches(loader, epoch)
        x = torch.cat([b[0] for b in batches])
        y = torch.cat([b[1] for b in batches])
        assert x.shape == (18, 3, 64, 64) and x.dtype == torch.uint8
        assert Counter(y.tolist()) == {0: 6, 1: 6, 2: 6}
        block_of = (x.amax(1) > 0).flatten(1).sum(1) - 4  # ink count = block + 4
        blocks, _ = ds.plan(epoch)
        for c in range(3):
            assert set(block_of[y == c].tolist()) == {blocks[c]}
        # the sampler's order, rasterised in this process, is exactly what the workers sent
        sampler = DistributedSampler(ds, num_replicas=1, rank=0, shuffle=True, seed=1)
        sampler.set_epoch(epoch)
        assert torch.equal(x, expected(ds, list(sampler)))


def test_a_worker_forked_while_a_thread_holds_the_lock_still_draws(store):
    """A DataLoader worker forked while a loader thread of the parent holds the dataset's lock (a thread loader drawing
    ahead beside a processes loader hung the suite this way) gets a lock of its own and delivers its batch."""
    ds = dataset(store, seed=1)
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with ds._lock:
            held.set()
            release.wait(60)

    thread = threading.Thread(target=hold)
    thread.start()
    held.wait(10)
    try:  # the worker forks now, with the lock taken; without a fresh one it would wait forever (timeout: 20 s)
        loader = DataLoader(ds, batch_sampler=[[0, 4, 7]], num_workers=1, collate_fn=lambda b: b, timeout=20)
        got = next(iter(loader))
    finally:
        release.set()
        thread.join()
    ref = ds.batch([0, 4, 7])
    assert np.array_equal(got.labels, ref.labels) and np.array_equal(got.xy, ref.xy) and len(got) == 3


def test_a_fork_waits_for_the_chunk_a_loader_thread_is_drawing():
    """A fork (a DataLoader worker starting) waits for chunks in progress (qdraw.loader._GATE): a lock taken inside a
    chunk — llvmlite's, looking up a kernel, hung a worker of the suite for good — is free in the child. Without the
    gate the child inherits it taken and its acquire times out (exit 1)."""
    import qdraw.loader as loader_module

    lock, inside = threading.Lock(), threading.Event()

    def chunk() -> None:
        with loader_module._GATE.drawing(), lock:
            inside.set()
            time.sleep(0.3)

    thread = threading.Thread(target=chunk)
    thread.start()
    inside.wait(10)
    pid = os.fork()
    if pid == 0:  # the child: no pytest teardown, just the answer
        os._exit(0 if lock.acquire(timeout=5) else 1)
    _, status = os.waitpid(pid, 0)
    thread.join()
    assert os.waitstatus_to_exitcode(status) == 0


def test_same_seed_same_batches_and_resume(store):
    a = create_loader(dataset(store, seed=3), RGB64, 6, True, num_workers=2, seed=3)
    runs = [epoch_batches(a, e) for e in range(3)]
    b = create_loader(dataset(store, seed=3), RGB64, 6, True, num_workers=0, seed=3)
    resumed = epoch_batches(b, 2)  # set_epoch(2) straight away equals reaching epoch 2
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(runs[2], resumed))
    assert not all(torch.equal(p[0], q[0]) for p, q in zip(runs[1], runs[2]))
    other = epoch_batches(create_loader(dataset(store, seed=4), RGB64, 6, True, num_workers=0, seed=4), 2)
    assert not all(torch.equal(p[0], q[0]) for p, q in zip(other, resumed))


def test_distributed_shards_agree(store, tmp_path):
    seen = []
    for rank in (0, 1):
        ds = dataset(store, seed=5)  # each rank builds its own dataset
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=5)
        sampler.set_epoch(4)
        ds.set_epoch(4)
        idx = list(sampler)
        x, y = images(ds, idx)
        assert torch.equal(x, expected(ds, idx))
        seen.append(idx)
    assert sorted(seen[0] + seen[1]) == list(range(18))
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        loader = create_loader(dataset(store), RGB64, 6, True, num_workers=0, distributed=True)
        assert isinstance(loader.sampler, DistributedSampler) and len(loader) == 3
        assert sum(len(y) for _, y in epoch_batches(loader, 0)) == 18
    finally:
        torch.distributed.destroy_process_group()


def test_samples_per_class_above_block_size(store):
    ds = dataset(store, samples_per_class=20, hflip=False)
    assert len(ds) == 60
    blocks, picks = ds.plan()
    for c in range(3):
        n = SIZES[c][blocks[c]]
        assert set(picks[c].tolist()) == set(range(n))  # whole block used, then repeated
    x, _ = images(ds, list(range(60)))
    assert torch.equal(x, expected(ds, list(range(60))))


def test_split_datasets(store):
    val = SplitDataset(store, "val")
    assert len(val) == 5 and val.labels.tolist() == [0, 0, 0, 2, 2]
    assert val.key_ids.tolist() == [4000, 4001, 4002, 204000, 204001]
    x, y = images(val, [0, 4])
    assert y.tolist() == [0, 2] and x.shape == (2, 3, 64, 64)
    blk = read_block(store.val_blocks(2)[0])
    assert torch.equal(x[1], torch.from_numpy(rasterize(blk.xy, None, blk.strokes, blk.drawings, "rgb", 64, 1)[1]))
    tta = SplitDataset(store, "val", transform=Augment(hflip=1.0))  # the test-time flip: every drawing mirrored
    second = blk.select([1])
    assert torch.equal(images(tta, [4])[0][0], torch.from_numpy(
        rasterize(mirrored(second.xy), None, second.strokes, second.drawings, "rgb", 64, 1)[0]))
    capped = SplitDataset(store, "val", max_per_class=1)
    grey = make_render(InputSpec.raster("grey", 64))
    assert capped.labels.tolist() == [0, 2] and capped.key_ids.tolist() == [4000, 204000]
    assert images(capped, [1], render=grey)[0].shape == (1, 1, 64, 64)
    test = SplitDataset(store, "test")
    assert len(test) == 5 and (test.labels == -1).all()
    xs, ys = next(iter(create_loader(test, RGB64, 4, is_training=False, num_workers=0)))
    assert ys.tolist() == [-1] * 4 and xs.shape == (4, 3, 64, 64)
    with pytest.raises(ValueError, match="split"):
        SplitDataset(store, "train")


def test_time_encoding_needs_raw(store, tmp_path):
    time64 = make_render(InputSpec.raster("time", 64, 1))
    with pytest.raises(ValueError, match="simplified"):
        create_loader(dataset(store), time64, 4, True, 0)
    with pytest.raises(ValueError, match="simplified"):
        create_loader(SplitDataset(store, "val"), time64, 4, False, 0)
    raw = make_store(tmp_path / "raw", raw=True, test=False)
    ds = BalancedBlockDataset(raw)
    one = ds.batch([0])
    assert one.t.tolist() == [100 * j for j in range(len(one.xy))] and len(one.xy) >= 5  # raw: times carried
    x, _ = next(iter(create_loader(ds, time64, 2, True, 0)))
    assert x.shape == (2, 3, 64, 64) and x.min() == 0 and x.max() == 255
    # rgb on a raw store ignores t: the same images as the simplified store's
    assert torch.equal(images(BalancedBlockDataset(raw), [5])[0], images(dataset(store, hflip=False), [5])[0])
    with pytest.raises(ValueError, match="no test split"):
        SplitDataset(raw, "test")


def test_to_model_input():
    x = torch.tensor([[[[0, 51], [255, 102]]]], dtype=torch.uint8)
    y = to_model_input(x, "cpu", channels_last=True)
    assert y.dtype == torch.float32 and y.is_contiguous(memory_format=torch.channels_last)
    assert y.flatten().tolist() == pytest.approx([0.0, 0.2, 1.0, 0.4])


@pytest.fixture(scope="module")
def real_store(tmp_path_factory, shared_data: Path) -> Store:
    """Three real classes prepared from ../shared with small blocks (airplane and eye ~400 drawings, cat more)."""
    import prepare_data

    src = shared_data / "kaggle/train_simplified"

    out = tmp_path_factory.mktemp("real") / "st"
    prepare_data.main(prepare_data.get_args_parser().parse_args(
        ["--input", str(src), "--output", str(out), "--classes", "airplane,cat,eye", "--max-per-class", "400",
         "--block-size", "120", "--workers", "1", "--no-test"]))
    return Store(out)


@pytest.mark.slow
def test_real_store_loader(real_store):
    ds = BalancedBlockDataset(real_store, seed=0, transform=Augment(hflip=0.5))
    sizes = real_store.block_sizes()
    assert ds.samples_per_class == min(max(s) for s in sizes.values()) and len(ds) == 3 * ds.samples_per_class
    loader = create_loader(ds, make_render(InputSpec.raster("rgb", 64)), 40, is_training=True, num_workers=2, seed=0)
    batches = epoch_batches(loader, 1)
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    assert x.dtype == torch.uint8 and x.shape[1:] == (3, 64, 64) and len(x) == len(ds) // 40 * 40
    assert (x[:, 2].flatten(1).amax(1) == 255).all()  # every real drawing has ink
    sampler = DistributedSampler(ds, num_replicas=1, rank=0, shuffle=True, seed=0)
    sampler.set_epoch(1)
    order = list(sampler)[:len(x)]
    assert y.tolist() == [i // ds.samples_per_class for i in order]
    blocks, picks = ds.plan(1)
    first = [order[0], order[1]]
    for k, i in enumerate(first):
        c, j = divmod(i, ds.samples_per_class)
        b = read_block(real_store.train_blocks(c)[blocks[c]]).select([picks[c, j]])
        xy = mirrored(b.xy) if flip_bits(0, 1, np.array([i]))[0] else b.xy
        assert torch.equal(x[k], torch.from_numpy(rasterize(xy, None, b.strokes, b.drawings, "rgb", 64)[0]))
    val = SplitDataset(real_store, "val")
    assert sorted(set(val.labels.tolist())) == [0, 1, 2] and len(val) == sum(
        len(read_block(p)) for c in range(3) for p in real_store.val_blocks(c))


def test_bad_stores_and_arguments(store):
    with pytest.raises(ValueError, match="samples_per_class"):
        dataset(store, samples_per_class=0)
    meta = json.loads((store.root / "meta.json").read_text())
    meta["train_block_sizes"]["1"] = [6, 3]  # disk holds [6, 2]
    (store.root / "meta.json").write_text(json.dumps(meta))
    ds = dataset(Store(store.root), samples_per_class=2)
    with pytest.raises(StoreError, match="meta.json"):
        for epoch in range(20):  # until class 1 draws its second block
            ds.set_epoch(epoch)
            ds.batch([0])
    meta["train_block_sizes"]["1"] = []
    (store.root / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="no training drawings for class"):
        dataset(Store(store.root))


@pytest.mark.parametrize("is_training", [True, False])
def test_threads_give_the_process_loaders_batches(store, is_training):
    """The threaded loader (0, 1 or 2 threads, any prefetch, batches held or dropped) yields exactly the batches of
    torch's DataLoader with worker processes, in the same order, for a given seed and epoch."""
    ds = dataset(store, seed=5) if is_training else SplitDataset(store, "val")
    ref = create_loader(ds, RGB64, 4, is_training, num_workers=2, seed=5, backend="processes")
    for threads, prefetch, chunk in ((1, None, None), (2, 1, 1), (2, 5, 2), (0, None, 3)):
        loader = create_loader(ds, RGB64, 4, is_training, num_workers=threads, seed=5, prefetch=prefetch, chunk=chunk)
        for epoch in (0, 3):
            want, got = epoch_batches(ref, epoch), epoch_batches(loader, epoch)
            assert len(got) == len(want) == len(loader) and len(got) > 1
            for (xa, ya), (xb, yb) in zip(want, got):
                assert torch.equal(xa, xb) and torch.equal(ya, yb)
            held = [(x, y) for x, y in loader]  # kept without copying: no buffer may be drawn into again
            for (xa, ya), (xb, yb) in zip(got, held):
                assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert len(loader._buffers.pairs) <= loader.prefetch // loader.chunk + 3  # dropped chunks were reused


def test_thread_loader_shard_and_errors(store, tmp_path):
    """An evaluation shard by indices equals the same items drawn directly; a damaged block met in a loader thread
    is raised in the consumer with its own one-line message."""
    val = SplitDataset(store, "val")
    shard = range(1, len(val), 2)
    got = [x.clone() for x, _ in create_loader(val, RGB64, 2, False, num_workers=2, indices=shard)]
    assert torch.equal(torch.cat(got), images(val, list(shard))[0])
    bad = tmp_path / "bad"
    make_store(bad)
    path = bad / "classes" / "001" / "train_0000.qdb"
    data = bytearray(path.read_bytes())
    hlen = int.from_bytes(data[8:16], "little")
    data[16 + hlen + json.loads(bytes(data[16:16 + hlen]))["arrays"]["xy"]["offset"]] ^= 0xFF  # a point's x
    path.write_bytes(bytes(data))
    loader = create_loader(dataset(Store(bad)), RGB64, 4, True, num_workers=2)
    with pytest.raises(StoreError, match="train_0000.qdb"):
        for epoch in range(6):  # some epoch picks the damaged block of class 1
            epoch_batches(loader, epoch)


def test_natural_sampling_takes_every_class_at_its_size(store):
    """Natural class sampling: class c gives max(its block sizes) drawings an epoch (6, 6, 7 here), labels in class
    order, each drawing of the chosen block once when it fills the count."""
    ds = dataset(store, class_sampling="natural", hflip=False)
    assert len(ds) == 6 + 6 + 7 and ds.class_offsets.tolist() == [0, 6, 12, 19]
    ds.set_epoch(2)
    x, y = images(ds, list(range(len(ds))))
    assert y.tolist() == [0] * 6 + [1] * 6 + [2] * 7
    blocks, picks = ds.plan(2)
    assert sorted(picks[2, :7].tolist()) == list(range(7))  # class 2's one block of 7, every drawing once
    assert torch.equal(x, expected(ds, list(range(len(ds)))))
    with pytest.raises(ValueError, match="class_sampling"):
        dataset(store, class_sampling="uniform")


def test_bench_raster_draws_the_loaders_epoch(raw_store, capsys):
    """bench.py raster prints the kernel line and one line per loader; its kernel line draws exactly the drawings
    of the loaders' epoch 0 (so their ratio compares like with like)."""
    import argparse

    from benchmarks import bench_raster

    p = argparse.ArgumentParser()
    bench_raster.add_args(p)
    args = p.parse_args(["--data", str(raw_store), "--size", "64", "--drawings", "160", "--baseline-drawings", "8",
                         "--batch-size", "16", "--threads", "1,2", "--workers", "0", "--min-seconds", "0.2",
                         "--cycle-threads", "2",
                         "--probes", "0,1", "--probe-seconds", "0.2", "--probe-rounds", "1"])
    bench_raster.run(args)
    out = capsys.readouterr().out
    for label in ("raster_rgb_64 ", "pil_rgb_64 ", "loader_rgb_64_t1 ", "loader_rgb_64_t2 ", "loader_rgb_64_w0 ",
                  "loader_cycle_over_repeat_t2 ", "gil_torch_t1 consumer_keep ", "gil_python_t1 consumer_keep ",
                  "gil_torch_control consumer_keep "):
        assert label in out, out
    # every loader delivered within its window (a first call that compiles is waited for, not counted as 0 images/s)
    assert all(int(r) > 0 for r in re.findall(r"^loader_rgb_64_\w+ (\d+) images/s", out, re.M)), out
    ds = bench_raster._dataset(Store(raw_store), args)
    _, src, idx = bench_raster._epoch_items(ds, 0)
    _, picks = ds.plan(0)
    per_class = -(-160 // ds.store.num_classes)  # 6 classes: 27 each
    assert np.array_equal(np.bincount(src), ds.counts) and set(ds.counts) == {per_class}
    for c in range(ds.store.num_classes):  # the same drawings as the dataset's epoch 0, in another order
        assert np.array_equal(np.sort(idx[src == c]), np.sort(picks[c, :per_class]))
