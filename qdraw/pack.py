"""Turn streams of drawings into .qdb blocks: validation, raw normalisation, the validation split, per-class packing.

The hot loop keeps Python work per drawing to a JSON parse, a structure check and a few list extends; number
conversion, range checks and raw normalisation run vectorised once per block (bounded memory: one block of drawings).
"""
from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Iterable

import numpy as np

from .readers import Row
from .store import Block, make_block, write_block
from .strokes import DrawingError, check_drawing, loads_drawing

_M64 = (1 << 64) - 1


def is_validation(key_id: int, val_every: int) -> bool:
    """True for the 1-in-val_every drawings of the validation split: a fixed hash of key_id (splitmix64 finaliser),
    so a drawing lands on the same side for raw and simplified data and on every rerun, whatever the file order."""
    z = (key_id + 0x9E3779B97F4A7C15) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return (z ^ (z >> 31)) % val_every == 0


class BlockBuilder:
    """Accumulates valid drawings of one kind ("simplified" | "raw") and emits Blocks; counts what it rejects."""

    def __init__(self, kind: str, skipped: Counter):
        self.kind, self.dims, self.skipped = kind, 3 if kind == "raw" else 2, skipped
        self._reset()

    def _reset(self) -> None:
        self.cols: list[list] = [[] for _ in range(self.dims)]
        self.stroke_lens: list[int] = []
        self.drawing_lens: list[int] = []
        self.meta: list[tuple[int, int, str, int]] = []

    def __len__(self) -> int:
        return len(self.drawing_lens)

    def add(self, row: Row, label: int) -> bool:
        """Add one row; False (and counted) when the drawing is malformed or of the other kind."""
        try:
            if isinstance(row.drawing, (str, bytes)):
                d = loads_drawing(row.drawing)  # parses and checks the structure
                dims = len(d[0])
            else:
                d = row.drawing
                dims = check_drawing(d)
        except DrawingError as exc:
            self.skipped[str(exc)] += 1
            return False
        if dims != self.dims:
            self.skipped["simplified drawing in a raw store" if dims == 2 else "raw drawing in a simplified store"] += 1
            return False
        for s in d:
            for col, axis in zip(self.cols, s):
                col.extend(axis)
            self.stroke_lens.append(len(s[0]))
        self.drawing_lens.append(len(d))
        self.meta.append((label, row.key_id, row.country, row.recognized))
        return True

    def build(self) -> Block | None:
        """Convert what was added into a Block (dropping drawings whose values are bad) and start afresh."""
        if not self.drawing_lens:
            return None
        dl = np.asarray(self.drawing_lens, np.int64)
        sl = np.asarray(self.stroke_lens, np.int64)
        pts_per_drawing = np.add.reduceat(sl, np.r_[0, np.cumsum(dl)[:-1]])
        cols, ok = self._convert(pts_per_drawing)
        starts = np.r_[0, np.cumsum(pts_per_drawing)[:-1]]
        x, y = cols[0], cols[1]
        if self.kind == "simplified":
            # Google's simplified drawings are integers in 0..255: anything else is corrupt, not rescaled.
            good = (x >= 0) & (x <= 255) & (y >= 0) & (y <= 255) & (x == np.round(x)) & (y == np.round(y))
            before = int(ok.sum())
            ok &= np.logical_and.reduceat(good, starts)
            self.skipped["coordinate outside 0..255 or fractional"] += before - int(ok.sum())
        else:
            # Google's first two simplification steps: align to the top-left, scale uniformly to a max of 255.
            x0, y0 = np.minimum.reduceat(x, starts), np.minimum.reduceat(y, starts)
            span = np.maximum(np.maximum.reduceat(x, starts) - x0, np.maximum.reduceat(y, starts) - y0)
            scale = np.repeat(255.0 / np.where(span > 0, span, 1.0), pts_per_drawing)
            x = (x - np.repeat(x0, pts_per_drawing)) * scale
            y = (y - np.repeat(y0, pts_per_drawing)) * scale
            t = cols[2] - np.repeat(np.minimum.reduceat(cols[2], starts), pts_per_drawing)
            # ms since the first point; clamp absurd values instead of wrapping int32.
            t = np.clip(t, 0, 2**31 - 1)
        keep_pts = np.repeat(ok, pts_per_drawing)
        keep_strokes = np.repeat(ok, dl)
        xy = np.column_stack([np.round(x[keep_pts]), np.round(y[keep_pts])]).astype(np.uint8)
        label, key, country, rec = zip(*self.meta) if self.meta else ((), (), (), ())
        country = [c.encode("ascii", "replace")[:2] for c in country]
        block = make_block(xy, t[keep_pts].astype(np.int32) if self.kind == "raw" else None,
                           sl[keep_strokes], dl[ok], np.asarray(label)[ok], np.asarray(key, np.int64)[ok],
                           np.asarray(country, "S2")[ok], np.asarray(rec)[ok])
        self._reset()
        return block if len(block) else None

    def _convert(self, pts_per_drawing: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        """Flat float64 columns and a per-drawing ok mask (finite numbers); slow path only when a value is not a number."""
        n = len(pts_per_drawing)
        try:
            cols = [np.array(c, dtype=np.float64) for c in self.cols]
            ok = np.ones(n, bool)
        except (TypeError, ValueError, OverflowError):
            cols = [np.zeros(len(c)) for c in self.cols]
            ok = np.ones(n, bool)
            start = 0
            for i, m in enumerate(pts_per_drawing):
                try:
                    for col, src in zip(cols, self.cols):
                        col[start:start + m] = np.array(src[start:start + m], dtype=np.float64)
                except (TypeError, ValueError, OverflowError):
                    ok[i] = False
                start += m
            self.skipped["non-numeric coordinate"] += int((~ok).sum())
        finite = np.ones(len(cols[0]), bool)
        for c in cols:
            finite &= np.isfinite(c) & (np.abs(c) < 1e9)
        starts = np.r_[0, np.cumsum(pts_per_drawing)[:-1]]
        fin = np.logical_and.reduceat(finite, starts)
        self.skipped["non-finite or huge coordinate"] += int((ok & ~fin).sum())
        ok &= fin
        for c in cols:
            c[~finite] = 0.0
        return cols, ok


def pack_rows(rows: Iterable[Row], kind: str, label_of, out_dir: Path, block_size: int, val_every: int,
              prefix_train: str = "train", prefix_val: str | None = "val", limit: int | None = None) -> dict:
    """Pack rows into ``<prefix>_<b:04d>.qdb`` blocks in out_dir; return counts (read, train, val, skipped reasons).

    label_of(row) gives the label or raises KeyError (counted as "unknown class"). With prefix_val=None every row goes
    to the train prefix (the test set).
    """
    skipped: Counter = Counter()
    split = {"train": BlockBuilder(kind, skipped), "val": BlockBuilder(kind, skipped)}
    written = {"train": [], "val": []}
    prefix = {"train": prefix_train, "val": prefix_val}
    read = 0

    def flush(name: str) -> None:
        block = split[name].build()
        if block is not None:
            write_block(out_dir / f"{prefix[name]}_{len(written[name]):04d}.qdb", block)
            written[name].append(len(block))

    for row in rows:
        if limit is not None and read >= limit:
            break
        read += 1
        if row.error:
            skipped[row.error] += 1
            continue
        try:
            label = label_of(row)
        except KeyError:
            skipped["unknown class"] += 1
            continue
        name = "val" if prefix_val and is_validation(row.key_id, val_every) else "train"
        if split[name].add(row, label) and len(split[name]) >= block_size:
            flush(name)
    flush("train")
    flush("val")
    return {"read": read, "train": written["train"], "val": written["val"],
            "skipped": {k: v for k, v in skipped.items() if v}}


def pack_class(path: Path, reader, kind: str, label: int, class_dir: Path, block_size: int, val_every: int,
               limit: int | None = None) -> dict:
    """Pack one per-class file into class_dir atomically: build in a temporary sibling folder, then rename it."""
    if (class_dir / "stats.json").is_file():
        return json.loads((class_dir / "stats.json").read_text()) | {"reused": True}
    tmp = class_dir.with_name(f".{class_dir.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    stats = pack_rows(reader(path), kind, lambda row: label, tmp, block_size, val_every, limit=limit)
    stats["source"] = str(path)
    (tmp / "stats.json").write_text(json.dumps(stats))
    shutil.rmtree(class_dir, ignore_errors=True)  # a folder without stats.json is from an older crash
    os.replace(tmp, class_dir)
    return stats
