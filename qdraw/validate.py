"""Validation of .qdb blocks: everything the compiled kernels and the training loop rely on, checked when a block is
opened, because a store is untrusted input (copied between machines, downloaded, or flipped by a disk).

The gather, colour and draw kernels index points through the stroke offsets and strokes through the drawing
offsets without bounds checks (that is what makes them fast); one crafted offset used to make them read outside
their arrays (a segmentation fault, a memory-unsafe read on file input). So a block is accepted only when its header
is of the right types and shapes, every array lies inside the file, the offsets start at 0, grow strictly (no empty
stroke or drawing, as prepare writes them) and end at the array lengths, labels are in range for the store (the
block's own class, or -1 in a test split), ``recognized`` is -1/0/1, times are non-negative, and, when the header
carries them, the CRC-32 of every array matches (a bit flip inside the points is caught too). Everything is
vectorised: ``python bench.py store`` measures the cost on a full-size block (docs/RELIABILITY.md has the figure).
"""
from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

FIELDS = ("xy", "t", "strokes", "drawings", "label", "key_id", "country", "recognized")
# field -> (dtype string as the header writes it, fixed trailing dimensions); t is optional (raw stores only).
SPECS = {"xy": ("|u1", (2,)), "t": ("<i4", ()), "strokes": ("<i8", ()), "drawings": ("<i8", ()),
         "label": ("<i2", ()), "key_id": ("<i8", ()), "country": ("|S2", ()), "recognized": ("|i1", ())}


class StoreError(ValueError):
    """A store or block that is missing, truncated, of another format version, inconsistent or damaged."""


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_header(header: object, path: Path, data_start: int, file_size: int, align: int) -> dict[str, dict]:
    """The array specs of a parsed block header, checked against the format and the file's size.

    Returns {field: {"dtype", "shape", "offset"}} for the fields present; StoreError names the first problem.
    """
    if not isinstance(header, dict) or not isinstance(header.get("arrays"), dict):
        raise StoreError(f"{path}: block header is not a JSON object with an 'arrays' object")
    if not _is_int(header.get("nbytes")) or header["nbytes"] < 0:
        raise StoreError(f"{path}: block header 'nbytes' must be a non-negative integer")
    arrays = header["arrays"]
    unknown = sorted(set(arrays) - set(FIELDS))
    if unknown:
        raise StoreError(f"{path}: unknown array(s) {', '.join(map(str, unknown))} in the block header")
    missing = [f for f in FIELDS if f != "t" and f not in arrays]
    if missing:
        raise StoreError(f"{path}: block header lacks {', '.join(missing)}")
    for name, spec in arrays.items():
        dtype, ndim_tail = SPECS[name]
        if not isinstance(spec, dict) or spec.get("dtype") != dtype:
            got = spec.get("dtype") if isinstance(spec, dict) else spec
            raise StoreError(f"{path}: array {name} must have dtype {dtype}, the header says {got!r}")
        shape, offset = spec.get("shape"), spec.get("offset")
        if (not isinstance(shape, list) or len(shape) != 1 + len(ndim_tail) or not all(map(_is_int, shape))
                or min(shape) < 0 or tuple(shape[1:]) != ndim_tail):
            tail = "".join(f", {d}" for d in ndim_tail)
            raise StoreError(f"{path}: array {name} has shape {shape!r}, expected (n{tail})")
        if not _is_int(offset) or offset < 0 or offset % align:
            raise StoreError(f"{path}: array {name} has offset {offset!r}, expected a multiple of {align} >= 0")
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        if data_start + offset + nbytes > file_size:
            raise StoreError(f"{path}: truncated block (array {name} ends past the end of the file)")
    return arrays


def check_checksums(header: dict, arrays: dict[str, np.ndarray], path: Path) -> None:
    """Compare each array's CRC-32 with the header's (blocks written before checksums existed have none)."""
    sums = header.get("crc32")
    if sums is None:
        return
    if not isinstance(sums, dict) or set(sums) != set(arrays) or not all(map(_is_int, sums.values())):
        raise StoreError(f"{path}: block header 'crc32' must map every array to an integer")
    for name, arr in arrays.items():
        if zlib.crc32(np.ascontiguousarray(arr).view(np.uint8).reshape(-1)) != sums[name]:
            raise StoreError(f"{path}: array {name} fails its CRC-32 check (the file is damaged)")


def _offsets(name: str, off: np.ndarray, end: int, path: Path) -> None:
    """A strictly growing offset array from 0 to end: every stroke (drawing) holds at least one point (stroke)."""
    if off[0] != 0 or off[-1] != end:
        raise StoreError(f"{path}: {name} offsets run from {off[0]} to {off[-1]}, expected 0 to {end}")
    if len(off) > 1 and not (np.diff(off) > 0).all():
        k = int(np.flatnonzero(np.diff(off) <= 0)[0])
        raise StoreError(f"{path}: {name} offsets do not grow at index {k} ({off[k]} then {off[k + 1]}: an empty "
                         f"or negative {name[:-1]})")


def check_block(xy: np.ndarray, t: np.ndarray | None, strokes: np.ndarray, drawings: np.ndarray, label: np.ndarray,
                key_id: np.ndarray, country: np.ndarray, recognized: np.ndarray, path: Path,
                label_is: int | None = None, num_classes: int | None = None) -> None:
    """Raise StoreError unless the arrays form a block the kernels can trust (module docstring).

    label_is: every label must equal it (a class folder's block); else labels must be -1 or below num_classes.
    """
    n = len(label)
    if not (len(key_id) == len(country) == len(recognized) == n and len(drawings) == n + 1):
        raise StoreError(f"{path}: per-drawing arrays differ in length (label {n}, key_id {len(key_id)}, country "
                         f"{len(country)}, recognized {len(recognized)}, drawings {len(drawings) - 1})")
    if t is not None and len(t) != len(xy):
        raise StoreError(f"{path}: t has {len(t)} entries for {len(xy)} points")
    if len(strokes) < 1 or len(drawings) < 1:
        raise StoreError(f"{path}: empty offset arrays")
    _offsets("strokes", strokes, len(xy), path)
    _offsets("drawings", drawings, len(strokes) - 1, path)
    if n:
        if label_is is not None and not (label == label_is).all():
            bad = int(label[label != label_is][0])
            raise StoreError(f"{path}: label {bad} in the block of class {label_is}")
        lo, hi = int(label.min()), int(label.max())
        if lo < -1 or (num_classes is not None and hi >= num_classes):
            raise StoreError(f"{path}: labels {lo}..{hi} outside -1..{'' if num_classes is None else num_classes - 1}")
        if not np.isin(recognized, (-1, 0, 1)).all():
            raise StoreError(f"{path}: 'recognized' values outside -1, 0, 1")
    if t is not None and len(t) and int(t.min()) < 0:
        raise StoreError(f"{path}: negative times (t must be ms since the drawing's first point)")
