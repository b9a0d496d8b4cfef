"""Turn input files into .qdb blocks: chunked fast parsing, validation, raw normalisation, the validation split.

Text files (ndjson, Kaggle CSV, either gzip-compressed or not) are parsed here; Google's binary files and Sketch-RNN
files have their own chunk readers (qdraw.binfmt, qdraw.sketchrnn) that yield the same Blocks. A file is read in
chunks of a few MB. qdraw.fastparse parses every row of a chunk into flat arrays in one call; the
rare row it does not accept is re-read with orjson (qdraw.readers / qdraw.strokes), which has the final word. Checks
and Google's raw normalisation then run vectorised per chunk, and drawings are routed to the train or validation
builder, which writes a block whenever it holds block_size drawings: memory stays bounded by a chunk plus two blocks.
"""
from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from . import fastparse
from .atomic import atomic_dir, write_text
from .binfmt import BinParser
from .formats import class_name, read_chunks
from .readers import TEST_COLUMNS, TRAIN_COLUMNS, Row, csv_columns, kaggle_row, ndjson_row, split_csv_line
from .sketchrnn import NpzParser
from .store import Block, concat_blocks, make_block, mix64, write_block
from .strokes import DrawingError, check_drawing, loads_drawing, to_arrays

CHUNK_BYTES = 4 << 20
_M64 = np.uint64((1 << 64) - 1)


def is_validation(key_ids: np.ndarray, val_every: int) -> np.ndarray:
    """Mask of the 1-in-val_every validation drawings: a fixed hash of key_id (splitmix64), so a drawing lands on
    the same side for raw and simplified data and on every rerun, whatever the file order."""
    return mix64(np.asarray(key_ids, np.int64).astype(np.uint64)) % np.uint64(val_every) == 0


def normalise(x: np.ndarray, y: np.ndarray, t: np.ndarray | None, pts: np.ndarray, kind: str, skipped: Counter,
              rows_ok: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Check values and map drawings into the store's frame; return (xy uint8, t int32 | None, ok per drawing).

    pts: points per drawing; rows_ok: drawings already rejected for another reason (not counted again). Simplified
    drawings must already be integers in 0..255 (anything else is corrupt, not rescaled); raw drawings get Google's
    first two simplification steps: align to the top-left, scale uniformly to a max of 255, and times start at 0.
    Non-finite or huge (|v| >= 1e9) values reject their drawing. One compiled pass (qdraw.fastparse.normalise_rows).
    """
    raw = kind == "raw"
    n_pts = len(x)
    xy = np.zeros((n_pts, 2), np.uint8)
    t_out = np.zeros(n_pts, np.int32)
    status = np.zeros(len(pts), np.int8)
    ok_in = np.ones(len(pts), bool) if rows_ok is None else np.asarray(rows_ok, bool)
    fastparse.normalise_rows(np.ascontiguousarray(x, np.float64), np.ascontiguousarray(y, np.float64),
                             np.ascontiguousarray(t if raw else np.zeros(n_pts), np.float64),
                             np.asarray(pts, np.int64), ok_in, raw, xy, t_out, status)
    skipped["non-finite or huge coordinate"] += int((status == 2).sum())
    if not raw:
        skipped["coordinate outside 0..255 or fractional"] += int((status == 3).sum())
    return xy, (t_out if raw else None), status == 0


def points_per_drawing(stroke_lens: np.ndarray, nstrokes: np.ndarray) -> np.ndarray:
    """Points of each drawing from points per stroke and strokes per drawing (drawings may have no strokes)."""
    cum_pts = np.r_[0, np.cumsum(stroke_lens, dtype=np.int64)]
    cum_strokes = np.r_[0, np.cumsum(nstrokes, dtype=np.int64)]
    return cum_pts[cum_strokes[1:]] - cum_pts[cum_strokes[:-1]]


class _Parser:
    """Chunked reading of one file in one format; yields Blocks of the valid drawings of each chunk."""

    def __init__(self, path: Path, fmt: str, kind: str, skipped: Counter):
        self.path, self.fmt, self.kind, self.skipped = Path(path), fmt, kind, skipped
        self.cols = np.full(5, -1, np.int64)
        self.header = None
        self.rows_read = 0

    def _csv_header(self, line: bytes) -> None:
        self.header = line.decode("utf-8", "replace").rstrip("\r\n")
        names = next(csv.reader([self.header]))
        idx = csv_columns(names, TRAIN_COLUMNS if self.fmt == "kaggle_train" else TEST_COLUMNS, self.path)
        self.cols[:] = [idx["drawing"], idx["key_id"], idx["countrycode"], idx.get("recognized", -1), len(names)]

    def chunks(self, limit: int | None) -> Iterator[Block]:
        """Valid drawings of each chunk of the file (at most limit rows read), label 0; counts every rejection.

        The file may be gzip-compressed (qdraw.formats.read_chunks decides by its first bytes)."""
        rest = b""
        pieces = read_chunks(self.path, CHUNK_BYTES)
        while limit is None or self.rows_read < limit:
            data = next(pieces, b"")
            buf = rest + data
            if not data:
                if buf.strip():
                    buf += b"\n"  # a last line without newline
                else:
                    break
            cut = buf.rfind(b"\n") + 1
            buf, rest = buf[:cut], buf[cut:]
            if self.header is None and self.fmt != "ndjson" and buf:
                first = buf.find(b"\n") + 1
                self._csv_header(buf[:first])
                buf = buf[first:]
            if buf:
                yield self._parse(buf, limit)
            if not data:
                break

    def _parse(self, data: bytes, limit: int | None) -> Block:
        buf = np.frombuffer(data, np.uint8)
        ends = np.flatnonzero(buf == 10)
        starts = np.r_[0, ends[:-1] + 1]
        blank = ends - starts <= 0
        for i in np.flatnonzero(ends - starts <= 8):  # whitespace-only lines, like readers.py skips
            blank[i] = not data[starts[i]:ends[i]].strip()
        if blank.any():  # blank lines are no rows at all (ndjson files often end with one)
            starts, ends = starts[~blank], ends[~blank]
        if limit is not None:
            starts, ends = starts[:limit - self.rows_read], ends[:limit - self.rows_read]
        self.rows_read += len(starts)
        n, cap = len(starts), len(data) // 2 + 1
        vals = np.zeros((3, cap))
        slen = np.empty(cap // 2 + 1, np.int64)
        nstrokes, dims = np.zeros(n, np.int32), np.zeros(n, np.int8)
        key, country = np.zeros(n, np.int64), np.zeros((n, 2), np.uint8)
        rec, status = np.zeros(n, np.int8), np.zeros(n, np.int8)
        fmt = fastparse.FMT_NDJSON if self.fmt == "ndjson" else fastparse.FMT_CSV
        p, s = fastparse.parse_rows(buf, starts, ends, fmt, self.cols, vals, slen, nstrokes, dims, key, country, rec,
                                    status)
        xs, ys, ts = vals
        want = 3 if self.kind == "raw" else 2
        ok = status == fastparse.OK
        wrong = ok & (dims != want)
        self.skipped["raw drawing in a simplified store" if want == 2 else "simplified drawing in a raw store"] += \
            int(wrong.sum())
        pts_per_stroke = slen[:s]
        pts = points_per_drawing(pts_per_stroke, nstrokes)
        xy, t, good = normalise(xs[:p], ys[:p], ts[:p] if want == 3 else None, pts, self.kind, self.skipped,
                                ok & ~wrong)
        countries = country.view("S2").ravel()
        block = make_block(xy, t, pts_per_stroke, nstrokes, np.zeros(n, np.int16), key, countries, rec)
        keep = np.flatnonzero(good & ok & ~wrong)
        rejected = np.flatnonzero(~ok)
        if not len(rejected):
            return block if len(keep) == n else block.select(keep)
        fb_block, fb_kept = self._fallback([data[starts[r]:ends[r]] for r in rejected])
        # keep file order: merge the fast rows and the re-read rows by their row number
        order = np.argsort(np.r_[keep, rejected[fb_kept]], kind="stable")
        return concat_blocks([block.select(keep), fb_block]).select(order)

    def _fallback(self, lines: list[bytes]) -> tuple[Block, np.ndarray]:
        """Re-read rows the fast parser did not accept with the orjson path; count the truly bad ones.

        Returns the block of good rows and their positions in lines.
        """
        text = [ln.decode("utf-8", "replace") for ln in lines]
        if self.fmt == "ndjson":
            rows = [ndjson_row(t) for t in text]
        else:
            cols = csv_columns(next(csv.reader([self.header])), TEST_COLUMNS)
            rows = [kaggle_row(cols, split_csv_line(t)) for t in text]
        return rows_to_block(rows, self.kind, self.skipped)


def rows_to_block(rows: list[Row], kind: str, skipped: Counter) -> tuple[Block, np.ndarray]:
    """The orjson path: validate Row objects one by one and pack the good ones into a Block (label 0).

    Returns the block and the positions in rows of the drawings it holds.
    """
    want = 3 if kind == "raw" else 2
    cols, slens, nstrokes, meta, pos = [[], [], []], [], [], [], []
    for i, row in enumerate(rows):
        if row.error:
            skipped[row.error] += 1
            continue
        try:
            d = loads_drawing(row.drawing) if isinstance(row.drawing, (str, bytes)) else row.drawing
            if check_drawing(d) != want:
                skipped["simplified drawing in a raw store" if want == 3 else "raw drawing in a simplified store"] += 1
                continue
            arrays = to_arrays(d)
        except DrawingError as exc:
            skipped[str(exc)] += 1
            continue
        for a in arrays:
            for j in range(want):
                cols[j].append(a[:, j])
            slens.append(len(a))
        nstrokes.append(len(arrays))
        pos.append(i)
        meta.append((row.key_id, row.country.encode("ascii", "replace")[:2], row.recognized))
    flat = [np.concatenate(c) if c else np.zeros(0) for c in cols]
    slens_a = np.asarray(slens, np.int64)
    ns = np.asarray(nstrokes, np.int64)
    pts = points_per_drawing(slens_a, ns)
    xy, t, good = normalise(flat[0], flat[1], flat[2] if want == 3 else None, pts, kind, skipped)
    key, country, rec = zip(*meta) if meta else ((), (), ())
    block = make_block(xy, t, slens_a, ns, np.zeros(len(ns), np.int16), np.asarray(key, np.int64),
                       np.asarray(country, "S2"), np.asarray(rec, np.int8))
    return block.select(np.flatnonzero(good)), np.asarray(pos, np.int64)[good]


class _Writer:
    """Collects drawings of one split and writes ``<prefix>_<b:04d>.qdb`` whenever block_size are held."""

    def __init__(self, out_dir: Path, prefix: str, block_size: int):
        self.out_dir, self.prefix, self.block_size = out_dir, prefix, block_size
        self.pending: list[Block] = []
        self.held = 0
        self.sizes: list[int] = []

    def add(self, block: Block) -> None:
        if len(block):
            self.pending.append(block)
            self.held += len(block)
        while self.held >= self.block_size:
            self._write(self.block_size)

    def close(self) -> list[int]:
        if self.held:
            self._write(self.held)
        return self.sizes

    def _write(self, n: int) -> None:
        allb = self.pending[0] if len(self.pending) == 1 else concat_blocks(self.pending)
        write_block(self.out_dir / f"{self.prefix}_{len(self.sizes):04d}.qdb", allb.slice(0, n))
        self.sizes.append(n)
        rest = allb.slice(n, len(allb))
        self.pending, self.held = ([rest] if len(rest) else []), len(rest)


def _chunks(path: Path, fmt: str, kind: str, skipped: Counter, limit: int | None):
    """The reader of one format: (its row counter, an iterator of (chunk Block, the file's split or None))."""
    if fmt == "npz":
        parser = NpzParser(path, class_name(path), skipped)
        return parser, parser.chunks(limit)
    parser = BinParser(path, skipped) if fmt == "bin" else _Parser(path, fmt, kind, skipped)
    return parser, ((block, None) for block in parser.chunks(limit))


def pack_file(path: Path, fmt: str, kind: str, label_of: Callable[[Block], np.ndarray], out_dir: Path,
              block_size: int, val_every: int | None, train_prefix: str = "train", limit: int | None = None,
              split_by: str = "keyid") -> dict:
    """Pack one file into blocks in out_dir; return counts (rows read, drawings per block, skipped per reason).

    fmt: "ndjson" | "kaggle_train" | "kaggle_test" | "bin" | "npz". label_of maps a chunk Block to labels (int16, -1
    unlabelled); drawings it labels -2 are dropped as "unknown class". val_every=None sends every drawing to
    train_prefix (test). split_by="file" keeps a Sketch-RNN file's own split: valid -> val, test -> ``test_<b>.qdb``
    (counted under "test"); "keyid" (and every other format) splits by the key_id hash.
    """
    skipped: Counter = Counter()
    parser, chunks = _chunks(path, fmt, kind, skipped, limit)
    writers = {"train": _Writer(out_dir, train_prefix, block_size), "val": _Writer(out_dir, "val", block_size),
               "test": _Writer(out_dir, "test", block_size)}
    for chunk, split in chunks:
        chunk.label[:] = label_of(chunk)
        known = chunk.label != -2
        skipped["unknown class"] += int((~known).sum())
        if val_every and split is not None and split_by == "file":
            route = {"train": "train", "valid": "val", "test": "test"}[split]
            masks = [(writers[route], known)]
        else:
            is_val = is_validation(chunk.key_id, val_every) if val_every else np.zeros(len(chunk), bool)
            masks = [(writers["train"], known & ~is_val), (writers["val"], known & is_val)]
        for writer, mask in masks:
            writer.add(chunk if mask.all() else chunk.select(np.flatnonzero(mask)))
    stats = {"read": parser.rows_read, "train": writers["train"].close(), "val": writers["val"].close()}
    test = writers["test"].close()
    if test:
        stats["test"] = test
    return stats | {"skipped": {k: v for k, v in sorted(skipped.items()) if v}}


def pack_class(path: Path, fmt: str, kind: str, label: int, class_dir: Path, block_size: int, val_every: int,
               limit: int | None = None, split_by: str = "keyid") -> dict:
    """Pack one per-class file into class_dir atomically: build in a hidden sibling folder, then rename it.

    A class folder with stats.json is finished: a rerun returns its counts without reading the input again.
    """
    if (class_dir / "stats.json").is_file():
        return json.loads((class_dir / "stats.json").read_text()) | {"reused": True}
    # A folder without stats.json can only be left from an older crash: atomic_dir replaces it.
    with atomic_dir(class_dir) as tmp:
        stats = pack_file(path, fmt, kind, lambda b: np.full(len(b), label, np.int16), tmp, block_size, val_every,
                          limit=limit, split_by=split_by)
        stats["source"] = str(path)
        write_text(tmp / "stats.json", json.dumps(stats))
    return stats
