"""A trained model as predict.py and serve.py use it: a uint8 image batch in, class probabilities out, plus the
fields that say how its input must be drawn.

Two kinds of file hold one: a training checkpoint (``.pth``, the network rebuilt through the registry, run by torch)
and an exported ONNX model (``.onnx``, run by onnxruntime; no torch model is built). Both give a
:class:`Classifier`, so the code that draws the batches (the loaders, the server) is the same for both and an app
that runs the ONNX file prepares strokes exactly as training did. The ONNX file describes itself: qdraw.export writes
the classes, encoding, image size, line width, margin and the kind of data trained on into its metadata, and
:func:`onnx_info` reads them back with the same checks a checkpoint gets.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .checkpoint import CheckpointError, check_compatible, load_checkpoint
from .inference import build_model, select_weights
from .raster import check_geometry
from .render import InputSpec, spec_of_checkpoint, to_model_input

ONNX_FORMAT = 1  # version of the metadata layout below
ONNX_KEYS = ("qdraw_format", "classes", "data_kind", "arch", "weights")
RASTER_KEYS = ("encoding", "image_size", "line_width", "margin")  # a picture model's (files before input_spec: all)


@dataclass
class Classifier:
    """What a model needs around it: its classes, how to draw its input, and the batch function.

    ``info`` is checkpoint-shaped (``classes, encoding, image_size, arch``) so check_compatible applies to both
    kinds; ``data_kind`` is "simplified" or "raw": the strokes it was trained on (the server prepares a request's
    strokes the same way). Calling it maps a uint8 (B, C, S, S) batch (torch or numpy) to float32 (B, classes)
    softmax probabilities as a numpy array.
    """

    path: Path
    info: dict
    spec: InputSpec
    data_kind: str
    weights: str  # "raw" or "ema": which weights of the training run these are
    backend: str  # "torch" or "onnxruntime"
    _run: object = field(repr=False, default=None)

    @property
    def classes(self) -> list[str]:
        return list(self.info["classes"])

    def __call__(self, x: torch.Tensor | np.ndarray) -> np.ndarray:
        return self._run(x)


def is_onnx(path: str | Path) -> bool:
    """An ONNX file by its name (``.onnx``): checkpoints are ``.pth`` and never end so."""
    return Path(path).suffix.lower() == ".onnx"


def torch_classifier(path: str | Path, device: torch.device, weights: str = "auto",
                     amp_dtype: torch.dtype | None = None) -> Classifier:
    """A checkpoint's network (weights as select_weights chooses) in eval mode on device."""
    ckpt = load_checkpoint(path)
    model = build_model(ckpt, path, weights).to(device)
    choice, _ = select_weights(ckpt, weights, path)

    @torch.no_grad()
    def run(x: torch.Tensor | np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(to_model_input(x, device))
        return torch.softmax(logits.float(), 1).cpu().numpy()

    spec = spec_of_checkpoint(ckpt)
    info = {"classes": list(ckpt["classes"]), "encoding": spec.encoding, "image_size": spec.image_size,
            "input": spec.to_dict(), "arch": ckpt["arch"]}
    kind = ckpt.get("data_kind") or ("raw" if spec.needs_time else "simplified")
    return Classifier(Path(path), info, spec, kind, choice, "torch", run)


def onnx_info(meta: dict[str, str], path: str | Path) -> tuple[dict, InputSpec, str, str]:
    """(info, raster spec, data kind, weights) from an exported file's metadata; CheckpointError when it lacks
    qdraw's fields or they do not hold together (the same checks a checkpoint's fields get)."""
    try:
        spec = InputSpec.from_dict(json.loads(meta["input_spec"])) if "input_spec" in meta else None
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: bad metadata 'input_spec' ({exc})") from exc
    needed = ONNX_KEYS + (RASTER_KEYS if spec is None or spec.kind == "raster" else ())
    missing = [k for k in needed if k not in meta]
    if missing:
        raise CheckpointError(f"{path}: not an ONNX model exported by export.py (metadata lacks {', '.join(missing)})")
    if meta["qdraw_format"] != str(ONNX_FORMAT):
        raise CheckpointError(f"{path}: metadata format {meta['qdraw_format']!r}, this code reads {ONNX_FORMAT}")
    try:
        classes = json.loads(meta["classes"])
        if spec is None or spec.kind == "raster":
            size, width, margin = int(meta["image_size"]), int(meta["line_width"]), int(meta["margin"])
            check_geometry(size, width, margin)
            spec = InputSpec.raster(meta["encoding"], size, width)
    except ValueError as exc:
        raise CheckpointError(f"{path}: bad metadata ({exc})") from exc
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise CheckpointError(f"{path}: metadata 'classes' must be a non-empty JSON list of names")
    if meta["data_kind"] not in ("simplified", "raw"):
        raise CheckpointError(f"{path}: metadata 'data_kind' must be simplified or raw, got {meta['data_kind']!r}")
    info = {"classes": classes, "encoding": spec.encoding, "image_size": spec.image_size, "input": spec.to_dict(),
            "arch": meta["arch"]}
    return info, spec, meta["data_kind"], meta["weights"]


def onnx_classifier(path: str | Path, weights: str = "auto", threads: int | None = None) -> Classifier:
    """An exported model run by onnxruntime on the CPU. weights other than auto must name the weights it holds."""
    import onnxruntime as ort  # only here: predict.py on a checkpoint does not need it

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such ONNX model")
    opts = ort.SessionOptions()
    # No spin-waiting between ops: on a shared machine spinning threads burn cores that other jobs need, and a
    # server's requests arrive far apart compared with the microseconds spinning saves.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        opts.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf/... for unreadable files
        first = (str(exc).strip().splitlines() or ["no detail"])[0][:200]
        raise CheckpointError(f"{path}: unreadable ONNX model ({type(exc).__name__}: {first})") from exc
    info, spec, kind, held = onnx_info(session.get_modelmeta().custom_metadata_map, path)
    if weights not in ("auto", held):
        raise CheckpointError(f"{path}: holds the {held} weights (chosen at export); use --weights auto or {held}")
    name = session.get_inputs()[0].name
    dtype = np.uint8 if spec.kind == "raster" else np.float32  # pictures uint8, point sequences float32

    def run(x: torch.Tensor | np.ndarray) -> np.ndarray:
        x = x.numpy() if isinstance(x, torch.Tensor) else x
        return session.run(None, {name: np.ascontiguousarray(x, dtype)})[0]

    return Classifier(path, info, spec, kind, held, "onnxruntime", run)


def load_classifier(path: str | Path, device: torch.device | None = None, weights: str = "auto",
                    amp_dtype: torch.dtype | None = None) -> Classifier:
    """A Classifier from a checkpoint (torch, on device) or an exported ``.onnx`` file (onnxruntime, CPU)."""
    if is_onnx(path):
        return onnx_classifier(path, weights)
    return torch_classifier(path, device or torch.device("cpu"), weights, amp_dtype)


def check_fits(clf: Classifier, classes: list[str]) -> None:
    """CheckpointError when the model was trained on other classes than the data's."""
    check_compatible(clf.info, classes=classes)
