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
    pseudo/meta.json               pseudo-labelled drawings (pseudo_label.py), a separate, marked source: where
    pseudo/<idx:03d>/block_<b:04d>.qdb   they came from, how they were chosen, drawings per block; class idx's
                                   blocks hold drawings labelled idx by a model. prepare_data.py never touches
                                   pseudo/, and only train.py --pseudo-share reads it (never the validation split)

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
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numba import njit, vectorize

from .atomic import atomic_write
from .validate import FIELDS, StoreError, check_block, check_checksums, check_header

FORMAT_VERSION = 1
MAGIC = b"QDBLOCK1"
_ALIGN = 64
GAMMA = np.uint64(0x9E3779B97F4A7C15)  # splitmix64's increment (the golden ratio in 64 bits)


@njit(cache=True, nogil=True, inline="always")
def mix(z: np.uint64) -> np.uint64:
    """splitmix64's finaliser (wrapping uint64 arithmetic) of one value, for compiled code: the fixed hash behind the
    validation split, the epoch plan, the flips and the stroke augmentations (qdraw.augment), so each is a pure
    function of its inputs. ``mix(s), mix(s + GAMMA), mix(s + 2 GAMMA), ...`` is splitmix64's stream from state s."""
    z = z + GAMMA
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@njit(cache=True, nogil=True, inline="always")
def unit(h: np.uint64) -> float:
    """A hash's top 53 bits as a float in [0, 1) (exact: a multiple of 2**-53)."""
    return np.float64(h >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@vectorize(["uint64(uint64)"], cache=True, nopython=True)
def splitmix64(z):
    """:func:`mix` as a compiled numpy ufunc: a sixth of the numpy expression's time on a batch (1.2 vs 7.9 us for
    256 items, measured); :func:`mix64` is the entry point that takes any integer array."""
    return mix(z)


def mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64 arrays: the fixed hash behind the validation split and the loaders' flips,
    so both are pure functions of their inputs."""
    return splitmix64(np.asarray(z, np.uint64))


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
    """Write a block atomically (qdraw.atomic: a hidden temporary file, fsync, rename), with each array's CRC-32."""
    path = Path(path)
    header, sums, offset, arrays = {}, {}, 0, []
    for name in FIELDS:
        arr = getattr(block, name)
        if arr is None:
            continue
        arr = np.ascontiguousarray(arr)
        header[name] = {"dtype": arr.dtype.str, "shape": list(arr.shape), "offset": offset}
        sums[name] = zlib.crc32(arr.view(np.uint8).reshape(-1))
        arrays.append(arr)
        offset += -(-arr.nbytes // _ALIGN) * _ALIGN
    head = json.dumps({"version": FORMAT_VERSION, "arrays": header, "nbytes": offset, "crc32": sums}).encode()
    head += b" " * (-(len(MAGIC) + 8 + len(head)) % _ALIGN)
    with atomic_write(path) as f:
        f.write(MAGIC + len(head).to_bytes(8, "little") + head)
        for arr in arrays:
            f.write(arr.tobytes())
            f.write(b"\0" * (-arr.nbytes % _ALIGN))


def read_block(path: Path, mmap: bool = True, label_is: int | None = None, num_classes: int | None = None,
               verify: bool = True) -> Block:
    """Open a block (memory-mapped by default) after checking everything the kernels rely on (qdraw.validate).

    label_is / num_classes: the labels the block may hold (its class, or -1 and 0..num_classes-1); verify=False
    skips the CRC-32 comparison (the structural checks always run). Raises StoreError naming the file and the fault.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            magic, hlen = f.read(8), int.from_bytes(f.read(8), "little")
            if magic != MAGIC:
                raise StoreError(f"{path}: not a .qdb block (bad magic)")
            if hlen > size - 16:
                raise StoreError(f"{path}: truncated block (header of {hlen} bytes in a {size}-byte file)")
            header = json.loads(f.read(hlen))
    except (OSError, ValueError, RecursionError) as exc:
        if isinstance(exc, StoreError):
            raise
        raise StoreError(f"{path}: unreadable block ({exc})") from exc
    version = header.get("version") if isinstance(header, dict) else None
    if version != FORMAT_VERSION:
        raise StoreError(f"{path}: block format version {version!r}, this code reads {FORMAT_VERSION}")
    start = 16 + hlen
    specs = check_header(header, path, start, size, _ALIGN)
    raw = np.memmap(path, np.uint8, "r") if mmap and size else np.fromfile(path, np.uint8)
    arrays = {}
    for name, spec in specs.items():
        dt = np.dtype(spec["dtype"])
        a = start + spec["offset"]
        arrays[name] = raw[a:a + int(np.prod(spec["shape"], dtype=np.int64)) * dt.itemsize].view(dt).reshape(
            spec["shape"])
    if verify:
        check_checksums(header, arrays, path)
    arrays.setdefault("t", None)
    check_block(**arrays, path=path, label_is=label_is, num_classes=num_classes)
    return Block(**arrays)


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
        if (not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes)
                or kind not in ("simplified", "raw")):
            raise StoreError(f"{meta_path}: needs a non-empty 'classes' list of names and 'kind' simplified or raw")
        sizes = self.meta.get("train_block_sizes", {})
        if not isinstance(sizes, dict) or not all(
                isinstance(k, str) and k.isdigit() and int(k) < len(classes) and isinstance(v, list)
                and all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in v)
                for k, v in sizes.items()):
            raise StoreError(f"{meta_path}: 'train_block_sizes' must map class indices to lists of positive counts")
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

    def read_block(self, path: str | Path, verify: bool = True) -> Block:
        """A block of this store, checked (qdraw.validate) with the labels its place allows: a class folder's blocks
        hold only that class, the test split -1 or any class; a raw store's blocks carry times, a simplified one's
        none. StoreError otherwise."""
        path = Path(path)
        folder = path.parent
        in_class = folder.parent.name in ("classes", "pseudo")  # a class folder, or its pseudo-labelled twin
        label_is = int(folder.name) if in_class and folder.name.isdigit() else None
        if label_is is not None and label_is >= self.num_classes:
            raise StoreError(f"{path}: class folder {folder.name} is past the store's {self.num_classes} classes")
        block = read_block(path, label_is=label_is, num_classes=self.num_classes, verify=verify)
        if (block.t is not None) != self.has_time:
            raise StoreError(f"{path}: a {'raw' if block.t is not None else 'simplified'} block in a {self.kind} store")
        return block

    def verify(self) -> tuple[int, list[str]]:
        """Open every block with every check, CRC-32 included, and compare counts with meta.json.

        Returns the number of blocks checked and one line per problem found (empty when the store is sound).
        """
        problems, n = [], 0
        sizes = self.block_sizes()
        for c in range(self.num_classes):
            for kind, paths in (("train", self.train_blocks(c)), ("val", self.val_blocks(c))):
                got = []
                for path in paths:
                    n += 1
                    try:
                        got.append(len(self.read_block(path)))
                    except StoreError as exc:
                        problems.append(str(exc))
                        got.append(None)
                if kind == "train" and got != sizes.get(c, []) and None not in got:
                    problems.append(f"{self.class_dir(c)}: training blocks hold {got} drawings, meta.json says "
                                    f"{sizes.get(c, [])}")
        pseudo = self.pseudo_block_sizes()
        for c in range(self.num_classes):
            paths = self.pseudo_blocks(c)
            got = []
            for path in paths:
                try:
                    got.append(len(self.read_block(path)))
                except StoreError as exc:
                    problems.append(str(exc))
                    got.append(None)
            if got != pseudo.get(c, []) and None not in got:
                problems.append(f"{self.root / 'pseudo'}: class {c} blocks hold {got} drawings, pseudo/meta.json "
                                f"says {pseudo.get(c, [])}")
            n += len(paths)
        for path in self.test_blocks():
            n += 1
            try:
                self.read_block(path)
            except StoreError as exc:
                problems.append(str(exc))
        return n, problems

    def pseudo_blocks(self, c: int) -> list[Path]:
        """Pseudo-labelled block files of class c (pseudo_label.py), in order; none in most stores."""
        return sorted((self.root / "pseudo" / f"{c:03d}").glob("block_*.qdb"))

    def pseudo_meta(self) -> dict | None:
        """pseudo/meta.json (source, selection, block sizes), or None when the store has no pseudo-labels."""
        path = self.root / "pseudo" / "meta.json"
        if not path.is_file():
            return None
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise StoreError(f"{path}: unreadable ({exc})") from None
        sizes = meta.get("block_sizes") if isinstance(meta, dict) else None
        if not isinstance(sizes, dict) or not all(
                isinstance(k, str) and k.isdigit() and int(k) < self.num_classes and isinstance(v, list)
                and all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in v)
                for k, v in sizes.items()):
            raise StoreError(f"{path}: 'block_sizes' must map class indices to lists of positive counts")
        return meta

    def pseudo_block_sizes(self) -> dict[int, list[int]]:
        """Drawings per pseudo-labelled block for each class that has some (empty without pseudo-labels)."""
        meta = self.pseudo_meta()
        return {} if meta is None else {int(c): sizes for c, sizes in meta["block_sizes"].items()}

    def block_sizes(self) -> dict[int, list[int]]:
        """Drawings per training block for each class, from meta.json (no block is opened)."""
        return {int(c): sizes for c, sizes in self.meta["train_block_sizes"].items()}
