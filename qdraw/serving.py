"""The web app of serve.py (Starlette): a drawing page, a guess API with a micro-batcher, and optional collection.

Routes:
    GET  /            the drawing page (qdraw/web/index.html): a canvas that records raw strokes with ms timing and
                      shows the top-3 guesses and the picture the network saw, live
    GET  /api/info    the model: classes, encoding, image size, line width, kind of strokes, whether saving is on
    POST /api/guess   {"drawing": [[[x...], [y...], [t...]], ...]} -> {"guesses": [{"word", "probability"} x 3]};
                      ``?image=1`` adds "image", a PNG data URL of the network's input
    POST /api/save    {"drawing": ..., "word": "cat"} -> appends one line of Google's raw ndjson (only with --collect)

A bad request gets a 4xx answer ``{"error": "one line"}`` (qdraw.guess says which) and nothing else changes; an
unexpected failure is a 500 with the same shape, logged, and the server goes on. Bodies are read in chunks and
refused past the limit before they are held whole.
"""
from __future__ import annotations

import contextlib
import logging
from importlib import resources
from pathlib import Path

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from .atomic import append_line
from .classifier import Classifier
from .guess import (Limits, RequestError, check_word, parse_body, png_data_url, raw_record, read_drawing, render,
                    to_block, top_guesses)
from .microbatch import MicroBatcher

log = logging.getLogger(__name__)


def collect_path(collect: str | Path, word: str) -> Path:
    """Where a saved drawing goes: FILE itself, or ``<word>.ndjson`` inside a folder (Google's per-class layout,
    which prepare_data.py --input reads as it is)."""
    collect = Path(collect)
    return collect / f"{word}.ndjson" if collect.is_dir() else collect


class GuessModel:
    """The batch function behind /api/guess: drawings -> packed blocks -> one raster call -> one model call."""

    def __init__(self, clf: Classifier):
        self.clf = clf

    def __call__(self, items: list[tuple[list[np.ndarray], bool]]) -> list[dict | Exception]:
        out: list[dict | Exception] = []
        blocks = []
        for strokes, _ in items:
            try:
                blocks.append(to_block(strokes, self.clf.data_kind, self.clf.spec))
                out.append({})
            except RequestError as exc:
                out.append(exc)
        good = [i for i, r in enumerate(out) if not isinstance(r, Exception)]
        if good:
            images = render(blocks, self.clf.spec)
            probs = self.clf(images)
            for j, i in enumerate(good):
                out[i] = {"guesses": top_guesses(probs[j], self.clf.classes)}
                if items[i][1] and images.dtype == np.uint8:  # a picture model's input can be shown
                    out[i]["image"] = png_data_url(images[j])
        return out


async def read_limited(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it passes limit bytes (by Content-Length, or while streaming)."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise RequestError(413, f"request body over {limit} bytes" if declared.isdigit() else "bad Content-Length")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"request body over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def create_app(clf: Classifier, limits: Limits = Limits(), collect: str | Path | None = None, max_batch: int = 32,
               max_wait_ms: float = 2.0) -> Starlette:
    """The app for one model. collect: a file (or folder) that /api/save appends to; None turns saving off."""
    batcher = MicroBatcher(GuessModel(clf), max_batch, max_wait_ms)
    page = resources.files("qdraw").joinpath("web/index.html").read_text(encoding="utf-8")

    async def read(request: Request) -> tuple[dict, list[np.ndarray]]:
        obj = parse_body(await read_limited(request, limits.max_body_bytes), limits)
        return obj, read_drawing(obj["drawing"], limits)

    async def guess(request: Request) -> Response:
        try:
            _, strokes = await read(request)
            return JSONResponse(await batcher.submit((strokes, request.query_params.get("image") == "1")))
        except RequestError as exc:
            return _error(exc.status, str(exc))

    async def save(request: Request) -> Response:
        if collect is None:
            return _error(404, "saving is off: start serve.py with --collect FILE")
        try:
            obj, strokes = await read(request)
            word = check_word(obj.get("word"))
            if strokes[0].shape[1] != 3:
                raise RequestError(422, "only raw strokes (with t) are collected: Google's raw format")
            top = (await batcher.submit((strokes, False)))["guesses"][0]["word"]
            append_line(collect_path(collect, word), raw_record(obj["drawing"], word, top == word))
        except RequestError as exc:
            return _error(exc.status, str(exc))
        except OSError as exc:
            log.error("cannot save to %s: %s", collect, exc)
            return _error(500, f"cannot save: {exc.strerror or exc}")
        return JSONResponse({"saved": word, "recognized": top == word})

    async def info(request: Request) -> Response:
        s = batcher.stats
        return JSONResponse({"classes": clf.classes, "input": clf.spec.to_dict(), "encoding": clf.spec.encoding,
                             "image_size": clf.spec.image_size, "line_width": clf.spec.line_width,
                             "data_kind": clf.data_kind, "arch": clf.info["arch"],
                             "backend": clf.backend, "collect": collect is not None,
                             "limits": {"max_body_bytes": limits.max_body_bytes, "max_points": limits.max_points},
                             "batches": {"count": s.batches, "items": s.items, "largest": s.largest}})

    async def index(request: Request) -> Response:
        return HTMLResponse(page)

    async def server_error(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s", request.url.path)
        return _error(500, f"internal error ({type(exc).__name__})")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    app = Starlette(routes=[Route("/", index), Route("/api/info", info), Route("/api/guess", guess, methods=["POST"]),
                            Route("/api/save", save, methods=["POST"])],
                    exception_handlers={500: server_error}, lifespan=lifespan)
    app.state.batcher = batcher
    return app
