"""Packed, memory-mappable store of drawings: the format prepare_data.py writes and every loader reads.

Parsing JSON at every epoch is what made the original solution slow; here drawings are parsed once and written as flat
arrays. A store directory holds::

    meta.json                      format version, kind ("simplified" | "raw"), classes, block size, split rule, counts
    classes.txt                    one class name a line; class index = line number (order = Python's sorted(), which
                                   is case-sensitive: "The Eiffel Tower" comes before "aircraft carrier")
    classes/<idx:03d>/train_<b:04d>.qdb   training blocks of up to block_size drawings of class idx
    classes/<idx:03d>/val_<b:04d>.qdb     that class's validation drawings (1 in val_every, chosen by key_id)
    classes/<idx:03d>/stats.json         rows read, kept and skipped per reason
    test/block_<b:04d>.qdb         the test set, when one was packed (labels -1 unless a solution file was found)

A ``.qdb`` block is one file: an 8-byte magic, a little-endian uint64 header length, a JSON header naming each array's
dtype, shape and byte offset, then the arrays, each 64-byte aligned so :func:`read_block` can memory-map them:

    xy       (P, 2) uint8   point coordinates in a 0..255 frame (simplified as given; raw aligned to the top-left and
                            scaled uniformly to a max of 255, Google's first two simplification steps, then rounded)
    t        (P,)   int32   ms since the drawing's first point (raw stores only)
    strokes  (S+1,) int64   point offsets of each stroke
    drawings (N+1,) int64   stroke offsets of each drawing
    label    (N,)   int16   class index, -1 for unlabelled test drawings
    key_id   (N,)   int64
    country  (N,)   S2      countrycode
    recognized (N,) int8    1/0, -1 when unknown (test)

Files are written to a temporary name and renamed (qdraw.atomic), and a class directory is renamed into place only
when all its blocks are written, so a killed prepare never leaves a half block that a reader would accept.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .atomic import atomic_write

FORMAT_VERSION = 1
MAGIC = b"QDBLOCK1"
_ALIGN = 64
FIELDS = ("xy", "t", "strokes", "drawings", "label", "key_id", "country", "recognized")


def mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64 arrays (wrapping arithmetic): the fixed hash behind the validation split and
    the loaders' flips, so both are pure functions of their inputs."""
    with np.errstate(over="ignore"):
        z = np.asarray(z, np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


class StoreError(ValueError):
    """A store or block that is missing, truncated, of another format version or inconsistent."""


@dataclass
class Block:
    """Drawings of one block as flat (possibly memory-mapped) arrays; see the module docstring for shapes."""

    xy: np.ndarray
    t: np.ndarray | None
    strokes: np.ndarray
    drawings: np.ndarray
    label: np.ndarray
    key_id: np.ndarray
    country: np.ndarray
    recognized: np.ndarray

    def __len__(self) -> int:
        return len(self.label)

    def drawing(self, i: int) -> list[np.ndarray]:
        """Strokes of drawing i as (n, 2) or (n, 3) int arrays (x, y[, t]); a convenience for tests and tools."""
        out = []
        for s in range(self.drawings[i], self.drawings[i + 1]):
            a, b = self.strokes[s], self.strokes[s + 1]
            pts = self.xy[a:b].astype(np.int64)
            if self.t is not None:
                pts = np.column_stack([pts, self.t[a:b]])
            out.append(pts)
        return out

    def points_of(self, i: int) -> tuple[int, int]:
        """First and one-past-last point index of drawing i."""
        return int(self.strokes[self.drawings[i]]), int(self.strokes[self.drawings[i + 1]])

    def slice(self, start: int, stop: int) -> "Block":
        """Drawings start..stop-1 as a block of views and rebased offsets (no gather; cheap for a contiguous run)."""
        s0, s1 = self.drawings[start], self.drawings[stop]
        p0, p1 = self.strokes[s0], self.strokes[s1]
        return Block(self.xy[p0:p1], None if self.t is None else self.t[p0:p1], self.strokes[s0:s1 + 1] - p0,
                     self.drawings[start:stop + 1] - s0, self.label[start:stop], self.key_id[start:stop],
                     self.country[start:stop], self.recognized[start:stop])

    def select(self, idx: np.ndarray) -> "Block":
        """A new in-memory block holding drawings idx (in that order), gathered without a Python loop."""
        idx = np.asarray(idx, dtype=np.int64)
        s0 = self.drawings[idx]
        ns = self.drawings[idx + 1] - s0
        sidx = _ranges(s0, ns)
        p0 = self.strokes[sidx]
        slens = self.strokes[sidx + 1] - p0
        pidx = _ranges(p0, slens)
        return make_block(self.xy[pidx], None if self.t is None else self.t[pidx], slens, ns, self.label[idx],
                          self.key_id[idx], self.country[idx], self.recognized[idx])


def _ranges(starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """Concatenation of arange(s, s + n) for each (s, n): the gather index of variable-length runs."""
    total = int(lens.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    shift = np.repeat(starts - np.cumsum(lens) + lens, lens)
    return shift + np.arange(total, dtype=np.int64)


def concat_blocks(blocks: list[Block]) -> Block:
    """Concatenate blocks (all of the same kind) into one in-memory block."""
    if not blocks:
        raise ValueError("concat_blocks needs at least one block")
    has_t = blocks[0].t is not None
    return make_block(np.concatenate([b.xy for b in blocks]),
                      np.concatenate([b.t for b in blocks]) if has_t else None,
                      np.concatenate([np.diff(b.strokes) for b in blocks]),
                      np.concatenate([np.diff(b.drawings) for b in blocks]),
                      *(np.concatenate([getattr(b, k) for b in blocks]) for k in ("label", "key_id", "country",
                                                                                   "recognized")))


def make_block(xy: np.ndarray, t: np.ndarray | None, stroke_lens: np.ndarray, drawing_lens: np.ndarray,
               label: np.ndarray, key_id: np.ndarray, country: np.ndarray, recognized: np.ndarray) -> Block:
    """Build a Block from per-stroke point counts and per-drawing stroke counts."""
    strokes = np.zeros(len(stroke_lens) + 1, np.int64)
    np.cumsum(stroke_lens, out=strokes[1:])
    drawings = np.zeros(len(drawing_lens) + 1, np.int64)
    np.cumsum(drawing_lens, out=drawings[1:])
    return Block(np.ascontiguousarray(xy, np.uint8), None if t is None else np.ascontiguousarray(t, np.int32),
                 strokes, drawings, np.asarray(label, np.int16), np.asarray(key_id, np.int64),
                 np.asarray(country, "S2"), np.asarray(recognized, np.int8))


def write_block(path: Path, block: Block) -> None:
    """Write a block atomically (qdraw.atomic: a hidden temporary file, fsync, rename)."""
    path = Path(path)
    header, offset, arrays = {}, 0, []
    for name in FIELDS:
        arr = getattr(block, name)
        if arr is None:
            continue
        arr = np.ascontiguousarray(arr)
        header[name] = {"dtype": arr.dtype.str, "shape": list(arr.shape), "offset": offset}
        arrays.append(arr)
        offset += -(-arr.nbytes // _ALIGN) * _ALIGN
    head = json.dumps({"version": FORMAT_VERSION, "arrays": header, "nbytes": offset}).encode()
    head += b" " * (-(len(MAGIC) + 8 + len(head)) % _ALIGN)
    with atomic_write(path) as f:
        f.write(MAGIC + len(head).to_bytes(8, "little") + head)
        for arr in arrays:
            f.write(arr.tobytes())
            f.write(b"\0" * (-arr.nbytes % _ALIGN))


def read_block(path: Path, mmap: bool = True) -> Block:
    """Open a block, memory-mapped by default; raise StoreError for anything truncated or of another version."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            magic, hlen = f.read(8), int.from_bytes(f.read(8), "little")
            if magic != MAGIC:
                raise StoreError(f"{path}: not a .qdb block (bad magic)")
            header = json.loads(f.read(hlen))
    except (OSError, ValueError) as exc:
        if isinstance(exc, StoreError):
            raise
        raise StoreError(f"{path}: unreadable block ({exc})") from exc
    if header.get("version") != FORMAT_VERSION:
        raise StoreError(f"{path}: block format version {header.get('version')}, this code reads {FORMAT_VERSION}")
    start = 16 + hlen
    if path.stat().st_size < start + header["nbytes"] - _ALIGN:
        raise StoreError(f"{path}: truncated block")
    raw = np.memmap(path, np.uint8, "r") if mmap else np.fromfile(path, np.uint8)
    arrays = {}
    for name, spec in header["arrays"].items():
        dt = np.dtype(spec["dtype"])
        n = int(np.prod(spec["shape"], dtype=np.int64)) * dt.itemsize
        a = start + spec["offset"]
        if a + n > len(raw):
            raise StoreError(f"{path}: truncated block")
        arrays[name] = raw[a:a + n].view(dt).reshape(spec["shape"])
    arrays.setdefault("t", None)
    block = Block(**arrays)
    if len(block.drawings) != len(block.label) + 1 or block.strokes[-1] != len(block.xy):
        raise StoreError(f"{path}: inconsistent offsets")
    return block


class Store:
    """Read side of a prepared store: classes, blocks per class, validation and test splits."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        meta_path = self.root / "meta.json"
        if not meta_path.is_file():
            raise StoreError(f"{self.root}: not a prepared store (no meta.json); run prepare_data.py first")
        try:
            self.meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:  # ValueError: bad JSON or bad UTF-8
            raise StoreError(f"{meta_path}: unreadable ({exc})") from None
        if not isinstance(self.meta, dict) or self.meta.get("version") != FORMAT_VERSION:
            version = self.meta.get("version") if isinstance(self.meta, dict) else None
            raise StoreError(f"{self.root}: store format version {version}, this code reads {FORMAT_VERSION}; "
                             f"re-run prepare_data.py")
        classes, kind = self.meta.get("classes"), self.meta.get("kind")
        if not isinstance(classes, list) or not classes or kind not in ("simplified", "raw"):
            raise StoreError(f"{meta_path}: needs a non-empty 'classes' list and 'kind' simplified or raw")
        self.classes: list[str] = list(classes)
        self.kind: str = kind

    @property
    def has_time(self) -> bool:
        return self.kind == "raw"

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def class_dir(self, c: int) -> Path:
        return self.root / "classes" / f"{c:03d}"

    def train_blocks(self, c: int) -> list[Path]:
        """Training block files of class c, in order."""
        return sorted(self.class_dir(c).glob("train_*.qdb"))

    def val_blocks(self, c: int) -> list[Path]:
        """Validation block files of class c (often one; none for a class too small to get a validation drawing)."""
        return sorted(self.class_dir(c).glob("val_*.qdb"))

    def test_blocks(self) -> list[Path]:
        return sorted((self.root / "test").glob("block_*.qdb"))

    def block_sizes(self) -> dict[int, list[int]]:
        """Drawings per training block for each class, from meta.json (no block is opened)."""
        return {int(c): sizes for c, sizes in self.meta["train_block_sizes"].items()}
