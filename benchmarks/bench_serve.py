"""`bench.py serve`: a loopback load test of serve.py: latency (p50, p99), requests per second and server CPU.

serve.py itself runs as a subprocess (uvicorn, the micro-batcher, the real preparation of raw strokes) on a free
127.0.0.1 port; ``--concurrency`` client threads of this process each keep one ``POST /api/guess`` in flight with
real raw drawings (the shared slice's ``raw/`` when present, else the synthetic generator's), until ``--requests``
answers or ``--max-seconds``, whichever comes first, after ``--warmup`` untimed requests. Latency is the client's
wall time per request; CPU is the server process's user + system time (/proc) over the timed part, in seconds per
request and in cores. The clients share the machine, so on 2 cores they cost the server some throughput. Without
``--checkpoint`` an untrained ``--model`` at ``--size`` with ``--num-classes`` classes is served (speed does not
depend on the weights). Figures are printed, never asserted.

    python bench.py serve --model resnet34 --size 128
    python bench.py serve --model mobilenetv2 --size 128 --concurrency 8 --requests 400
    python bench.py serve --checkpoint model.onnx
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parents[1]
SHARED_RAW = REPO.parent / "shared" / "data" / "quickdraw" / "raw"


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", default=None, help="a checkpoint or .onnx to serve (default: untrained --model)")
    p.add_argument("--model", default="mobilenetv2", help="architecture of the untrained model (default mobilenetv2)")
    p.add_argument("--size", type=int, default=128, help="its image size in px (default 128)")
    p.add_argument("--num-classes", type=int, default=345, help="its classes (default 345)")
    p.add_argument("--requests", type=int, default=300, help="timed requests at most (default 300)")
    p.add_argument("--max-seconds", type=float, default=60.0, help="timed part lasts at most this (default 60 s)")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight (default 8)")
    p.add_argument("--warmup", type=int, default=10, help="untimed requests first (default 10)")
    p.add_argument("--drawings", default=None,
                   help="folder of raw <word>.ndjson (default: shared raw/, else synthetic)")


def _drawings(folder: str | None, limit: int = 500) -> list[list]:
    """Up to limit raw drawings (Google's raw ``drawing`` field) from folder, the shared slice or the generator."""
    path = Path(folder) if folder else SHARED_RAW
    if folder is None and not path.is_dir():
        from qdraw.synthetic import write_ndjson

        path = Path(tempfile.mkdtemp(prefix="bench-serve-"))
        write_ndjson(path, 40, seed=0)
    out = []
    for f in sorted(path.glob("*.ndjson")):
        out += [orjson.loads(line)["drawing"] for line in f.read_bytes().splitlines()[:3]]
    if not out:
        raise ValueError(f"{path}: no raw drawings")
    return out[:limit]


def _untrained(args: argparse.Namespace, path: Path) -> Path:
    """An untrained checkpoint of args.model: speed does not depend on the weights."""
    import models
    from qdraw.checkpoint import CHECKPOINT_VERSION, save_checkpoint

    classes = [f"class {i:03d}" for i in range(args.num_classes)]
    model = models.create_model(args.model, len(classes))
    save_checkpoint({"version": CHECKPOINT_VERSION, "arch": args.model, "model_args": {"num_classes": len(classes),
                     "in_chans": 3}, "classes": classes, "num_classes": len(classes), "encoding": "rgb",
                     "image_size": args.size, "config": {}, "model": model.state_dict(), "epoch": 0}, path)
    return path


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _load(url: str, bodies: list[bytes], n: int, concurrency: int, max_s: float) -> tuple[list[float], int, float]:
    """Latencies (s) of up to n requests from concurrency threads, the failures, and the wall time."""
    import httpx

    lat: list[float] = []
    failed = [0]
    lock = threading.Lock()
    counter = iter(range(n))
    stop = time.perf_counter() + max_s

    def client() -> None:
        with httpx.Client(timeout=60, headers={"Content-Type": "application/json"}) as c:
            while time.perf_counter() < stop:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                t0 = time.perf_counter()
                ok = c.post(url, content=bodies[i % len(bodies)]).status_code == 200
                with lock:
                    lat.append(time.perf_counter() - t0) if ok else None
                    failed[0] += not ok

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return lat, failed[0], time.perf_counter() - t0


def run(args: argparse.Namespace) -> None:
    import httpx

    if min(args.requests, args.concurrency, args.size, args.num_classes) < 1 or args.max_seconds <= 0:
        raise ValueError("--requests, --concurrency, --size, --num-classes and --max-seconds must be positive")
    bodies = [orjson.dumps({"drawing": d}) for d in _drawings(args.drawings)]
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        ckpt = Path(args.checkpoint) if args.checkpoint else _untrained(args, Path(tmp) / "model.pth")
        port = _free_port()
        proc = subprocess.Popen([sys.executable, str(REPO / "serve.py"), "--checkpoint", str(ckpt), "--port",
                                 str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        base = f"http://127.0.0.1:{port}"
        try:
            for _ in range(1200):
                try:
                    info = httpx.get(base + "/api/info", timeout=2).json()
                    break
                except httpx.TransportError:
                    if proc.poll() is not None:
                        raise ValueError(f"serve.py exited: {proc.stderr.read().strip()[-300:]}") from None
                    time.sleep(0.1)
            else:
                raise ValueError("serve.py did not start within 120 s")
            _load(base + "/api/guess", bodies, args.warmup, 1, 120)
            before = httpx.get(base + "/api/info").json()["batches"]
            cpu0 = _cpu_seconds(proc.pid)
            lat, failed, wall = _load(base + "/api/guess", bodies, args.requests, args.concurrency, args.max_seconds)
            cpu = _cpu_seconds(proc.pid) - cpu0
            after = httpx.get(base + "/api/info").json()["batches"]
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    if not lat:
        raise ValueError(f"no request succeeded ({failed} failed)")
    q = statistics.quantiles(lat, n=100, method="inclusive")
    batches = max(after["count"] - before["count"], 1)
    print(f"serve {info['arch']} @ {info['image_size']} px ({info['backend']}, {len(info['classes'])} classes): "
          f"{len(lat)} requests, {args.concurrency} in flight, {failed} failed, {wall:.1f} s")
    print(f"serve_latency p50 {1000 * statistics.median(lat):.1f} ms, p99 {1000 * q[98]:.1f} ms")
    mean_batch = (after["items"] - before["items"]) / batches
    print(f"serve_throughput {len(lat) / wall:.1f} requests/s, mean batch {mean_batch:.1f}")
    print(f"serve_cpu {cpu:.1f} s server CPU = {1000 * cpu / len(lat):.1f} ms per request, {cpu / wall:.2f} cores "
          f"(machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f})")
