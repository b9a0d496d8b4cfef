"""serve.py's API through Starlette's TestClient (and one real uvicorn process): guesses, the strokes prepared as
prepare_data.py packs them, every kind of bad request refused with a 4xx and one line while the server goes on,
the micro-batcher, and --collect."""
from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import time
import warnings
from pathlib import Path

import cv2
import httpx
import numpy as np
import orjson
import pytest
import torch

import models
from common import ROOT, SIX_CLASSES, free_port, wait_for_server
from qdraw.checkpoint import CHECKPOINT_VERSION, save_checkpoint
from qdraw.classifier import load_classifier
from qdraw.dataset import SplitDataset
from qdraw.microbatch import MicroBatcher
from qdraw.prepare import PrepareOptions, prepare
from qdraw.readers import read_ndjson
from qdraw.render import InputSpec, make_render
from qdraw.serving import create_app
from qdraw.simplify import simplify_drawing, to_google_lists
from qdraw.strokes import to_arrays
from qdraw.synthetic import write_ndjson

with warnings.catch_warnings():  # Starlette 1.x prefers httpx2 for its TestClient; httpx works the same
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

CLASSES = sorted(SIX_CLASSES)
# A raw drawing as the game records it: canvas pixels (one below 0, as when the pen leaves the canvas), ms times.
RAW = [[[10, 60, 110, 160, 160], [-3, 40, 90, 140, 20], [0, 30, 60, 95, 140]],
       [[30, 130], [150, 150], [400, 520]]]


def _checkpoint(path: Path, encoding: str = "rgb", data_kind: str = "simplified") -> Path:
    torch.manual_seed(0)
    model = models.create_model("squeezenet", len(CLASSES))
    save_checkpoint({"version": CHECKPOINT_VERSION, "arch": "squeezenet", "model_args": {"num_classes": len(CLASSES),
                     "in_chans": 3}, "classes": CLASSES, "num_classes": len(CLASSES), "encoding": encoding,
                     "image_size": 32, "config": {}, "data_kind": data_kind, "model": model.state_dict(),
                     "epoch": 0}, path)
    return path


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("serve")
    return {"rgb": _checkpoint(tmp / "rgb.pth"), "time": _checkpoint(tmp / "time.pth", "time", "raw"), "root": tmp}


@pytest.fixture(scope="module")
def client(ckpts):
    with TestClient(create_app(load_classifier(ckpts["rgb"]))) as c:
        yield c


def _image(data_url: str) -> np.ndarray:
    raw = base64.b64decode(data_url.split(",", 1)[1])
    return cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_UNCHANGED)


def test_guess_and_the_picture(client):
    res = client.post("/api/guess?image=1", json={"drawing": RAW})
    assert res.status_code == 200, res.text
    body = res.json()
    guesses = body["guesses"]
    assert len(guesses) == 3 and {g["word"] for g in guesses} <= set(CLASSES)
    probs = [g["probability"] for g in guesses]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    assert _image(body["image"]).shape == (32, 32, 3)
    assert "image" not in client.post("/api/guess", json={"drawing": RAW}).json()
    assert "<canvas" in client.get("/").text
    info = client.get("/api/info").json()
    assert info["classes"] == CLASSES and info["encoding"] == "rgb" and info["collect"] is False


def _store_images(tmp: Path, drawing: list, kind: str, encoding: str) -> np.ndarray:
    """The drawing as training sees it: written to an ndjson file, packed by prepare, drawn by SplitDataset."""
    src = tmp / f"src_{kind}"
    src.mkdir()
    rec = {"word": "circle", "countrycode": "US", "recognized": True, "key_id": "1", "drawing": drawing}
    (src / "circle.ndjson").write_bytes(orjson.dumps(rec) + b"\n")
    prepare(PrepareOptions(output=str(tmp / f"st_{kind}"), val_every=1, workers=1), src)
    batch = SplitDataset(tmp / f"st_{kind}", "val").batch([0])
    return make_render(InputSpec.raster(encoding, 32))(batch)[0]


@pytest.mark.parametrize("encoding", ["rgb", "time"])
def test_strokes_are_prepared_as_training_data(ckpts, tmp_path, encoding):
    """The picture the network sees equals the loader's picture of the same drawing packed by prepare_data: the
    Google-simplified twin for a model trained on simplified drawings, the raw drawing for a raw (time) model."""
    twin = to_google_lists(simplify_drawing(to_arrays(RAW)))
    kind = "raw" if encoding == "time" else "simplified"
    expected = _store_images(tmp_path, RAW if kind == "raw" else twin, kind, encoding)
    with TestClient(create_app(load_classifier(ckpts[encoding]))) as c:
        got = _image(c.post("/api/guess?image=1", json={"drawing": RAW}).json()["image"])
        assert np.array_equal(got[:, :, ::-1].transpose(2, 0, 1), expected)
        if encoding == "rgb":  # the twin sent as simplified strokes gives the very same answer
            assert c.post("/api/guess", json={"drawing": twin}).json() == c.post("/api/guess",
                                                                                 json={"drawing": RAW}).json()
        else:
            res = c.post("/api/guess", json={"drawing": twin})
            assert res.status_code == 422 and "needs stroke timing" in res.json()["error"]


BIG = 1 << 20
BAD = [
    ("not-json", b"hello", 400, "not JSON"),
    ("nan", b'{"drawing": [[[NaN, 1], [1, 2], [0, 1]]]}', 400, "not JSON"),
    ("infinity", b'{"drawing": [[[Infinity], [1], [0]]]}', 400, "not JSON"),
    ("huge-float", b'{"drawing": [[[1e400], [1], [0]]]}', 400, "not JSON"),
    ("deep", b"[" * 5000 + b"]" * 5000, 400, "not JSON"),
    ("a-list", b"[1, 2]", 422, "'drawing' field"),
    ("no-drawing", b'{"strokes": []}', 422, "'drawing' field"),
    ("empty", b'{"drawing": []}', 422, "no strokes"),
    ("flat", b'{"drawing": [1, 2, 3]}', 422, "stroke is not a list"),
    ("one-level-short", b'{"drawing": [[1, 2], [3, 4]]}', 422, "coordinate list is not a list"),
    ("too-deep", b'{"drawing": [[[[1]], [[2]], [[0]]]]}', 422, "non-numeric"),
    ("lengths", b'{"drawing": [[[1, 2], [1], [0, 1]]]}', 422, "lengths differ"),
    ("mixed", b'{"drawing": [[[1], [1], [0]], [[1], [1]]]}', 422, "mix 2 and 3"),
    ("strings", b'{"drawing": [[["1"], [1], [0]]]}', 422, "non-numeric"),
    ("bools", b'{"drawing": [[[true], [1], [0]]]}', 422, "non-numeric"),
    ("empty-stroke", b'{"drawing": [[[], [], []]]}', 422, "empty stroke"),
    ("huge-coordinate", b'{"drawing": [[[1e12, 2], [1, 2], [0, 1]]]}', 422, "out of range"),
    ("very-negative", b'{"drawing": [[[-5000000, 2], [1, 2], [0, 1]]]}', 422, "out of range"),
    ("negative-time", b'{"drawing": [[[1, 2], [1, 2], [-10, 1]]]}', 422, "times must be"),
    ("huge-time", b'{"drawing": [[[1, 2], [1, 2], [0, 1e15]]]}', 422, "times must be"),
    ("simplified-negative", b'{"drawing": [[[-1, 2], [1, 2]]]}', 422, "integers in 0..255"),
    ("simplified-fraction", b'{"drawing": [[[1.5, 2], [1, 2]]]}', 422, "integers in 0..255"),
    ("too-many-points", orjson.dumps({"drawing": [[list(range(20001)), [0] * 20001, list(range(20001))]]}), 413,
     "at most 20000"),
    ("body-too-big", b'{"drawing": [[[' + b"1," * (BIG // 2) + b"1]]]}", 413, "over 1048576 bytes"),
]


@pytest.mark.parametrize("name, body, status, message", BAD, ids=[b[0] for b in BAD])
def test_bad_request_is_4xx_and_one_line_then_the_server_goes_on(client, name, body, status, message):
    res = client.post("/api/guess", content=body, headers={"Content-Type": "application/json"})
    assert res.status_code == status, res.text
    error = res.json()["error"]
    assert message in error and "\n" not in error and len(error) < 300
    assert client.post("/api/guess", json={"drawing": RAW}).status_code == 200


def test_streamed_body_is_cut_at_the_limit(client):
    """No Content-Length (chunked upload): the server stops reading past the limit."""
    chunks = (b"[" + b"1," * 1000 for _ in range(1000))  # ~2 MB, never sent whole
    res = client.post("/api/guess", content=chunks)
    assert res.status_code == 413 and "over 1048576 bytes" in res.json()["error"]


def test_micro_batcher_batches_concurrent_requests():
    sizes = []

    def fn(items):
        time.sleep(0.02)
        sizes.append(len(items))
        return [ValueError("odd") if i % 2 else i * 10 for i in items]

    async def go():
        b = MicroBatcher(fn, max_batch=8, max_wait_ms=5)
        await b.start()
        try:
            return await asyncio.gather(*(b.submit(i) for i in range(20)), return_exceptions=True)
        finally:
            await b.stop()

    out = asyncio.run(go())
    assert [r if not isinstance(r, Exception) else "err" for r in out] == [i * 10 if i % 2 == 0 else "err"
                                                                           for i in range(20)]
    assert sum(sizes) == 20 and max(sizes) == 8 and len(sizes) <= 4


def test_collect_appends_google_raw_lines(ckpts, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    for target in (tmp_path / "saved.ndjson", folder):
        with TestClient(create_app(load_classifier(ckpts["rgb"]), collect=target)) as c:
            for word in ("circle", "star", "circle"):
                res = c.post("/api/save", json={"drawing": RAW, "word": word})
                assert res.status_code == 200 and res.json()["saved"] == word
            for body, message in (({"drawing": RAW, "word": "../x"}, "word must be"),
                                  ({"drawing": RAW}, "word must be"),
                                  ({"drawing": to_google_lists(simplify_drawing(to_arrays(RAW))), "word": "star"},
                                   "only raw strokes")):
                res = c.post("/api/save", json=body)
                assert res.status_code == 422 and message in res.json()["error"]
    rows = list(read_ndjson(tmp_path / "saved.ndjson"))
    assert [r.word for r in rows] == ["circle", "star", "circle"] and all(r.drawing == RAW for r in rows)
    assert len({r.key_id for r in rows}) == 3
    lines = [json.loads(line) for line in (tmp_path / "saved.ndjson").read_text().splitlines()]
    assert set(lines[0]) == {"word", "countrycode", "timestamp", "recognized", "key_id", "drawing"}
    assert sorted(p.name for p in folder.iterdir()) == ["circle.ndjson", "star.ndjson"]
    result = prepare(PrepareOptions(output=str(tmp_path / "store"), workers=1), folder)  # trainable as it is
    assert json.loads((tmp_path / "store/meta.json").read_text())["kind"] == "raw" and result is not None
    with TestClient(create_app(load_classifier(ckpts["rgb"]))) as c:
        res = c.post("/api/save", json={"drawing": RAW, "word": "circle"})
        assert res.status_code == 404 and "--collect" in res.json()["error"]


@pytest.mark.slow
def test_serve_cli_on_a_real_socket(ckpts):
    """serve.py itself under uvicorn: bound to 127.0.0.1, answers, refuses a bad body, still answers; bad flags
    and a bad checkpoint are one error line."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(ROOT / "serve.py"), "--checkpoint", str(ckpts["rgb"]), "--port",
                             str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_server(url + "/api/info", lambda: proc.poll() is None)
        assert httpx.post(url + "/api/guess", content=b"{bad", timeout=10).status_code == 400
        res = httpx.post(url + "/api/guess", json={"drawing": RAW}, timeout=10)
        assert res.status_code == 200 and len(res.json()["guesses"]) == 3
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=60)
    assert f"open http://127.0.0.1:{port}/" in out
    res = subprocess.run([sys.executable, str(ROOT / "serve.py"), "--checkpoint", str(ckpts["root"] / "nope.pth")],
                         capture_output=True, text=True, timeout=600)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 1 and lines == [f"error: {ckpts['root'] / 'nope.pth'}: no such checkpoint"], lines


@pytest.mark.parametrize("argv, message", [
    (["--port", "70000"], "--port must be 0..65535"),
    (["--collect", "/nowhere/x/y.ndjson"], "--collect /nowhere/x/y.ndjson: neither a folder"),
    (["--max-points", "0"], "--max-points"),
    (["--checkpoint", "garbage.onnx"], "no such ONNX model"),
])
def test_serve_flags_are_one_error_line(ckpts, argv, message):
    import serve

    args = serve.get_args_parser().parse_args(["--checkpoint", str(ckpts["rgb"]), *argv])
    with pytest.raises(SystemExit) as exc:
        serve.main(args)
    assert str(exc.value.code).startswith("error: ") and message in str(exc.value.code)
