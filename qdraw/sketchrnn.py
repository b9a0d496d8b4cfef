"""Sketch-RNN stroke-3 files (``<word>.npz``, ``<word>.full.npz``): a reader that never runs pickled code, and a writer.

Each file holds the arrays ``train``, ``valid`` and ``test`` (Google: 70k / 2.5k / 2.5k drawings per class, or all of
them in ``.full.npz``). A split is a 1-d object array whose items are drawings, each an int16 array of shape (n, 3):
(dx, dy, p) per point, dx/dy the offset from the previous point (the first from (0, 0)) and p = 1 when the pen is
lifted after this point, i.e. the point ends its stroke (stroke-3, arXiv 1308.0850 and 1704.03477).

Into the store: positions are the running sums of the offsets, cut into strokes after each p = 1 (and at the end),
then put in the store's 0..255 frame by Google's first two simplification steps, as for raw drawings: shifted so the
minimum x and y are 0, scaled uniformly so the larger side spans 255, rounded half to even. A Google simplified
drawing that already spans 0..255 comes back point for point. The files carry no key_id, country or recognized flag:
key_id = splitmix64(h + i) & (2**63 - 1), where h is the first 8 bytes (little-endian) of BLAKE2b of
``"<word>/<split>"`` and i the drawing's index in that split, so ids are stable across reruns and machines and differ
between classes and splits; country is empty and recognized -1 (unknown).

Object arrays are pickles. They are read by :class:`_Unpickler`, which builds nothing but numpy arrays and dtypes:
any other global (``os.system``, say) is refused before anything is called, and the whole file is refused with one
line. Numeric (non-object) arrays are read with ``allow_pickle=False``.
"""
from __future__ import annotations

import codecs
import hashlib
import pickle
import zipfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from . import fastparse
from .atomic import atomic_write
from .formats import FormatError
from .store import Block, make_block, mix64

SPLITS = ("train", "valid", "test")
CHUNK_DRAWINGS = 20000
_ARRAY = object()  # stands for numpy.ndarray inside a pickle: usable as _reconstruct's subtype, never callable


class PayloadError(pickle.UnpicklingError):
    """The pickle names something other than a numpy array or dtype."""


def _reconstruct(subtype: object, shape: object, dtype: object) -> np.ndarray:
    """numpy's pickle constructor, limited to what np.save writes: an empty ndarray that __setstate__ then fills."""
    if subtype is not _ARRAY or shape != (0,):
        raise PayloadError("numpy _reconstruct with other arguments than np.save writes")
    return np.ndarray((0,), np.dtype(dtype))


def _encode(text: object, encoding: str = "utf-8") -> bytes:
    """_codecs.encode as protocol-2 pickles use it for bytes (latin-1 text only)."""
    if not isinstance(text, str) or codecs.lookup(encoding).name != "iso8859-1":
        raise PayloadError("_codecs.encode with other arguments than a latin-1 string")
    return text.encode("latin-1")


_ALLOWED = {("numpy.core.multiarray", "_reconstruct"): _reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
            ("numpy", "ndarray"): _ARRAY, ("numpy", "dtype"): np.dtype, ("_codecs", "encode"): _encode}


class _Unpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals in _ALLOWED; PayloadError names any other."""

    def find_class(self, module: str, name: str) -> object:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise PayloadError(f"{module}.{name}") from None


def _load_member(zf: zipfile.ZipFile, member: str, path: Path) -> np.ndarray:
    """One .npy member: numeric arrays with allow_pickle=False, object arrays through _Unpickler."""
    where = f"{path}: {member}"
    try:
        with zf.open(member) as f:
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            shape, _, dtype = read_header(f)
            if not dtype.hasobject:
                with zf.open(member) as g:
                    return np.lib.format.read_array(g, allow_pickle=False)
            if dtype != np.dtype(object):
                raise FormatError(f"{where}: a structured dtype holding objects ({dtype}); not a Sketch-RNN file")
            arr = _Unpickler(f, encoding="latin1").load()
    except PayloadError as exc:
        raise FormatError(f"{where}: refused, it holds a pickled object ({exc}), not only arrays; nothing of it "
                          "was run") from None
    except FormatError:
        raise
    except Exception as exc:  # untrusted bytes: struct, zlib, pickle, numpy and memory errors alike
        raise FormatError(f"{where}: unreadable ({type(exc).__name__}: {exc})") from None
    if not isinstance(arr, np.ndarray) or arr.shape != shape:
        raise FormatError(f"{where}: the pickle does not hold the {shape} array its header announces")
    return arr


def load_split(path: Path, split: str) -> list[object] | None:
    """The items (drawings, unchecked) of one split of a Sketch-RNN file, None when the file lacks it.

    Raises:
        FormatError: not a zip/npz, no split at all, a pickled object other than arrays, an unreadable member, or a
            split that is not a list of drawings.
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            if not names & {f"{s}.npy" for s in SPLITS}:
                raise FormatError(f"{path}: not a Sketch-RNN file (holds {', '.join(sorted(names)) or 'nothing'}; "
                                  "expected train.npy, valid.npy, test.npy)")
            if f"{split}.npy" not in names:
                return None
            arr = _load_member(zf, f"{split}.npy", path)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise FormatError(f"{path}: not a readable .npz ({exc})") from None
    if arr.dtype == object:
        return list(arr.ravel())
    if arr.ndim == 3:  # drawings of one length saved as one numeric array
        return list(arr)
    raise FormatError(f"{path}: {split} is a {arr.dtype} array of shape {arr.shape}, not a list of (n, 3) drawings")


def key_ids(word: str, split: str, index: np.ndarray) -> np.ndarray:
    """Stable int64 key_ids of drawings index of a split (see the module docstring)."""
    h = int.from_bytes(hashlib.blake2b(f"{word}/{split}".encode(), digest_size=8).digest(), "little")
    with np.errstate(over="ignore"):
        z = np.uint64(h) + np.asarray(index, np.uint64)
    return (mix64(z) & np.uint64(2**63 - 1)).astype(np.int64)


def _check(item: object) -> str | None:
    """Why an item cannot be a stroke-3 drawing, or None."""
    if not isinstance(item, np.ndarray) or item.ndim != 2 or item.shape[1] != 3:
        return "not an (n, 3) stroke-3 array"
    if item.dtype.kind not in "iu":
        return "stroke-3 array not of integers"
    if not len(item):
        return "no strokes"
    if not np.isin(item[:, 2], (0, 1)).all():
        return "pen state not 0 or 1"
    return None


def to_block(items: list[object], keys: np.ndarray, skipped: Counter) -> Block:
    """Stroke-3 drawings -> a Block in the store's 0..255 frame (label 0); bad items counted in skipped, not kept."""
    good = []
    for i, item in enumerate(items):
        reason = _check(item)
        if reason:
            skipped[reason] += 1
        else:
            good.append(i)
    if not good:
        return make_block(np.zeros((0, 2)), None, [], [], [], [], [], [])
    rows = np.concatenate([np.asarray(items[i], np.float64) for i in good])
    pts = np.array([len(items[i]) for i in good], np.int64)
    first = np.r_[0, np.cumsum(pts)[:-1]]
    # absolute positions: running sums restarted at each drawing (float64, so hostile int64 offsets cannot wrap)
    xy = np.cumsum(rows[:, :2], axis=0)
    xy -= np.repeat(np.r_[[[0.0, 0.0]], xy[first[1:] - 1]], pts, axis=0)
    last = np.zeros(len(rows), bool)
    last[first + pts - 1] = True
    ends = np.flatnonzero((rows[:, 2] == 1) | last)
    slens = np.diff(np.r_[-1, ends])
    nstrokes = np.add.reduceat(((rows[:, 2] == 1) | last).astype(np.int64), first)
    out, t_out, status = np.zeros((len(rows), 2), np.uint8), np.zeros(len(rows), np.int32), np.zeros(len(good), np.int8)
    fastparse.normalise_rows(np.ascontiguousarray(xy[:, 0]), np.ascontiguousarray(xy[:, 1]), np.zeros(len(rows)), pts,
                             np.ones(len(good), bool), True, out, t_out, status)
    skipped["non-finite or huge coordinate"] += int((status == 2).sum())
    block = make_block(out, None, slens, nstrokes, np.zeros(len(good), np.int16), keys[good],
                       np.zeros(len(good), "S2"), np.full(len(good), -1, np.int8))
    return block if (status == 0).all() else block.select(np.flatnonzero(status == 0))


class NpzParser:
    """One Sketch-RNN file, split by split in chunks: yields (Block, split) with split in SPLITS."""

    def __init__(self, path: Path, word: str, skipped: Counter):
        self.path, self.word, self.skipped = Path(path), word, skipped
        self.rows_read = 0

    def chunks(self, limit: int | None) -> Iterator[tuple[Block, str]]:
        """limit applies to each split (so a capped store still has validation and test drawings)."""
        for split in SPLITS:
            items = load_split(self.path, split)
            if items is None:
                continue
            n = len(items) if limit is None else min(limit, len(items))
            for a in range(0, n, CHUNK_DRAWINGS):
                b = min(n, a + CHUNK_DRAWINGS)
                self.rows_read += b - a
                yield to_block(items[a:b], key_ids(self.word, split, np.arange(a, b)), self.skipped), split


def to_stroke3(strokes: list[np.ndarray]) -> np.ndarray:
    """Absolute strokes ((n, 2+) arrays of x, y) -> one int16 (N, 3) stroke-3 array, the first offset from (0, 0)."""
    pts = np.concatenate([np.asarray(s)[:, :2] for s in strokes]).astype(np.int64)
    pen = np.concatenate([np.r_[np.zeros(len(s) - 1), 1] for s in strokes])
    d = np.diff(pts, axis=0, prepend=np.zeros((1, 2), np.int64))
    return np.column_stack([d, pen]).astype(np.int16)


def write_npz(path: Path, splits: dict[str, list[np.ndarray]]) -> None:
    """Write a Sketch-RNN file (one object array of stroke-3 drawings per split), atomically."""
    arrays = {}
    for name, drawings in splits.items():
        arr = np.empty(len(drawings), object)
        for i, d in enumerate(drawings):  # one by one: a list of equal-shape arrays would broadcast
            arr[i] = d
        arrays[name] = arr
    with atomic_write(path) as f:
        np.savez(f, **arrays)
