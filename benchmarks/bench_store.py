"""`bench.py store`: what opening a block costs with the validation of qdraw.validate, on a full-size block.

A training epoch opens one block per class (340 for the Kaggle set), so the checks run 340 times per epoch. This
builds a block of ``--drawings`` drawings (the default block size, 10,000) by repeating the store's real drawings,
writes it with write_block (CRC-32 per array) and times, in one run: the bare memory-map and array views (what the
old reader did), the structural checks (offsets, labels, values), the CRC-32 comparison, and the whole read_block.
Figures are medians of ``--repeat`` opens with the file in the page cache (a cold read costs the disk time the epoch
pays anyway); nothing is asserted.

    python bench.py store --data data/kaggle_simplified
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from qdraw.store import Block, Store, concat_blocks, read_block, write_block
from qdraw.validate import check_block, check_checksums


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="prepared store folder (its drawings fill the test block)")
    p.add_argument("--drawings", type=int, default=10000, help="drawings in the timed block (default 10000)")
    p.add_argument("--repeat", type=int, default=20, help="timed opens; the median counts (default 20)")
    p.add_argument("--classes", type=int, default=340, help="blocks opened per epoch, for the per-epoch line "
                   "(default 340)")


def _full_block(store: Store, n: int) -> Block:
    """n drawings: the store's first training blocks, repeated as often as needed."""
    blocks, total = [], 0
    for c in range(store.num_classes):
        for path in store.train_blocks(c):
            b = store.read_block(path)
            blocks.append(b)
            total += len(b)
    if not total:
        raise ValueError(f"{store.root}: no training drawings")
    whole = concat_blocks(blocks)
    block = concat_blocks([whole] * -(-n // len(whole))).slice(0, n)
    block.label[:] = 0
    return block


def _median_ms(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def _bare_open(path: Path) -> dict:
    """The memory map and array views alone, no checks: the floor any reader pays."""
    with open(path, "rb") as f:
        f.read(8)
        hlen = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(hlen))
    raw = np.memmap(path, np.uint8, "r")
    out = {}
    for name, spec in header["arrays"].items():
        dt = np.dtype(spec["dtype"])
        a = 16 + hlen + spec["offset"]
        out[name] = raw[a:a + int(np.prod(spec["shape"])) * dt.itemsize].view(dt).reshape(spec["shape"])
    return out | {"header": header}


def run(args: argparse.Namespace) -> None:
    if args.drawings < 1 or args.repeat < 1 or args.classes < 1:
        raise ValueError("--drawings, --repeat and --classes must be >= 1")
    block = _full_block(Store(args.data), args.drawings)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train_0000.qdb"
        write_block(path, block)
        mb = path.stat().st_size / 2**20
        opened = _bare_open(path)
        header = opened.pop("header")
        opened.setdefault("t", None)
        bare = _median_ms(lambda: _bare_open(path), args.repeat)
        structure = _median_ms(lambda: check_block(**opened, path=path, label_is=0), args.repeat)
        crc = _median_ms(lambda: check_checksums(header, {k: v for k, v in opened.items() if v is not None}, path),
                         args.repeat)
        full = _median_ms(lambda: read_block(path, label_is=0), args.repeat)
        nocrc = _median_ms(lambda: read_block(path, label_is=0, verify=False), args.repeat)
    n_pts, n_strokes = len(block.xy), len(block.strokes) - 1
    print(f"store_block {args.drawings} drawings, {n_strokes} strokes, {n_pts} points, {mb:.1f} MB")
    print(f"store_open_bare {bare:.2f} ms  (memory map + views, no checks)")
    print(f"store_check_structure {structure:.2f} ms  (offsets, labels, values)")
    print(f"store_check_crc32 {crc:.2f} ms  ({mb / max(crc, 1e-9) * 1000:.0f} MB/s)")
    print(f"store_read_block {full:.2f} ms  (all checks; {nocrc:.2f} ms with verify=False)")
    print(f"store_epoch_overhead {args.classes * (full - bare) / 1000:.2f} s per epoch of {args.classes} blocks "
          f"({args.classes * (nocrc - bare) / 1000:.2f} s without CRC-32)")
