"""Serve a trained model on a small web app: a drawing page that guesses live, and a JSON guess API.

The page records strokes like the game (Google's raw format, ms timing), sends them while you draw and shows the
top-3 guesses and the picture the network saw. ``POST /api/guess`` takes ``{"drawing": [[[x...], [y...], [t...]],
...]}`` and answers ``{"guesses": [{"word": ..., "probability": ...}, x 3]}``; the strokes are prepared exactly as
the model's training data was (simplified by qdraw.simplify for models trained on simplified drawings), and
concurrent requests share model calls (a micro-batcher). Starlette under uvicorn; bound to 127.0.0.1 unless --host
says otherwise.

    python serve.py --checkpoint runs/demo/best.pth
    python serve.py --checkpoint model.onnx --port 8080 --collect mine/
    curl -s localhost:8000/api/guess -d '{"drawing": [[[0, 50, 100], [0, 80, 0], [0, 40, 90]]]}'

--collect FILE adds a Save button: each saved drawing is appended, with the word given, to FILE as one fsync'ed line
of Google's raw ndjson; when FILE is a folder, to FOLDER/<word>.ndjson, the per-class layout that
``prepare_data.py --input FOLDER`` packs for training.
"""
from __future__ import annotations

import argparse
import ipaddress
import logging
import sys
from pathlib import Path

import data_loader_rgb  # noqa: F401  (registers the grey and rgb encodings)
import data_loader_time  # noqa: F401  (registers the time encoding)
import models  # noqa: F401  (registers the architectures a checkpoint names)
from qdraw.checkpoint import CheckpointError
from qdraw.classifier import load_classifier
from qdraw.distributed import pick_device
from qdraw.guess import Limits
from qdraw.inference import WEIGHTS


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True,
                   help="best.pth / last.pth from train.py, or model.onnx from export.py")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    p.add_argument("--collect", default=None,
                   help="append saved drawings to this ndjson file, or to <word>.ndjson in this folder (default: off)")
    p.add_argument("--weights", choices=WEIGHTS, default="auto",
                   help="checkpoint weights: auto, raw or ema (default auto)")
    p.add_argument("--device", default="cpu",
                   help="torch device for a checkpoint: cpu, cuda, cuda:N, auto (default cpu)")
    limits = p.add_argument_group("Limits")
    limits.add_argument("--max-body-bytes", type=int, default=Limits.max_body_bytes,
                        help=f"largest request body in bytes (default {Limits.max_body_bytes})")
    limits.add_argument("--max-points", type=int, default=Limits.max_points,
                        help=f"most points in one drawing (default {Limits.max_points})")
    limits.add_argument("--max-batch", type=int, default=32, help="most drawings in one model call (default 32)")
    limits.add_argument("--max-wait-ms", type=float, default=2.0,
                        help="how long a batch waits for more requests, in ms (default 2)")
    return p


def _check(args: argparse.Namespace) -> None:
    """Flag values that would fail later, said now in one line."""
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be 0..65535, got {args.port}")
    if args.max_body_bytes < 1 or args.max_points < 1 or args.max_batch < 1 or args.max_wait_ms < 0:
        raise ValueError("--max-body-bytes, --max-points and --max-batch must be >= 1 and --max-wait-ms >= 0")
    if args.collect is not None:
        path = Path(args.collect)
        if not path.is_dir() and not path.resolve().parent.is_dir():
            raise ValueError(f"--collect {path}: neither a folder nor a file name in an existing folder")


def main(args: argparse.Namespace) -> None:
    import uvicorn

    from qdraw.serving import create_app

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        _check(args)
        clf = load_classifier(args.checkpoint, pick_device(args.device), args.weights)
    except (CheckpointError, ValueError, OSError) as exc:
        raise SystemExit(f"error: {exc}") from None
    limits = Limits(max_body_bytes=args.max_body_bytes, max_points=args.max_points)
    app = create_app(clf, limits, args.collect, args.max_batch, args.max_wait_ms)
    try:
        public = not ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        public = args.host != "localhost"
    if public:
        print(f"warning: --host {args.host} makes the server reachable from other machines", file=sys.stderr)
    print(f"{clf.path.name}: {clf.info['arch']} ({clf.backend}), {len(clf.classes)} classes, input "
          f"{clf.spec.describe()}; open http://{args.host}:{args.port}/", flush=True)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=5)
    except (OSError, SystemExit) as exc:  # uvicorn exits 1 after logging a bind error (port in use)
        raise SystemExit(f"error: cannot serve on {args.host}:{args.port} ({exc})") from None


if __name__ == "__main__":
    main(get_args_parser().parse_args())
