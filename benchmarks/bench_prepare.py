"""`bench.py prepare`: packing speed per core and peak memory of prepare_data against the naive pandas + json path.

The input's rows are regrouped into a few large class files (real classes hold 100k+ drawings; the shared slice holds
~40 per class, where per-file start-up would dominate) and repeated to 1x and 10x size.
``--formats csv,ndjson,bin`` writes the same rows in each format (Kaggle CSV, Google ndjson, Google binary via
qdraw.binfmt), so the rates compare formats on identical drawings; the naive path for .bin is a struct.unpack loop
like Google's example parser. Each measurement runs in a
fresh process with one worker; drawings/s/core divides by the CPU seconds (user + system, packing worker included),
so it is per core and little disturbed by other load; wall-clock rates are printed too. ru_maxrss is that run's own
peak.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import orjson

from qdraw.binfmt import encode_drawing, unix_seconds

_OURS = """
import json, resource, shutil, sys, time
from pathlib import Path
from qdraw.pack import pack_class
from qdraw.prepare import PrepareOptions, prepare
src, out = Path(sys.argv[1]), Path(sys.argv[2])


def cpu():
    # user + system seconds of this process and its finished children (the packing worker)
    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


from qdraw.readers import detect_layout
layout = detect_layout(src)
first = sorted(layout.files.values())[0]
pack_class(first, layout.name, sys.argv[3], 0, out / "warm", 10000, 30, limit=10)  # load the numba cache first
cpu0, t = cpu(), time.perf_counter()
r = prepare(PrepareOptions(output=str(out / "store"), workers=1, no_test=True), src)
dt, cpu_s = time.perf_counter() - t, cpu() - cpu0
n = sum(s["read"] for s in r["classes"].values())
rss = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
print(json.dumps({"rows": n, "seconds": dt, "cpu": cpu_s, "rss_mb": rss / 1024}))
"""

_NAIVE = """
import json, resource, struct, sys, time
from pathlib import Path
import pandas as pd
src = Path(sys.argv[1])


def read_bin(f):
    # one struct.unpack per field, as in Google's examples/binary_file_parser.py
    out = []
    with open(f, "rb") as fh:
        while head := fh.read(17):
            key, cc, rec, ts, ns = struct.unpack("<Q2sBIH", head)
            strokes = []
            for _ in range(ns):
                m, = struct.unpack("<H", fh.read(2))
                strokes.append((struct.unpack(f"{m}B", fh.read(m)), struct.unpack(f"{m}B", fh.read(m))))
            out.append(strokes)
    return out


t, cpu0 = time.perf_counter(), time.process_time()
n = 0
for f in sorted(src.iterdir()):
    if f.suffix == ".csv":
        drawings = [json.loads(d) for d in pd.read_csv(f)["drawing"]]
    elif f.suffix == ".bin":
        drawings = read_bin(f)
    else:
        drawings = [json.loads(line)["drawing"] for line in open(f)]
    n += len(drawings)
dt, cpu_s = time.perf_counter() - t, time.process_time() - cpu0
print(json.dumps({"rows": n, "seconds": dt, "cpu": cpu_s,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", required=True, help="Kaggle train CSV folder or Google ndjson folder")
    p.add_argument("--files", type=int, default=8, help="class files to regroup the rows into (default 8)")
    p.add_argument("--repeat", type=int, default=4, help="copies of the input rows in the 1x set (default 4)")
    p.add_argument("--scales", default="1,10", help="input sizes to measure, in multiples of the 1x set (default 1,10)")
    p.add_argument("--naive-scales", default="1", help="sizes at which to run the slow naive path (default 1)")
    p.add_argument("--formats", default="", help="formats to write the rows in and measure, from csv, ndjson, bin "
                   "(default: the input's own format, its lines copied as they are)")


def _build(src: Path, dst: Path, files: int, copies: int) -> int:
    """Regroup every row of src into `files` class files, `copies` times over; return the row count."""
    dst.mkdir(parents=True)
    paths = sorted(src.glob("*.csv")) or sorted(src.glob("*.ndjson"))
    if not paths:
        raise SystemExit(f"error: {src} holds no .csv or .ndjson files")
    suffix = paths[0].suffix
    header, rows = b"", []
    for p in paths:
        lines = p.read_bytes().splitlines(keepends=True)
        if suffix == ".csv":
            header, lines = lines[0], lines[1:]
        rows.extend(ln if ln.endswith(b"\n") else ln + b"\n" for ln in lines if ln.strip())
    return _spread(rows, dst, files, copies, suffix, header)


def _spread(rows: list[bytes], dst: Path, files: int, copies: int, suffix: str, header: bytes = b"") -> int:
    """Write rows `copies` times over, round-robin, into `files` class files (each opened with header); the count."""
    outs = [open(dst / f"class{i:02d}{suffix}", "wb") for i in range(files)]
    for f in outs:
        f.write(header)
    for c in range(copies):
        for i, row in enumerate(rows):
            outs[(i + c) % files].write(row)
    for f in outs:
        f.close()
    return len(rows) * copies


def _records(src: Path) -> list[dict]:
    """Every row of a Kaggle train CSV or ndjson folder as a dict (countrycode, drawing text, key_id, recognized,
    timestamp, word), for writing the same rows in other formats."""
    paths = sorted(src.glob("*.csv")) or sorted(src.glob("*.ndjson"))
    out = []
    for p in paths:
        if p.suffix == ".csv":
            with open(p, newline="") as f:
                out += [r | {"recognized": r["recognized"] == "True"} for r in csv.DictReader(f)]
        else:
            for line in p.read_bytes().splitlines():
                if line.strip():
                    r = orjson.loads(line)
                    out.append(r | {"drawing": orjson.dumps(r["drawing"]).decode()})
    return out


def _encode(r: dict, fmt: str) -> bytes:
    """One row in fmt (a csv line, an ndjson line or a binary record)."""
    if fmt == "csv":
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow([r["countrycode"], r["drawing"], r["key_id"], r["recognized"],
                                                        r["timestamp"], r["word"]])
        return buf.getvalue().encode()
    if fmt == "ndjson":
        return orjson.dumps({"word": r["word"], "countrycode": r["countrycode"], "timestamp": r["timestamp"],
                             "recognized": r["recognized"], "key_id": str(r["key_id"]),
                             "drawing": orjson.loads(r["drawing"])}) + b"\n"
    strokes = [np.array(s, np.int64).T for s in orjson.loads(r["drawing"])]
    return encode_drawing(int(r["key_id"]), r["countrycode"], r["recognized"], unix_seconds(r["timestamp"]), strokes)


def _build_as(records: list[dict], dst: Path, files: int, copies: int, fmt: str) -> int:
    """Write records `copies` times over into `files` class files of format fmt; return the row count."""
    dst.mkdir(parents=True)
    header = b"countrycode,drawing,key_id,recognized,timestamp,word\n" if fmt == "csv" else b""
    return _spread([_encode(r, fmt) for r in records], dst, files, copies, f".{fmt}", header)


def _measure(code: str, *argv: str) -> dict:
    res = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1])
    if res.returncode:
        raise SystemExit(f"error: benchmark subprocess failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def run(args: argparse.Namespace) -> None:
    src = Path(args.input)
    naive_scales = {int(s) for s in args.naive_scales.split(",") if s}
    kind = "raw" if "raw" in src.name else "simplified"
    formats = [f for f in args.formats.split(",") if f]
    if set(formats) - {"csv", "ndjson", "bin"}:
        raise SystemExit(f"error: --formats takes csv, ndjson and bin, got {args.formats!r}")
    if "bin" in formats and kind == "raw":
        raise SystemExit("error: the binary format holds simplified drawings only; use a simplified input")
    records = _records(src) if formats else None
    with tempfile.TemporaryDirectory() as tmp:
        for scale in (int(s) for s in args.scales.split(",")):
            for fmt in formats or [None]:
                data = Path(tmp) / f"in{scale}{fmt or ''}"
                copies = args.repeat * scale
                n = _build(src, data, args.files, copies) if fmt is None else \
                    _build_as(records, data, args.files, copies, fmt)
                _report(data, Path(tmp) / f"out{scale}{fmt or ''}", kind, n, scale, fmt, scale in naive_scales)
                shutil.rmtree(data)


def _report(data: Path, out: Path, kind: str, n: int, scale: int, fmt: str | None, naive_too: bool) -> None:
    size_mb = sum(f.stat().st_size for f in data.iterdir()) / 2**20
    tag = f"{scale}x" if fmt is None else f"{scale}x_{fmt}"
    ours = _measure(_OURS, str(data), str(out), kind)
    shutil.rmtree(out, ignore_errors=True)
    print(f"prepare_ours_{tag} {ours['rows'] / ours['cpu']:.0f} drawings/s/core "
          f"({n} rows, {size_mb:.0f} MB, {ours['rows'] / ours['seconds']:.0f}/s wall, "
          f"peak RSS {ours['rss_mb']:.0f} MB)", flush=True)
    if naive_too:
        naive = _measure(_NAIVE, str(data))
        what = {"bin": "struct.unpack per field", "ndjson": "json.loads per line"}.get(
            fmt or next(data.iterdir()).suffix.lstrip("."), "pandas.read_csv + json.loads")
        print(f"prepare_naive_{tag} {naive['rows'] / naive['cpu']:.0f} drawings/s/core "
              f"({what}; {naive['rows'] / naive['seconds']:.0f}/s wall, peak RSS {naive['rss_mb']:.0f} MB)")
        print(f"prepare_ratio_{tag} {naive['cpu'] / ours['cpu']:.1f}x per core "
              f"({naive['seconds'] / ours['seconds']:.1f}x wall)", flush=True)
