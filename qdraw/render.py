"""Render stages: what turns a StrokeBatch into a model's input, chosen by the model's InputSpec.

A model's checkpoint says which input it takes (:class:`InputSpec`, saved as ``ckpt["input"]``):

* ``raster``: a picture drawn by qdraw.raster in an encoding (qdraw.encoding), uint8 (B, C, S, S); CNNs.
* ``points``: each drawing's points as a padded sequence (qdraw.points), float32 (B, L, F); models that read
  strokes.

train.py, predict.py, serve.py, export.py and bench.py build the stage from the spec with :func:`make_render`, so
nothing else decides how a model is fed, and :func:`to_model_input` is the one place a batch becomes the model's
tensor on its device (uint8 pictures are divided by 255 there, after a copy four times smaller than float32).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from .batch import StrokeBatch
from .encoding import Encoding, check_time, get_encoding
from .raster import check_geometry, rasterize

KINDS = ("raster", "points")


@dataclass(frozen=True)
class InputSpec:
    """How a model wants its input: the render stage's kind and settings (module docstring).

    raster: encoding name, image_size in px and line_width (None: the raster default for the size).
    points: max_len points per drawing (longer ones are resampled, qdraw.points) and time (a dt feature, raw data).
    """

    kind: str = "raster"
    encoding: str | None = None
    image_size: int | None = None
    line_width: int | None = None
    max_len: int | None = None
    time: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"input kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.kind == "raster" and (self.encoding is None or self.image_size is None):
            raise ValueError("a raster input needs an encoding and an image size")
        if self.kind == "points" and not (isinstance(self.max_len, int) and 1 <= self.max_len <= 4096):
            raise ValueError(f"a points input needs max_len in 1..4096, got {self.max_len!r}")

    @classmethod
    def raster(cls, encoding: str, image_size: int, line_width: int | None = None) -> "InputSpec":
        return cls("raster", encoding, int(image_size), None if line_width is None else int(line_width))

    @classmethod
    def points(cls, max_len: int, time: bool = False) -> "InputSpec":
        return cls("points", max_len=int(max_len), time=bool(time))

    @property
    def needs_time(self) -> bool:
        """Whether the data must carry timing (a raw store)."""
        return self.time if self.kind == "points" else get_encoding(self.encoding).needs_time

    @property
    def channels(self) -> int:
        """Channels of a picture, or features per point: the model's ``in_chans``."""
        if self.kind == "points":
            from .points import num_features
            return num_features(self.time)
        return get_encoding(self.encoding).channels

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None and v is not False} | {"kind": self.kind}

    @classmethod
    def from_dict(cls, d: dict) -> "InputSpec":
        if not isinstance(d, dict) or set(d) - {"kind", "encoding", "image_size", "line_width", "max_len", "time"}:
            raise ValueError(f"not an input spec: {d!r}")
        return cls(**d)

    def describe(self) -> str:
        if self.kind == "points":
            return f"points (<= {self.max_len} a drawing{', with dt' if self.time else ''})"
        return f"{self.encoding} {self.image_size}px"


def spec_of_checkpoint(ckpt: dict) -> InputSpec:
    """The InputSpec a checkpoint was trained with: its ``input`` field, or for checkpoints written before there was
    one, the raster fields (encoding, image size, line width) every earlier checkpoint has."""
    if "input" in ckpt:
        return InputSpec.from_dict(ckpt["input"])
    width = ckpt.get("line_width", ckpt.get("config", {}).get("line_width"))
    return InputSpec.raster(ckpt["encoding"], int(ckpt["image_size"]), None if width is None else int(width))


class RasterRender:
    """Pictures: encode and draw a StrokeBatch into uint8 (B, C, S, S) (qdraw.raster's geometry)."""

    kind = "raster"

    def __init__(self, spec: InputSpec):
        self.spec = spec
        self.encoding: Encoding = get_encoding(spec.encoding)
        self.image_size = spec.image_size
        self.line_width, self.margin = check_geometry(spec.image_size, spec.line_width)
        self.dtype = torch.uint8

    @property
    def fusable(self) -> bool:
        """True when a loader thread can draw whole chunks in one compiled call (the encoding has a kernel)."""
        return self.encoding.kernel is not None

    def batch_shape(self, n: int) -> tuple[int, ...]:
        return n, self.encoding.channels, self.image_size, self.image_size

    def check_data(self, has_time: bool, where: object) -> None:
        check_time(self.encoding, has_time, where)

    def __call__(self, batch: StrokeBatch, out: np.ndarray | None = None) -> np.ndarray:
        t = batch.t if self.encoding.needs_time else None
        return rasterize(batch.xy, t, batch.strokes, batch.drawings, self.encoding, self.image_size,
                         self.line_width, self.margin, out=out)


class PointsRender:
    """Point sequences: a StrokeBatch packed into float32 (B, max_len, F) (qdraw.points' feature layout)."""

    kind = "points"
    fusable = True

    def __init__(self, spec: InputSpec):
        from .points import num_features

        self.spec, self.max_len, self.time = spec, spec.max_len, spec.time
        self.features = num_features(spec.time)
        self.dtype = torch.float32

    def batch_shape(self, n: int) -> tuple[int, ...]:
        return n, self.max_len, self.features

    def check_data(self, has_time: bool, where: object) -> None:
        if self.time and not has_time:
            raise ValueError(f"this model reads stroke timing (dt), but {where} is simplified (no t); use raw strokes")

    def __call__(self, batch: StrokeBatch, out: np.ndarray | None = None) -> np.ndarray:
        from .points import pack_points

        return pack_points(batch.xy, batch.t if self.time else None, batch.strokes, batch.drawings, self.max_len,
                           out=out)


def make_render(spec: InputSpec) -> RasterRender | PointsRender:
    """The render stage of an input spec."""
    return RasterRender(spec) if spec.kind == "raster" else PointsRender(spec)


def to_model_input(x: torch.Tensor, device: torch.device | str, channels_last: bool = False) -> torch.Tensor:
    """A rendered batch on device as the model takes it: uint8 pictures → float32 in [0, 1] (copied as uint8: 4x
    less to transfer), NHWC when channels_last; point sequences (float32) as they are."""
    x = x.to(device, non_blocking=True)
    if x.dtype == torch.uint8:
        x = x.float().div_(255)
        return x.contiguous(memory_format=torch.channels_last) if channels_last and x.ndim == 4 else x
    return x.float()
