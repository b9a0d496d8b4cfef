"""Draw a chunk of batches in one compiled call that never takes the GIL: what a loader thread runs.

Why: a loader thread shares the GIL with the training thread. Each time it takes the GIL back (after a compiled
call) it waits for the training thread to let go, and a Python-heavy training thread lets go only every switch
interval (5 ms): the loader kept 0.08 of its rate beside such a thread when it took the GIL ~9 times a batch, and a
training thread issuing small torch ops kept only 0.72-0.78 of its own. So here one call does, for each of K
batches: locate every item in the epoch plan, gather its strokes, augment them (qdraw.augment), colour the points
(the encoding's compiled kernel, passed as a first-class function) and draw them, plus the labels; the thread takes
the GIL once per K batches. ``bench.py raster`` measures what that buys (docs/BENCHMARKS.md).

When a piece has no compiled form (a transform that is not a qdraw.augment.Augment, an encoding without a kernel)
the same chunk goes through the Python stages batch by batch (:func:`produce`'s fallback): the same batches, more
GIL. A test checks that both give identical pictures and labels.
"""
from __future__ import annotations

import numpy as np
from numba import njit, types

from .augment import Augment, _augment_kernel
from .encoding import COLOR_SIG
from .raster import _GATHER_INDEX, _GATHER_OK, _draw_kernel, _gather_kernel
from .store import StoreError

_LOCATE_INDEX = 1  # an index past the epoch (the gather's own status codes follow)


@njit(cache=True, nogil=True)
def locate(idx, offsets, picks, row_src, row_label, src, local, labels):
    """For each item index: the source block and drawing it reads, and its label, from an epoch's rows.

    Row r holds the items offsets[r] .. offsets[r + 1] - 1, which read drawings picks[r, :] of source row_src[r]
    and carry label row_label[r] (a training epoch: a row per class; an evaluation split: a row per drawing).
    Returns 0, or _LOCATE_INDEX when an index is out of range.
    """
    for j in range(len(idx)):
        i = idx[j]
        if i < 0 or i >= offsets[-1]:
            return _LOCATE_INDEX
        r = np.searchsorted(offsets, i, side="right") - 1
        src[j], local[j], labels[j] = row_src[r], picks[r, i - offsets[r]], row_label[r]
    return 0


def _raster_chunk(idx, offsets, picks, row_src, row_label, xys, ts, strokess, drawingss, with_t, seed, epoch, params,
                  augment, color_fn, channels, width, margin, reverse, out_x, out_y):
    src = np.empty(idx.shape[1], np.int64)
    local = np.empty(idx.shape[1], np.int64)
    for k in range(idx.shape[0]):
        status = locate(idx[k], offsets, picks, row_src, row_label, src, local, out_y[k])
        if status != 0:
            return status
        xy, t, strokes, drawings, status = _gather_kernel(xys, ts, strokess, drawingss, src, local, with_t)
        if status != _GATHER_OK:
            return status + 1
        if augment:
            xy, t, strokes, drawings = _augment_kernel(xy, t, strokes, drawings, idx[k], seed, epoch, params)
        colors = np.empty((len(xy), channels), np.uint8)
        color_fn(xy, t, strokes, drawings, colors)
        _draw_kernel(xy, strokes, drawings, colors, width, margin, reverse, out_x[k])
    return 0


_I1, _I2 = types.Array(types.int64, 1, "C"), types.Array(types.int64, 2, "C")
_LIST = [types.ListType(types.Array(dt, nd, "C", readonly=True))
         for dt, nd in ((types.uint8, 2), (types.int32, 1), (types.int64, 1), (types.int64, 1))]
# An explicit signature: the colour kernel is typed by its signature, not its identity, so one compiled (and
# disk-cached) producer serves every encoding.
_RASTER_SIG = types.int64(_I2, _I1, _I2, _I1, _I1, *_LIST, types.boolean, types.uint64, types.uint64,
                          types.Array(types.float64, 1, "C"), types.boolean, types.FunctionType(COLOR_SIG),
                          types.int64, types.int64, types.int64, types.boolean, types.Array(types.uint8, 5, "C"), _I2)
_compiled: dict[str, object] = {}


def _raster_kernel():
    """The compiled chunk producer, built on first use (an explicit signature compiles when given: not at import)."""
    if "raster" not in _compiled:
        _compiled["raster"] = njit(_RASTER_SIG, cache=True, nogil=True)(_raster_chunk)
    return _compiled["raster"]


def _raise(status: int) -> None:
    if status == _LOCATE_INDEX or status == _GATHER_INDEX + 1:
        raise IndexError("index out of range for the epoch")
    raise StoreError("a block's stroke or drawing offsets point outside its arrays (damaged block)")


def fused(dataset, render) -> bool:
    """Whether produce() can draw this dataset's chunks for this render stage in one compiled call."""
    tf = dataset.transform
    return render.kind == "raster" and render.fusable and (tf is None or isinstance(tf, Augment))


def produce(dataset, render, idx: np.ndarray, epoch: int, out_x: np.ndarray, out_y: np.ndarray) -> None:
    """Render batches idx[k] (int64 (K, B) item indices of `epoch`) of a qdraw.dataset dataset into out_x[k]
    (render.batch_shape(B)) and their labels into out_y[k] (int64 (K, B)); one compiled call when fused()."""
    idx = np.ascontiguousarray(idx, np.int64)
    if not fused(dataset, render):
        for k in range(len(idx)):
            batch = dataset.batch(idx[k], epoch)
            render(batch, out=out_x[k])
            out_y[k] = batch.labels
        return
    loc = dataset.locator(epoch)
    tf = dataset.transform
    params = tf.params if tf is not None else np.zeros(9)
    enc = render.encoding
    status = _raster_kernel()(idx, loc.offsets, loc.picks, loc.row_src, loc.row_label, *loc.sources.lists,
                              bool(enc.needs_time), np.uint64(dataset.seed), np.uint64(epoch), params,
                              bool(params.any()), enc.kernel, enc.channels, render.line_width, render.margin,
                              bool(enc.reverse), out_x, out_y)
    if status:
        _raise(status)
