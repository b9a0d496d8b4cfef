"""Export a checkpoint to ONNX: the uint8 batch the loaders draw in, class probabilities out, self-describing.

The graph wraps the network with what predict.py does around it: ``x.float() / 255`` (qdraw.loader.to_model_input)
before and a softmax after, so an app feeds it the raw uint8 (B, C, S, S) image and reads probabilities; the batch
axis is dynamic. The file's metadata (``metadata_props``) names the classes (a JSON list), the encoding, the image
size, the line width and margin (resolved, not "default"), the kind of strokes trained on (simplified or raw), the
architecture and which weights (raw or EMA): everything qdraw.classifier needs to draw its input the way training
did, with no checkpoint beside it. The export is checked by running the file with onnxruntime against the torch
model on a batch of drawings of several sizes; the file is written atomically only when they agree.

The graph comes from PyTorch's torch.export-based exporter (``torch.onnx.export(..., dynamo=True)``, which needs the
onnxscript package), the default since PyTorch 2.9; the TorchScript-based one is deprecated and will be removed.
Every registered architecture passes the checks above with it (11 of 11, checked at 64 px), so no model keeps the
legacy path; dpn68 could not be exported by the legacy one at all (its pooling size, read from x.size(), became a
list the TorchScript symbolic could not convert). What the graph takes (example, name, dynamic axes) comes from one
function of the checkpoint, graph_input, so a model of another input kind is one more branch there.
"""
from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from .atomic import write_bytes
from .checkpoint import CheckpointError, load_checkpoint
from .classifier import ONNX_FORMAT, onnx_info
from .inference import build_model, select_weights
from .points import pack_points
from .raster import check_geometry, pack_strokes
from .render import spec_of_checkpoint

if TYPE_CHECKING:
    import onnx

TOLERANCE = 1e-4  # largest probability difference onnxruntime may show against torch (the bound)
MIN_OPSET = 18  # the torch.export-based exporter writes opset 18 or newer; asked for 17 it logs a failed conversion


@dataclass(frozen=True)
class GraphInput:
    """What an exported graph takes: its input's name, an example tensor to trace with, the axes left dynamic
    (axis -> name; the example's size on them must not be 0 or 1, which torch.export would specialise), how the
    metadata describes it, and batches of n random inputs for the onnxruntime check."""

    name: str
    example: torch.Tensor
    dynamic: dict[int, str]
    description: str
    random: Callable[[int, np.random.Generator], np.ndarray]


def graph_input(ckpt: dict) -> GraphInput:
    """The input of a checkpoint's exported graph: an image model's uint8 (batch, channels, size, size) with a dynamic
    batch, or a point model's float32 (batch, length, features) (qdraw.points) with batch and length dynamic."""
    spec = spec_of_checkpoint(ckpt)
    if spec.kind == "points":
        return GraphInput("points", torch.zeros(2, 8, spec.channels), {0: "batch", 1: "length"},
                          "points: float32 (batch, length, features), packed by qdraw.points",
                          lambda n, rng: _random_points(n, rng, spec.time))
    size, channels = spec.image_size, int(ckpt["model_args"].get("in_chans", 3))

    def ink(n: int, rng: np.random.Generator) -> np.ndarray:  # sparse strokes, like a drawing, not uniform noise
        shape = (n, channels, size, size)
        return np.where(rng.random(shape) < 0.1, rng.integers(55, 256, shape), 0).astype(np.uint8)

    return GraphInput("image", torch.zeros(2, channels, size, size, dtype=torch.uint8), {0: "batch"},
                      "image: uint8 (batch, channels, size, size), drawn by qdraw.raster", ink)


def _random_points(n: int, rng: np.random.Generator, time: bool) -> np.ndarray:
    """n random drawings of 1-5 strokes packed as a point model's input, at a random length (2..63 points)."""
    drawings = [[np.c_[rng.integers(0, 256, (k, 2)), np.sort(rng.integers(0, 9000, k))] for k in
                 rng.integers(1, 12, rng.integers(1, 6))] for _ in range(n)]
    xy, t, strokes, offsets = pack_strokes(drawings)
    return pack_points(xy, t if time else None, strokes, offsets, int(rng.integers(2, 64)))


class Probabilities(nn.Module):
    """The network with what predict.py does around it (qdraw.render.to_model_input) and a softmax: uint8 pictures
    (B, C, S, S) are scaled by 1/255 first, point sequences go in as they are; out float32 (B, classes)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(x.float() / 255 if x.dtype == torch.uint8 else x), 1)


def metadata(ckpt: dict, weights: str, described: str) -> dict[str, str]:
    """The metadata_props of the exported file: string keys and values (ONNX allows nothing else). ``input_spec`` is
    the checkpoint's InputSpec as JSON; a picture model also gets its raster fields, resolved."""
    spec = spec_of_checkpoint(ckpt)
    kind = ckpt.get("data_kind") or ("raw" if spec.needs_time else "simplified")
    raster = {}
    if spec.kind == "raster":
        width, margin = check_geometry(spec.image_size, spec.line_width)
        raster = {"encoding": spec.encoding, "image_size": str(spec.image_size), "line_width": str(width),
                  "margin": str(margin)}
    return {"qdraw_format": str(ONNX_FORMAT), "classes": json.dumps(list(ckpt["classes"])), **raster,
            "input_spec": json.dumps(spec.to_dict()), "data_kind": kind,
            "arch": str(ckpt["arch"]), "weights": weights, "epoch": str(ckpt.get("epoch")),
            "input": described,
            "output": "probabilities: float32 (batch, classes), softmax, columns in 'classes' order"}


def to_onnx(wrapper: nn.Module, inp: GraphInput, opset: int) -> onnx.ModelProto:
    """The graph from the torch.export-based exporter, inp's dynamic axes as torch.export.Dim."""
    dims = {axis: torch.export.Dim(name) for axis, name in inp.dynamic.items()}
    # dynamic_shapes follows forward's arguments: one tensor, one {axis: Dim} dict. verbose=False: the exporter
    # prints its progress to stdout otherwise, into export.py's one-line summary.
    with warnings.catch_warnings():
        # torch.export's own traced code calls torch._check_is_size (the point models' data-dependent lengths), which
        # warns of its future removal: nothing of ours to change
        warnings.filterwarnings("ignore", message=".*_check_is_size will be removed", category=FutureWarning)
        # nn.GRU/nn.LSTM re-assign their flat weight list while traced (torch's own modules, not ours)
        warnings.filterwarnings("ignore", message=".*_flat_weights.*were assigned during export", category=UserWarning)
        program = torch.onnx.export(wrapper, (inp.example,), input_names=[inp.name], output_names=["probabilities"],
                                    dynamic_shapes=(dims,), opset_version=opset, dynamo=True, verbose=False)
    return program.model_proto


def check_export(data: bytes, wrapper: nn.Module, inp: GraphInput, seed: int = 0) -> float:
    """Largest |onnxruntime - torch| probability over random batches of 1 and 5 inputs; ValueError above TOLERANCE."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # see qdraw.classifier
    session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    worst = 0.0
    for n in (1, 5):
        x = inp.random(n, rng)
        with torch.no_grad():
            ref = wrapper(torch.from_numpy(x)).numpy()
        got = session.run(None, {inp.name: x})[0]
        if got.shape != ref.shape:
            raise ValueError(f"onnxruntime returned shape {got.shape}, torch {ref.shape}")
        worst = max(worst, float(np.abs(got - ref).max()))
    if not worst <= TOLERANCE:
        raise ValueError(f"onnxruntime differs from torch by {worst:.3g} (> {TOLERANCE}); file not written")
    return worst


def export_onnx(checkpoint: str | Path, output: str | Path, weights: str = "auto", opset: int = MIN_OPSET) -> dict:
    """Export checkpoint to output (written atomically after the onnxruntime check); returns a summary dict."""
    import onnx

    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset}: the torch.export-based ONNX exporter writes opset {MIN_OPSET} or newer")
    ckpt = load_checkpoint(checkpoint)
    choice, _ = select_weights(ckpt, weights, checkpoint)
    wrapper = Probabilities(build_model(ckpt, checkpoint, weights)).eval()
    spec, inp = spec_of_checkpoint(ckpt), graph_input(ckpt)
    try:
        graph = to_onnx(wrapper, inp, opset)
    except Exception as exc:  # the exporter's errors are long; the first line names the unsupported operator
        raise CheckpointError(f"{checkpoint}: cannot export a {ckpt['arch']} to ONNX "
                              f"({type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]})") from exc
    meta = metadata(ckpt, choice, inp.description)
    for key, value in meta.items():
        graph.metadata_props.add(key=key, value=value)
    graph.producer_name, graph.doc_string = "qdraw export.py", f"{ckpt['arch']} from {Path(checkpoint).name}"
    onnx.checker.check_model(graph)
    data = graph.SerializeToString()
    onnx_info(meta, output)  # the reader accepts what was written (one definition of the fields)
    worst = check_export(data, wrapper, inp)
    write_bytes(output, data)
    return {"arch": ckpt["arch"], "weights": choice, "classes": len(ckpt["classes"]), "input": spec.describe(),
            "line_width": meta.get("line_width"), "max_diff": worst, "bytes": len(data)}
