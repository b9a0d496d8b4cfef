"""Export a checkpoint to ONNX: the uint8 batch the loaders draw in, class probabilities out, self-describing.

The graph wraps the network with what predict.py does around it: ``x.float() / 255`` (qdraw.loader.to_model_input)
before and a softmax after, so an app feeds it the raw uint8 (B, C, S, S) image and reads probabilities; the batch
axis is dynamic. The file's metadata (``metadata_props``) names the classes (a JSON list), the encoding, the image
size, the line width and margin (resolved, not "default"), the kind of strokes trained on (simplified or raw), the
architecture and which weights (raw or EMA): everything qdraw.classifier needs to draw its input the way training
did, with no checkpoint beside it. The export is checked by running the file with onnxruntime against the torch
model on a batch of drawings of several sizes; the file is written atomically only when they agree.
"""
from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .atomic import write_bytes
from .checkpoint import CheckpointError, load_checkpoint, raster_spec
from .classifier import ONNX_FORMAT, onnx_info
from .inference import build_model, select_weights
from .raster import check_geometry

TOLERANCE = 1e-4  # largest probability difference onnxruntime may show against torch (the bound)


class Probabilities(nn.Module):
    """The network with its input scaling and softmax: uint8 (B, C, S, S) → float32 (B, classes) probabilities."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(x.float() / 255), 1)


def metadata(ckpt: dict, weights: str) -> dict[str, str]:
    """The metadata_props of the exported file: string keys and values (ONNX allows nothing else)."""
    spec = raster_spec(ckpt)
    width, margin = check_geometry(spec.image_size, spec.line_width)
    kind = ckpt.get("data_kind") or ("raw" if spec.encoding == "time" else "simplified")
    return {"qdraw_format": str(ONNX_FORMAT), "classes": json.dumps(list(ckpt["classes"])), "encoding": spec.encoding,
            "image_size": str(spec.image_size), "line_width": str(width), "margin": str(margin), "data_kind": kind,
            "arch": str(ckpt["arch"]), "weights": weights, "epoch": str(ckpt.get("epoch")),
            "input": "image: uint8 (batch, channels, size, size), drawn by qdraw.raster",
            "output": "probabilities: float32 (batch, classes), softmax, columns in 'classes' order"}


def _to_onnx(wrapper: nn.Module, sample: torch.Tensor, opset: int) -> bytes:
    """The serialised graph, batch axis dynamic (TorchScript-based exporter: no onnxscript needed)."""
    buf = io.BytesIO()
    with warnings.catch_warnings():  # the zoo's input-size checks become constants: right, the size is fixed
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(wrapper, (sample,), buf, input_names=["image"], output_names=["probabilities"],
                          dynamic_axes={"image": {0: "batch"}, "probabilities": {0: "batch"}}, opset_version=opset,
                          dynamo=False)
    return buf.getvalue()


def check_export(data: bytes, wrapper: nn.Module, channels: int, size: int, seed: int = 0) -> float:
    """Largest |onnxruntime - torch| probability over random ink batches of 1 and 5 images; ValueError above
    TOLERANCE."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # see qdraw.classifier
    session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    worst = 0.0
    for n in (1, 5):
        x = np.where(rng.random((n, channels, size, size)) < 0.1, rng.integers(55, 256, (n, channels, size, size)),
                     0).astype(np.uint8)  # sparse strokes, like a drawing, rather than uniform noise
        with torch.no_grad():
            ref = wrapper(torch.from_numpy(x)).numpy()
        got = session.run(None, {"image": x})[0]
        if got.shape != ref.shape:
            raise ValueError(f"onnxruntime returned shape {got.shape}, torch {ref.shape}")
        worst = max(worst, float(np.abs(got - ref).max()))
    if not worst <= TOLERANCE:
        raise ValueError(f"onnxruntime differs from torch by {worst:.3g} (> {TOLERANCE}); file not written")
    return worst


def export_onnx(checkpoint: str | Path, output: str | Path, weights: str = "auto", opset: int = 17) -> dict:
    """Export checkpoint to output (written atomically after the onnxruntime check); returns a summary dict."""
    import onnx

    ckpt = load_checkpoint(checkpoint)
    choice, _ = select_weights(ckpt, weights, checkpoint)
    wrapper = Probabilities(build_model(ckpt, checkpoint, weights)).eval()
    spec = raster_spec(ckpt)
    channels = int(ckpt["model_args"].get("in_chans", 3))
    sample = torch.zeros(2, channels, spec.image_size, spec.image_size, dtype=torch.uint8)
    try:
        graph = onnx.load_from_string(_to_onnx(wrapper, sample, opset))
    except Exception as exc:  # the exporter's errors are long; the first line names the unsupported operator
        raise CheckpointError(f"{checkpoint}: cannot export a {ckpt['arch']} to ONNX "
                              f"({type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]})") from exc
    meta = metadata(ckpt, choice)
    for key, value in meta.items():
        graph.metadata_props.add(key=key, value=value)
    graph.producer_name, graph.doc_string = "qdraw export.py", f"{ckpt['arch']} from {Path(checkpoint).name}"
    onnx.checker.check_model(graph)
    data = graph.SerializeToString()
    onnx_info(meta, output)  # the reader accepts what was written (one definition of the fields)
    worst = check_export(data, wrapper, channels, spec.image_size)
    write_bytes(output, data)
    return {"arch": ckpt["arch"], "weights": choice, "classes": len(ckpt["classes"]), "encoding": spec.encoding,
            "image_size": spec.image_size, "line_width": int(meta["line_width"]), "max_diff": worst,
            "bytes": len(data)}
