"""Google's binary Quick, Draw! files (``<word>.bin``): a compiled streamed reader and a writer.

Layout (googlecreativelab/quickdraw-dataset, examples/binary_file_parser.py): records back to back, no header, no
padding, little-endian::

    key_id      uint64
    countrycode 2 bytes (ASCII)
    recognized  uint8 (0 or 1)
    timestamp   uint32, unix seconds
    n_strokes   uint16
    n_strokes x (n_points uint16, x uint8[n_points], y uint8[n_points])

The points are Google's simplified drawings (0..255), so they go into a simplified store as they are, with key_id,
countrycode and recognized (the store keeps no timestamp, as for ndjson). Records carry no length or sync marker: a
record is read by walking its stroke counts. A bad record whose length is still known (no strokes, an empty stroke,
a recognized byte other than 0/1, a key_id past 2**63) is a counted skip and the file goes on; a last record cut short
is one counted skip; a record that claims more than MAX_RECORD_BYTES cannot be told from garbage and ends the file
with a FormatError (memory stays bounded by a read chunk plus that).
"""
from __future__ import annotations

import datetime
import struct
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from numba import njit

from .formats import FormatError, read_chunks
from .store import Block, make_block

HEADER_BYTES = 17
MAX_RECORD_BYTES = 64 << 20
OK, NO_STROKES, EMPTY_STROKE, BAD_RECOGNIZED, BAD_KEY = 0, 1, 2, 3, 4
REASONS = {NO_STROKES: "no strokes", EMPTY_STROKE: "empty stroke",
           BAD_RECOGNIZED: "recognized byte not 0 or 1", BAD_KEY: "key_id past 2**63"}


@njit(cache=True)
def _u16(buf, i):
    return np.int64(buf[i]) | (np.int64(buf[i + 1]) << 8)


@njit(cache=True)
def parse_records(buf, max_rows, xy, slen, nstrokes, key, country, rec, status):
    """Parse the whole records at the start of buf (uint8) into the output arrays.

    xy (capacity, 2) uint8, slen (capacity,) int64 per stroke; nstrokes, key, country (rows, 2), rec, status per
    record. A record with a non-OK status gets no points or strokes. Stops after max_rows records or at the first
    record that is not whole. Returns (bytes used, records, points, strokes).
    """
    n = len(buf)
    i = 0
    r = 0
    p = 0
    s = 0
    while r < max_rows and i + HEADER_BYTES <= n:
        ns = _u16(buf, i + 15)
        j = i + HEADER_BYTES
        whole = True
        empty = False
        for _ in range(ns):
            if j + 2 > n:
                whole = False
                break
            m = _u16(buf, j)
            empty |= m == 0
            j += 2 + 2 * m
            if j > n:
                whole = False
                break
        if not whole:
            break
        k = np.int64(0)
        for b in range(7, -1, -1):
            k = (k << 8) | np.int64(buf[i + b])  # wraps negative past 2**63: flagged below
        key[r] = k
        country[r, 0] = buf[i + 8]
        country[r, 1] = buf[i + 9]
        rec[r] = buf[i + 10]
        nstrokes[r] = 0
        if ns == 0:
            status[r] = NO_STROKES
        elif empty:
            status[r] = EMPTY_STROKE
        elif buf[i + 10] > 1:
            status[r] = BAD_RECOGNIZED
        elif k < 0:
            status[r] = BAD_KEY
        else:
            status[r] = OK
            q = i + HEADER_BYTES
            for _ in range(ns):
                m = _u16(buf, q)
                for t in range(m):
                    xy[p + t, 0] = buf[q + 2 + t]
                    xy[p + t, 1] = buf[q + 2 + m + t]
                slen[s] = m
                s += 1
                p += m
                q += 2 + 2 * m
            nstrokes[r] = ns
        r += 1
        i = j
    return i, r, p, s


def parse_buffer(data: bytes, skipped: Counter, max_rows: int | None = None) -> tuple[Block, int, int]:
    """The good records at the start of data as a Block (label 0), bytes used and records read; bad ones counted."""
    buf = np.frombuffer(data, np.uint8)
    rows = len(buf) // HEADER_BYTES + 1
    if max_rows is not None:
        rows = min(rows, max_rows)
    cap = len(buf) // 2 + 1
    xy, slen = np.zeros((cap, 2), np.uint8), np.zeros(cap, np.int64)
    nstrokes, key = np.zeros(rows, np.int64), np.zeros(rows, np.int64)
    country, rec, status = np.zeros((rows, 2), np.uint8), np.zeros(rows, np.int8), np.zeros(rows, np.int8)
    used, r, p, s = parse_records(buf, rows, xy, slen, nstrokes, key, country, rec, status)
    status = status[:r]
    for code, reason in REASONS.items():
        skipped[reason] += int((status == code).sum())
    good = np.flatnonzero(status == OK)
    block = make_block(xy[:p], None, slen[:s], nstrokes[good], np.zeros(len(good), np.int16), key[good],
                       country[good].view("S2").ravel(), rec[good])
    return block, used, r


class BinParser:
    """Chunked reading of one ``.bin`` file (plain or gzip); yields a Block of the good records of each chunk."""

    def __init__(self, path: Path, skipped: Counter):
        self.path, self.skipped = Path(path), skipped
        self.rows_read = 0

    def chunks(self, limit: int | None) -> Iterator[Block]:
        rest = b""
        for data in read_chunks(self.path):
            buf = rest + data if rest else data
            left = None if limit is None else limit - self.rows_read
            block, used, rows = parse_buffer(buf, self.skipped, left)
            self.rows_read += rows
            rest = buf[used:]
            if len(block):
                yield block
            if limit is not None and self.rows_read >= limit:
                return
            if len(rest) > MAX_RECORD_BYTES:
                raise FormatError(f"{self.path}: record {self.rows_read + 1} claims more than "
                                  f"{MAX_RECORD_BYTES >> 20} MB: not a Quick, Draw! binary file, or damaged")
        if rest:  # the last record is cut short (an interrupted download, say)
            self.skipped["truncated record"] += 1
            self.rows_read += 1


def encode_drawing(key_id: int, countrycode: str, recognized: bool, timestamp: int,
                   strokes: list[np.ndarray]) -> bytes:
    """One record of the binary format; strokes are (n, 2) integer arrays in 0..255 (x, y), 1 <= n < 65536.

    Raises:
        ValueError: a value the format cannot hold (the writer refuses rather than wrap around).
    """
    if not 0 <= key_id < 2**64 or not 0 <= timestamp < 2**32 or len(strokes) >= 2**16:
        raise ValueError("key_id, timestamp or stroke count out of the binary format's range")
    cc = countrycode.encode("ascii")
    if len(cc) > 2:
        raise ValueError(f"countrycode {countrycode!r} is longer than 2 bytes")
    out = [struct.pack("<Q2sBIH", key_id, cc, int(bool(recognized)), timestamp, len(strokes))]
    for stroke in strokes:
        a = np.asarray(stroke)
        if a.ndim != 2 or a.shape[1] < 2 or not 0 < len(a) < 2**16 or a.min() < 0 or a.max() > 255:
            raise ValueError("a stroke must hold 1..65535 points with x, y in 0..255")
        out.append(struct.pack("<H", len(a)) + a[:, 0].astype(np.uint8).tobytes() + a[:, 1].astype(np.uint8).tobytes())
    return b"".join(out)


def unix_seconds(timestamp: str) -> int:
    """Google's ndjson timestamp ("2017-03-01 20:41:36.70725 UTC", or Kaggle's without the zone) in unix seconds."""
    text = timestamp.strip().removesuffix(" UTC")
    stamp = datetime.datetime.fromisoformat(text).replace(tzinfo=datetime.timezone.utc)
    return int(stamp.timestamp())
