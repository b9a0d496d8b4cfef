"""`bench.py prepare`: packing speed per core and peak memory of prepare_data against the naive pandas + json path.

The input's rows are regrouped into a few large class files (real classes hold 100k+ drawings; the shared slice holds
~40 per class, where per-file start-up would dominate) and repeated to 1x and 10x size. Each measurement runs in a
fresh process with one worker; drawings/s/core divides by the CPU seconds (user + system, packing worker included),
so it is per core and little disturbed by other load; wall-clock rates are printed too. ru_maxrss is that run's own
peak.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

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


first = sorted(src.iterdir())[0]
fmt = "ndjson" if first.suffix == ".ndjson" else "kaggle_train"
pack_class(first, fmt, sys.argv[3], 0, out / "warm", 10000, 30, limit=10)  # load the numba cache first
cpu0, t = cpu(), time.perf_counter()
r = prepare(PrepareOptions(output=str(out / "store"), workers=1, no_test=True), src)
dt, cpu_s = time.perf_counter() - t, cpu() - cpu0
n = sum(s["read"] for s in r["classes"].values())
rss = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
print(json.dumps({"rows": n, "seconds": dt, "cpu": cpu_s, "rss_mb": rss / 1024}))
"""

_NAIVE = """
import json, resource, sys, time
from pathlib import Path
import pandas as pd
src = Path(sys.argv[1])
t, cpu0 = time.perf_counter(), time.process_time()
n = 0
for f in sorted(src.iterdir()):
    if f.suffix == ".csv":
        drawings = [json.loads(d) for d in pd.read_csv(f)["drawing"]]
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
    outs = [open(dst / f"class{i:02d}{suffix}", "wb") for i in range(files)]
    for f in outs:
        f.write(header)
    for c in range(copies):
        for i, row in enumerate(rows):
            outs[(i + c) % files].write(row)
    for f in outs:
        f.close()
    return len(rows) * copies


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
    with tempfile.TemporaryDirectory() as tmp:
        for scale in (int(s) for s in args.scales.split(",")):
            data = Path(tmp) / f"in{scale}"
            n = _build(src, data, args.files, args.repeat * scale)
            size_mb = sum(f.stat().st_size for f in data.iterdir()) / 2**20
            ours = _measure(_OURS, str(data), str(Path(tmp) / f"out{scale}"), kind)
            print(f"prepare_ours_{scale}x {ours['rows'] / ours['cpu']:.0f} drawings/s/core "
                  f"({n} rows, {size_mb:.0f} MB, {ours['rows'] / ours['seconds']:.0f}/s wall, "
                  f"peak RSS {ours['rss_mb']:.0f} MB)", flush=True)
            if scale in naive_scales:
                naive = _measure(_NAIVE, str(data))
                print(f"prepare_naive_{scale}x {naive['rows'] / naive['cpu']:.0f} drawings/s/core "
                      f"(pandas.read_csv + json.loads; {naive['rows'] / naive['seconds']:.0f}/s wall, "
                      f"peak RSS {naive['rss_mb']:.0f} MB)")
                print(f"prepare_ratio_{scale}x {naive['cpu'] / ours['cpu']:.1f}x per core "
                      f"({naive['seconds'] / ours['seconds']:.1f}x wall)")
