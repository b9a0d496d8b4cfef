"""Does serve.py prepare a browser's raw strokes as training did? Top-1 agreement between serve.py on real raw
drawings and predict.py on their Google-simplified twins (the shared raw/simplified pairs, matched by key_id).

Both sides are the real CLIs: predict.py runs on a folder of the twins (<word>.ndjson, Google's simplified form),
and serve.py (uvicorn, on a free loopback port) is sent every raw drawing through ``POST /api/guess``, a few
requests at a time. Google's simplification and qdraw.simplify agree on 99.97 % of these drawings (README), so the
figure measures the whole path: simplify, pack, draw, model.

    python experiments/serve_agreement.py --checkpoint runs/cpu_345class/last.pth
    python experiments/serve_agreement.py --checkpoint model.onnx --limit 300 --classes cat,eye
"""
from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import orjson

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "quickdraw"
sys.path.insert(0, str(REPO))

from qdraw.predictions import read_predictions  # noqa: E402  (after the path: runs as a script)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--checkpoint", required=True, help="a checkpoint or .onnx trained on simplified drawings")
    p.add_argument("--raw", default=str(SHARED / "raw"), help="folder of Google raw <word>.ndjson (default shared)")
    p.add_argument("--simplified", default=str(SHARED / "simplified"),
                   help="folder of Google simplified <word>.ndjson (default shared)")
    p.add_argument("--classes", default=None, help="comma-separated words to keep (default: the model's classes)")
    p.add_argument("--limit", type=int, default=None, help="at most this many pairs, the first by key_id (default all)")
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight (default 4)")
    return p


def pairs(raw: Path, simplified: Path, classes: set[str] | None) -> dict[int, tuple[str, list, list]]:
    """key_id -> (word, raw drawing, simplified drawing) for the drawings in both folders."""
    simp = {}
    for path in sorted(Path(simplified).glob("*.ndjson")):
        if classes is None or path.stem in classes:
            for line in path.read_bytes().splitlines():
                rec = orjson.loads(line)
                simp[int(rec["key_id"])] = rec["drawing"]
    out = {}
    for path in sorted(Path(raw).glob("*.ndjson")):
        if classes is None or path.stem in classes:
            for line in path.read_bytes().splitlines():
                rec = orjson.loads(line)
                key = int(rec["key_id"])
                if key in simp:
                    out[key] = (path.stem, rec["drawing"], simp[key])
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def predict_twins(checkpoint: str, chosen: dict, tmp: Path) -> dict[int, str]:
    """predict.py's top-1 word for each simplified twin (written as <word>.ndjson files)."""
    folder = tmp / "twins"
    folder.mkdir()
    by_word: dict[str, list[bytes]] = {}
    for key, (word, _, simp) in chosen.items():
        rec = {"word": word, "countrycode": "US", "recognized": True, "key_id": str(key), "drawing": simp}
        by_word.setdefault(word, []).append(orjson.dumps(rec))
    for word, lines in by_word.items():
        (folder / f"{word}.ndjson").write_bytes(b"\n".join(lines) + b"\n")
    subprocess.run([sys.executable, str(REPO / "predict.py"), "--checkpoint", checkpoint, "--input", str(folder),
                    "--preds", str(tmp / "twins.csv"), "--workers", "1", "--quiet", "--device", "cpu"], check=True,
                   stdout=subprocess.DEVNULL)
    pred = read_predictions(tmp / "twins.csv")
    top = np.argmax(pred.probs, 1)
    return {int(k): pred.classes[i] for k, i in zip(pred.key_ids, top)}


def serve_raw(checkpoint: str, chosen: dict, concurrency: int) -> tuple[dict[int, str], dict[int, str]]:
    """serve.py's top-1 word for each raw drawing, and the error of any request that failed."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, str(REPO / "serve.py"), "--checkpoint", checkpoint, "--port", str(port)],
                            stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/api/guess"
    try:
        with httpx.Client(timeout=60) as client:
            for _ in range(600):
                try:
                    client.get(url.replace("guess", "info"))
                    break
                except httpx.TransportError:
                    time.sleep(0.1)

            def one(key: int) -> tuple[int, str, str | None]:
                res = client.post(url, json={"drawing": chosen[key][1]})
                ok = res.status_code == 200
                return key, res.json()["guesses"][0]["word"] if ok else "", None if ok else res.json().get("error")

            with ThreadPoolExecutor(concurrency) as pool:
                results = list(pool.map(one, sorted(chosen)))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return {k: w for k, w, e in results if e is None}, {k: e for k, _, e in results if e is not None}


def measure(checkpoint: str, raw: Path, simplified: Path, classes: set[str] | None, limit: int | None = None,
            concurrency: int = 4) -> dict:
    """Agreement of serve.py (raw) with predict.py (simplified twins): counts and the disagreeing key_ids."""
    if classes is None:
        sys.path.insert(0, str(REPO))
        import data_loader_rgb  # noqa: F401
        import data_loader_time  # noqa: F401
        import models  # noqa: F401
        from qdraw.classifier import load_classifier

        classes = set(load_classifier(checkpoint).classes)
    found = pairs(raw, simplified, classes)
    chosen = {k: found[k] for k in sorted(found)[:limit]}
    if not chosen:
        raise SystemExit("error: no raw/simplified pairs for these classes")
    with tempfile.TemporaryDirectory(prefix="agree-") as tmp:
        twin = predict_twins(checkpoint, chosen, Path(tmp))
    served, errors = serve_raw(checkpoint, chosen, concurrency)
    same = [k for k in chosen if k in served and twin.get(k) == served[k]]
    return {"pairs": len(chosen), "agree": len(same), "errors": errors, "distinct": len(set(served.values())),
            "disagree": sorted(k for k in chosen if k not in same and k not in errors)}


def main(args: argparse.Namespace) -> None:
    classes = set(args.classes.split(",")) if args.classes else None
    t0 = time.perf_counter()
    r = measure(args.checkpoint, Path(args.raw), Path(args.simplified), classes, args.limit, args.concurrency)
    print(f"{r['agree']} of {r['pairs']} pairs agree on top-1 ({100 * r['agree'] / r['pairs']:.2f} %); "
          f"{len(r['errors'])} requests refused; {r['distinct']} distinct top-1 words; "
          f"{time.perf_counter() - t0:.0f} s")
    if r["disagree"]:
        print("disagreeing key_ids:", " ".join(map(str, r["disagree"][:50])))
    for key, err in list(r["errors"].items())[:10]:
        print(f"refused {key}: {err}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
