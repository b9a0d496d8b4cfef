"""Property tests: truncated, mutated and hostile binary, Sketch-RNN and gzip files never crash the readers.

Every example either reads (each record kept or counted once under a reason) or raises FormatError, the one-line
error prepare_data.py prints; nothing else may escape. Examples are bounded so the file runs in seconds.
"""
from __future__ import annotations

import gzip
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qdraw.binfmt import BinParser, encode_drawing
from qdraw.formats import FormatError, read_chunks
from qdraw.sketchrnn import NpzParser, key_ids, load_split, to_block, to_stroke3, write_npz

FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                         HealthCheck.too_slow])


def _drawings(seed: int, n: int) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [[rng.integers(0, 256, (rng.integers(1, 9), 2)) for _ in range(rng.integers(1, 4))] for _ in range(n)]


DRAWINGS = _drawings(0, 12)
RECORDS = [encode_drawing(1000 + i, "DE", i % 2, 1490000000 + i, d) for i, d in enumerate(DRAWINGS)]
BIN = b"".join(RECORDS)
ENDS = np.cumsum([len(r) for r in RECORDS]).tolist()


def _read_bin(path) -> tuple[list, Counter, int]:
    skipped = Counter()
    parser = BinParser(path, skipped)
    blocks = list(parser.chunks(None))
    return blocks, +skipped, parser.rows_read


def _check_blocks(blocks, skipped: Counter, rows: int) -> None:
    kept = sum(len(b) for b in blocks)
    assert kept + sum(skipped.values()) == rows
    for b in blocks:
        assert b.xy.dtype == np.uint8 and b.drawings[-1] == len(b.strokes) - 1 and b.strokes[-1] == len(b.xy)
        assert (np.diff(b.strokes) > 0).all() and (np.diff(b.drawings) > 0).all() and (b.key_id >= 0).all()


@FUZZ
@given(st.integers(0, len(BIN)), st.booleans())
def test_bin_cut_anywhere_keeps_the_whole_records(tmp_path, cut, compress):
    data = BIN[:cut]
    path = tmp_path / "a.bin"
    path.write_bytes(gzip.compress(data) if compress else data)
    blocks, skipped, rows = _read_bin(path)
    whole = sum(e <= cut for e in ENDS)
    assert sum(len(b) for b in blocks) == whole
    assert skipped == ({"truncated record": 1} if cut not in [0, *ENDS] else {})
    if whole:
        got = [s.tolist() for b in blocks for i in range(len(b)) for s in b.drawing(i)]
        assert got == [s.tolist() for d in DRAWINGS[:whole] for s in d]


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(BIN) - 1), st.integers(0, 255)), min_size=1, max_size=8))
def test_bin_mutated_bytes_never_crash(tmp_path, edits):
    data = bytearray(BIN)
    for pos, value in edits:
        data[pos] = value
    path = tmp_path / "a.bin"
    path.write_bytes(bytes(data))
    _check_blocks(*_read_bin(path))


@FUZZ
@given(st.binary(max_size=600))
def test_bin_random_bytes_never_crash(tmp_path, data):
    path = tmp_path / "a.bin"
    path.write_bytes(data)
    try:
        _check_blocks(*_read_bin(path))
    except FormatError as exc:  # bytes that start like gzip are a damaged gzip stream: the one-line error
        assert data.startswith(b"\x1f\x8b") and "damaged gzip stream" in str(exc)


_dtypes = st.sampled_from([np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.float32, np.float64, bool])
_arrays = st.builds(
    lambda dt, n, k, seed: np.random.default_rng(seed).integers(-300, 300, (n, k)).astype(dt),
    _dtypes, st.integers(0, 6), st.integers(1, 4), st.integers(0, 2**32 - 1))
_pens = st.builds(lambda n, seed: np.c_[np.random.default_rng(seed).integers(-2**40, 2**40, (n, 2)),
                                        np.random.default_rng(seed).integers(0, 2, n)].astype(np.int64),
                  st.integers(1, 6), st.integers(0, 2**32 - 1))
_items = st.one_of(_arrays, _pens, st.none(), st.integers(), st.text(max_size=5), st.lists(st.integers(), max_size=4),
                   st.builds(lambda: np.zeros((2, 3, 3), np.int16)), st.builds(lambda: np.empty(2, object)))


@FUZZ
@given(st.lists(_items, max_size=8))
def test_hostile_stroke3_items_are_kept_or_counted(items):
    skipped = Counter()
    block = to_block(items, key_ids("a", "train", np.arange(len(items))), skipped)
    assert len(block) + sum(skipped.values()) == len(items)
    _check_blocks([block], Counter(), len(block))


def _npz_bytes() -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "a.npz"
        write_npz(path, {"train": [to_stroke3(d) for d in DRAWINGS[:6]], "test": [to_stroke3(d) for d in DRAWINGS[6:]]})
        return path.read_bytes()


NPZ = _npz_bytes()


@FUZZ
@given(st.integers(0, len(NPZ)), st.lists(st.tuples(st.integers(0, len(NPZ) - 1), st.integers(0, 255)), max_size=4))
def test_damaged_npz_reads_or_is_one_format_error(tmp_path, cut, edits):
    data = bytearray(NPZ[:cut])
    for pos, value in edits:
        if pos < len(data):
            data[pos] = value
    path = tmp_path / "a.npz"
    path.write_bytes(bytes(data))
    skipped = Counter()
    parser = NpzParser(path, "a", skipped)
    try:
        blocks = [b for b, _ in parser.chunks(None)]
    except FormatError:
        return
    _check_blocks(blocks, +skipped, parser.rows_read)
    assert load_split(path, "valid") is None


@FUZZ
@given(st.integers(0, 400), st.lists(st.tuples(st.integers(0, 399), st.integers(0, 255)), max_size=3))
def test_damaged_gzip_reads_or_is_one_format_error(tmp_path, cut, edits):
    plain = b"".join(b"%d,line of text\n" % i for i in range(200))
    data = bytearray(gzip.compress(plain, mtime=0)[:cut])
    for pos, value in edits:
        if pos < len(data):
            data[pos] = value
    path = tmp_path / "a.gz"
    path.write_bytes(bytes(data))
    try:
        got = b"".join(read_chunks(path, 64))
    except FormatError as exc:
        assert "damaged gzip stream" in str(exc)
        return
    assert got == plain or not got.startswith(b"0,") or data[:2] != b"\x1f\x8b"  # intact, or not gzip at all
