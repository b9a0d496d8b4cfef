"""A numba parser for the fixed grammar of Quick, Draw! rows: the fast path of prepare_data.

orjson turns every coordinate into a Python int, which caps a packer at about 40k drawings/s/core. This parser reads
the bytes of many rows at once and writes coordinates straight into flat float64 arrays. It accepts only the exact
shapes Google and Kaggle write (a CSV row whose drawing field is ``[[[x…],[y…](,[t…])?], …]``, or an ndjson
object with ``"drawing"``, ``"key_id"``, ``"countrycode"`` and ``"recognized"``); numbers are parsed exactly (integer
mantissa < 2**53 and a decimal exponent within ±22, i.e. one correctly rounded IEEE operation, as orjson gets). Any
row it does not accept is flagged, and the caller re-reads it with orjson (qdraw.readers), which has the final word:
this parser can only make rows faster, never drop or alter one.
"""
from __future__ import annotations

import numpy as np
from numba import njit

FMT_CSV, FMT_NDJSON = 0, 1
OK, REJECT = 0, 1

_POW10 = np.array([10.0 ** i for i in range(23)])


@njit(cache=True)
def _skip_ws(buf, i, end):
    while i < end and (buf[i] == 32 or buf[i] == 9):
        i += 1
    return i


@njit(cache=True)
def _number(buf, i, end):
    """Parse a JSON number at i; return (value, next index, ok)."""
    neg = False
    if i < end and buf[i] == 45:  # '-'
        neg = True
        i += 1
    if i >= end or not (48 <= buf[i] <= 57):
        return 0.0, i, False
    if buf[i] == 48 and i + 1 < end and 48 <= buf[i + 1] <= 57:
        return 0.0, i, False  # JSON forbids leading zeros
    mant = 0
    ndig = 0
    exp10 = 0
    while i < end and 48 <= buf[i] <= 57:
        mant = mant * 10 + (buf[i] - 48)
        ndig += 1
        i += 1
        if ndig > 15:
            return 0.0, i, False
    if i < end and buf[i] == 46:  # '.'
        i += 1
        if i >= end or not (48 <= buf[i] <= 57):
            return 0.0, i, False
        while i < end and 48 <= buf[i] <= 57:
            mant = mant * 10 + (buf[i] - 48)
            ndig += 1
            exp10 -= 1
            i += 1
            if ndig > 15:
                return 0.0, i, False
    if i < end and (buf[i] == 101 or buf[i] == 69):  # exponents are rare here: leave them to orjson
        return 0.0, i, False
    v = float(mant)
    if exp10 < 0:
        if -exp10 > 22:
            return 0.0, i, False
        v = v / _POW10[-exp10]
    return (-v if neg else v), i, True


@njit(cache=True)
def _drawing(buf, i, end, vals, p, slen, s):
    """Parse ``[[[…],[…]], …]`` at i into vals[axis] from point p and slen from stroke s.

    Returns (next index, points end, strokes end, dims, ok). The ',' / ']' separator checks are written out at each
    level on purpose: a shared helper returning (index, kind) measured 27 % slower in this, the packer's hottest loop.
    """
    i = _skip_ws(buf, i, end)
    if i >= end or buf[i] != 91:
        return i, p, s, 0, False
    i += 1
    dims = 0
    cap = vals.shape[1]
    while True:
        i = _skip_ws(buf, i, end)
        if i >= end or buf[i] != 91:  # a stroke
            return i, p, s, dims, False
        i += 1
        n = -1
        axis = 0
        while True:
            i = _skip_ws(buf, i, end)
            if i >= end or buf[i] != 91 or axis >= 3:
                return i, p, s, dims, False
            i += 1
            k = 0
            i = _skip_ws(buf, i, end)
            if i < end and buf[i] == 93:
                i += 1
            else:
                while True:
                    i = _skip_ws(buf, i, end)
                    v, i, ok = _number(buf, i, end)
                    if not ok or p + k >= cap:
                        return i, p, s, dims, False
                    vals[axis, p + k] = v
                    k += 1
                    if i < end and buf[i] == 44:  # the usual ", " separator without a call
                        i += 1
                        if i < end and buf[i] == 32:
                            i += 1
                        continue
                    i = _skip_ws(buf, i, end)
                    if i < end and buf[i] == 44:
                        i += 1
                    elif i < end and buf[i] == 93:
                        i += 1
                        break
                    else:
                        return i, p, s, dims, False
            if (n >= 0 and k != n) or k == 0:
                return i, p, s, dims, False
            n = k
            axis += 1
            i = _skip_ws(buf, i, end)
            if i < end and buf[i] == 44:
                i += 1
            elif i < end and buf[i] == 93:
                i += 1
                break
            else:
                return i, p, s, dims, False
        if axis < 2 or (dims != 0 and axis != dims) or s >= len(slen):
            return i, p, s, dims, False
        dims = axis
        slen[s] = n
        s += 1
        p += n
        i = _skip_ws(buf, i, end)
        if i < end and buf[i] == 44:
            i += 1
        elif i < end and buf[i] == 93:
            return i + 1, p, s, dims, True
        else:
            return i, p, s, dims, False


@njit(cache=True)
def _find(buf, a, b, key):
    """Index just after ``"key"`` + optional spaces + ':' within [a, b), or -1."""
    m = len(key)
    for i in range(a, b - m - 1):
        if buf[i] == 34:
            match = True
            for j in range(m):
                if buf[i + 1 + j] != key[j]:
                    match = False
                    break
            if match and buf[i + 1 + m] == 34:
                k = _skip_ws(buf, i + m + 2, b)
                if k < b and buf[k] == 58:
                    return _skip_ws(buf, k + 1, b)
    return -1


@njit(cache=True)
def _int_field(buf, a, b):
    """Parse a non-negative decimal integer (optionally in quotes) spanning [a, b); -1 if it is not one."""
    if b - a >= 2 and buf[a] == 34 and buf[b - 1] == 34:
        a += 1
        b -= 1
    if a >= b or b - a > 18:
        return -1
    v = 0
    for i in range(a, b):
        if not (48 <= buf[i] <= 57):
            return -1
        v = v * 10 + (buf[i] - 48)
    return v


@njit(cache=True)
def _csv_fields(buf, a, b, fs, fe):
    """Split one CSV line into fields (quoted fields unwrapped, no escaped quotes allowed); number of fields or -1."""
    nf = 0
    i = a
    while nf < len(fs):
        if i < b and buf[i] == 34:
            j = i + 1
            while j < b and buf[j] != 34:
                j += 1
            if j >= b:
                return -1
            fs[nf], fe[nf] = i + 1, j
            i = j + 1
        else:
            j = i
            while j < b and buf[j] != 44:
                if buf[j] == 34:
                    return -1
                j += 1
            fs[nf], fe[nf] = i, j
            i = j
        nf += 1
        if i >= b:
            return nf
        if buf[i] != 44:
            return -1
        i += 1
    return -1


@njit(cache=True)
def _csv_meta(buf, a, b, cols, fs, fe, key, country, rec, r):
    """Split a Kaggle CSV row and read key_id, countrycode and recognized into row r; (drawing start, end) or -1."""
    if _csv_fields(buf, a, b, fs, fe) != cols[4]:
        return -1, -1
    kv = _int_field(buf, fs[cols[1]], fe[cols[1]])
    ca, cb = fs[cols[2]], fe[cols[2]]
    if kv < 0 or cb - ca > 2:
        return -1, -1
    key[r] = kv
    for j in range(cb - ca):
        country[r, j] = buf[ca + j]
    if cols[3] >= 0:
        ra, rb = fs[cols[3]], fe[cols[3]]
        if rb - ra == 4 and buf[ra] == 84:  # True
            rec[r] = 1
        elif rb - ra == 5 and buf[ra] == 70:  # False
            rec[r] = 0
        else:
            return -1, -1
    return fs[cols[0]], fe[cols[0]]


# the ndjson keys as bytes: numba has no bytes literals in compiled code
_K_REC = np.frombuffer(b"recognized", np.uint8)
_K_KEY = np.frombuffer(b"key_id", np.uint8)
_K_CC = np.frombuffer(b"countrycode", np.uint8)
_K_DR = np.frombuffer(b"drawing", np.uint8)


@njit(cache=True)
def _ndjson_meta(buf, a, b, key, country, rec, r):
    """Find key_id, countrycode, recognized and drawing in a Google ndjson object; (drawing start, line end) or -1."""
    if b - a < 2 or buf[a] != 123 or buf[b - 1] != 125:
        return -1, -1
    ki = _find(buf, a, b, _K_KEY)
    di = _find(buf, a, b, _K_DR)
    if ki < 0 or di < 0:
        return -1, -1
    kj = ki
    if kj < b and buf[kj] == 34:  # "123" or 123
        kj += 1
        while kj < b and buf[kj] != 34:
            kj += 1
        kj += 1
    else:
        while kj < b and 48 <= buf[kj] <= 57:
            kj += 1
    kv = _int_field(buf, ki, kj)
    if kv < 0:
        return -1, -1
    key[r] = kv
    ci = _find(buf, a, b, _K_CC)
    if ci >= 0:
        if buf[ci] != 34:
            return -1, -1
        j = ci + 1
        while j < b and buf[j] != 34 and j - ci - 1 < 3:
            j += 1
        if j - ci - 1 > 2 or buf[j] != 34:
            return -1, -1
        for q in range(j - ci - 1):
            country[r, q] = buf[ci + 1 + q]
    gi = _find(buf, a, b, _K_REC)
    if gi >= 0:
        if buf[gi] == 116:  # true
            rec[r] = 1
        elif buf[gi] == 102:  # false
            rec[r] = 0
        else:
            return -1, -1
    return di, b


@njit(cache=True)
def parse_rows(buf, starts, ends, fmt, cols, vals, slen, nstrokes, dims, key, country, rec, status):
    """Parse rows [starts[r], ends[r]) of buf; fill per-point, per-stroke and per-row outputs.

    cols (CSV only): indices of drawing, key_id, countrycode, recognized (-1 if absent) and the column count.
    vals (3, capacity) float64 receives x, y and t of every point.
    Returns (points used, strokes used). Rejected rows get status REJECT and no points or strokes.
    """
    p = 0
    s = 0
    fs = np.zeros(16, np.int64)
    fe = np.zeros(16, np.int64)
    for r in range(len(starts)):
        a, b = starts[r], ends[r]
        while b > a and (buf[b - 1] == 13 or buf[b - 1] == 32):
            b -= 1
        status[r] = REJECT
        nstrokes[r] = 0
        rec[r] = -1
        country[r, 0] = 0
        country[r, 1] = 0
        if fmt == FMT_CSV:
            da, db = _csv_meta(buf, a, b, cols, fs, fe, key, country, rec, r)
        else:
            da, db = _ndjson_meta(buf, a, b, key, country, rec, r)
        if da < 0:
            continue
        nxt, p2, s2, d, ok = _drawing(buf, da, db, vals, p, slen, s)
        if not ok:
            continue
        nxt = _skip_ws(buf, nxt, db)
        # a CSV drawing field ends at its closing quote; an ndjson drawing is followed by ',' or '}'
        if fmt == FMT_CSV and nxt != db:
            continue
        if fmt == FMT_NDJSON and not (nxt < db and (buf[nxt] == 44 or buf[nxt] == 125)):
            continue
        status[r] = OK
        nstrokes[r] = s2 - s
        dims[r] = d
        p, s = p2, s2
    return p, s


@njit(cache=True)
def normalise_rows(x, y, t, pts, rows_ok, raw, xy_out, t_out, status):
    """Check and map each drawing into the store's 0..255 frame in one pass (see qdraw.pack.normalise).

    status per drawing: 0 kept, 1 not considered (empty or already rejected), 2 non-finite or huge value,
    3 simplified coordinate outside 0..255 or fractional.
    """
    p = 0
    for d in range(len(pts)):
        n = pts[d]
        a = p
        p += n
        if n == 0 or not rows_ok[d]:
            status[d] = 1
            continue
        bad = False
        for i in range(a, a + n):
            # written so that NaN fails: every comparison with NaN is False
            if not (abs(x[i]) < 1e9 and abs(y[i]) < 1e9):
                bad = True
                break
            if raw and not (abs(t[i]) < 1e12):
                bad = True
                break
        if bad:
            status[d] = 2
            continue
        if not raw:
            for i in range(a, a + n):
                xi, yi = x[i], y[i]
                if xi < 0 or xi > 255 or yi < 0 or yi > 255 or xi != np.floor(xi) or yi != np.floor(yi):
                    bad = True
                    break
            if bad:
                status[d] = 3
                continue
            for i in range(a, a + n):
                xy_out[i, 0] = np.uint8(x[i])
                xy_out[i, 1] = np.uint8(y[i])
            status[d] = 0
            continue
        x0, y0, x1, y1, t0 = x[a], y[a], x[a], y[a], t[a]
        for i in range(a, a + n):
            x0, x1 = min(x0, x[i]), max(x1, x[i])
            y0, y1 = min(y0, y[i]), max(y1, y[i])
            t0 = min(t0, t[i])
        span = max(x1 - x0, y1 - y0)
        if span <= 0:
            span = 1.0
        for i in range(a, a + n):
            # multiply before dividing: 100 * 255 / 200 is exactly 127.5; np.rint rounds half to even like np.round
            xy_out[i, 0] = np.uint8(min(max(np.rint((x[i] - x0) * 255.0 / span), 0.0), 255.0))
            xy_out[i, 1] = np.uint8(min(max(np.rint((y[i] - y0) * 255.0 / span), 0.0), 255.0))
            t_out[i] = np.int32(min(max(np.rint(t[i] - t0), 0.0), 2147483647.0))
        status[d] = 0
