"""Model registry and factory: `register_model`, `list_models`, `create_model`, and the weight loading behind them.

The registry follows torchvision's `models/_api.py` (`register_model` raises on a duplicate name, `list_models`) and
timm's `_factory.create_model` (unset kwargs mean "model default"). The architectures themselves are defined and
registered by the top-level `models.py`, which the scripts import; qdraw never imports it (imports go one way), so
code that builds models from a name (a checkpoint's `arch`) works once `models` (or a user's own module) has
registered them. Weights: ImageNet files from the torch hub cache (`pretrained=True`, downloaded when absent and
online) or a local state_dict (`weights=PATH`), with the stem conv adapted to `in_chans` and a classifier of another
size re-initialised. `timm/<name>` builds any timm model when timm is installed. Most models read images; the point
models (qdraw.strokenets) read point sequences, and `model_input(name)` says which a model takes.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

__all__ = [
    "INPUTS", "ModelCfg", "PretrainedWeightsError", "adapt_input_conv", "create_model", "list_models",
    "load_pretrained_state_dict", "load_weights", "model_cfgs", "model_input", "register_model", "set_in_chans",
]

# What a model's forward reads: "raster", float (B, C, H, W) images drawn by qdraw.raster; "points", float (B, L, F)
# point features from qdraw.points.pack_points (F = in_chans).
INPUTS = ("raster", "points")

_model_entrypoints: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str | Callable[..., nn.Module] | None = None) -> Callable:
    """Register a builder under `name` (default: the function's name); usable as `@register_model` or with a name.

    The builder takes `num_classes`, `in_chans` and its own keyword arguments; `create_model` also needs the name in
    `model_cfgs` (stem conv, head, weights URL), which the defining module fills in next to its builders.

    Raises:
        ValueError: the name is already registered, so one variant can never silently replace another.
    """

    def wrapper(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = fn.__name__ if name is None or callable(name) else name
        if key in _model_entrypoints:
            raise ValueError(f"a model named {key!r} is already registered")
        _model_entrypoints[key] = fn
        return fn

    return wrapper(name) if callable(name) else wrapper


def list_models() -> list[str]:
    """Sorted names of the registered models (timm models, reachable as `timm/<name>`, are not listed)."""
    return sorted(_model_entrypoints)


def parse_model_args(text: str) -> dict:
    """``name=value,...`` (train.py --model-args) as a dict: ints, floats, true/false and ':'-separated tuples of
    ints (conv_widths=64:128) are converted, anything else stays a string."""

    def value(v: str):
        if ":" in v:
            return tuple(value(x) for x in v.split(":"))
        if v.lower() in ("true", "false"):
            return v.lower() == "true"
        for cast in (int, float):
            try:
                return cast(v)
            except ValueError:
                pass
        return v

    out = {}
    for part in (p for p in text.split(",") if p.strip()):
        name, sep, v = part.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"--model-args {text!r}: {part!r} is not name=value")
        out[name.strip()] = value(v.strip())
    return out


def model_input(name: str) -> str:
    """What model `name` reads: "raster" (images, and every `timm/<name>`) or "points" (qdraw.points sequences).

    Raises:
        ValueError: `name` is neither a model with an entry in `model_cfgs` nor `timm/<name>`.
    """
    if name.startswith("timm/"):
        return "raster"
    if name not in model_cfgs:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(model_cfgs))}, or timm/<name>")
    return model_cfgs[name].input


@dataclass(frozen=True)
class ModelCfg:
    """What weight loading needs to know about an architecture (a small cousin of timm's `pretrained_cfg`).

    Attributes:
        first_conv: module path of the stem conv, adapted when `in_chans` differs from the weights.
        classifier: module path of the head, re-initialised when `num_classes` differs from the weights.
        url: ImageNet weights; None means the model has none.
        sha256: prefix of the file's SHA-256, checked after a download (torchvision puts it in its file names).
        min_size: smallest input side in px the network can run on; smaller inputs raise ValueError.
        size_multiple: input sides must be multiples of this (cells whose branches disagree on odd sizes).
        pretrained_missing: name fragments of parameters absent from the ImageNet file (modules added here).
        input: what the forward reads, one of INPUTS; min_size and size_multiple apply to "raster" only.
    """

    first_conv: str
    classifier: str
    url: str | None = None
    sha256: str | None = None
    min_size: int = 1
    size_multiple: int = 1
    pretrained_missing: tuple[str, ...] = ()
    input: str = "raster"

    def __post_init__(self) -> None:
        if self.input not in INPUTS:
            raise ValueError(f"ModelCfg.input must be one of {INPUTS}, got {self.input!r}")


# name -> ModelCfg, filled in by the module that registers each builder (models.py).
model_cfgs: dict[str, ModelCfg] = {}


class PretrainedWeightsError(FileNotFoundError):
    """Pretrained weights are neither in the torch hub cache nor downloadable (typically: no network)."""


def adapt_input_conv(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Adapt a stem conv kernel of size (O, C, k, k) to `in_chans` input channels.

    One channel sums the kernel over C, so a greyscale image gives the response the RGB weights give to the same
    image replicated in every channel. More channels cycle through the C kernels, scaled by C / in_chans to keep
    that response for replicated input.
    """
    src = weight.shape[1]
    if in_chans == src:
        return weight
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    reps = math.ceil(in_chans / src)
    return weight.repeat(1, reps, 1, 1)[:, :in_chans] * (src / in_chans)


def set_in_chans(model: nn.Module, path: str, in_chans: int) -> nn.Module:
    """Replace the stem conv at `path` with one taking `in_chans` channels, its fresh init adapted, not redrawn."""
    conv = model.get_submodule(path)
    assert isinstance(conv, nn.Conv2d) and conv.groups == 1, f"{path} is not a plain stem conv"
    if in_chans == conv.in_channels:
        return model
    new = nn.Conv2d(
        in_chans, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
        bias=conv.bias is not None, padding_mode=conv.padding_mode,
    )
    with torch.no_grad():
        new.weight.copy_(adapt_input_conv(conv.weight, in_chans))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    model.set_submodule(path, new)
    return model


def _under(key: str, prefix: str) -> bool:
    return key == prefix or key.startswith(prefix + ".")


def load_weights(
    model: nn.Module, state_dict: dict[str, torch.Tensor], cfg: ModelCfg, allow_missing: tuple[str, ...] = ()
) -> None:
    """Load `state_dict` into `model` built for another head size or input channel count.

    The stem conv kernel is adapted with `adapt_input_conv`; classifier tensors whose shapes differ from the model's
    are dropped (that head keeps its fresh init); everything else must match exactly.

    Raises:
        RuntimeError: keys are missing (other than the dropped head and `allow_missing` fragments) or unexpected, or
            a non-classifier tensor has the wrong shape.
    """
    own = model.state_dict()
    state = OrderedDict(state_dict)
    stem = f"{cfg.first_conv}.weight"
    # Only image stems (O, C, k, k) are adapted: a point model's channels are distinct features (qdraw.points), so
    # a file for another F is refused by the shape check below rather than guessed at.
    if stem in state and stem in own and own[stem].ndim == 4 and state[stem].shape[1] != own[stem].shape[1]:
        state[stem] = adapt_input_conv(state[stem], own[stem].shape[1])
    dropped = {k for k, v in state.items() if _under(k, cfg.classifier) and k in own and v.shape != own[k].shape}
    for key in dropped:
        del state[key]
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in dropped and not any(f in k for f in allow_missing)]
    if missing or unexpected:
        raise RuntimeError(f"weights do not fit the model: missing keys {missing}, unexpected keys {unexpected}")


def _read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state_dict from `path`: a bare one or a training checkpoint holding it under "model" (or "state_dict")."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, dict):
        raise TypeError(f"{path} holds a {type(obj).__name__}, not a state_dict")
    for key in ("model", "state_dict"):
        if isinstance(obj.get(key), dict):
            return obj[key]
    return obj


def load_pretrained_state_dict(name: str) -> dict[str, torch.Tensor]:
    """ImageNet weights of `name` from the torch hub cache (`$TORCH_HOME/hub/checkpoints`), downloaded if absent.

    Raises:
        ValueError: the model has no pretrained weights.
        PretrainedWeightsError: the file is not cached and cannot be downloaded; the message says where to put it.
    """
    cfg = model_cfgs[name]
    if cfg.url is None:
        raise ValueError(f"model {name!r} has no pretrained weights")
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(cfg.url).path)
    if not cached.is_file():
        cached.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(cfg.url, str(cached), hash_prefix=cfg.sha256, progress=False)
        except OSError as e:  # URLError, HTTPError, socket timeouts and refused connections are all OSErrors
            reason = getattr(e, "reason", e)
            raise PretrainedWeightsError(
                f"pretrained weights for {name!r} are not cached and could not be downloaded from {cfg.url} "
                f"({reason}); download that file elsewhere and copy it to {cached}"
            ) from None
    return torch.load(cached, map_location="cpu", weights_only=True)


def _check_input_size(module: nn.Module, args: tuple, *, name: str, cfg: ModelCfg) -> None:
    """Forward pre-hook: a clear error instead of a shape RuntimeError deep inside the network."""
    if not args:  # called with keyword inputs only: nothing to check
        return
    if cfg.input == "points":
        chans = getattr(module, "in_chans", None)
        if args[0].ndim != 3 or (chans is not None and args[0].shape[-1] != chans):
            raise ValueError(f"{name} reads point features float (B, L, {chans or 'F'}) from qdraw.points.pack_points, "
                             f"got a tensor of shape {tuple(args[0].shape)}")
        return
    height, width = args[0].shape[-2:]
    if min(height, width) < cfg.min_size:
        raise ValueError(f"{name} needs inputs of at least {cfg.min_size}x{cfg.min_size} px, got {height}x{width}")
    if height % cfg.size_multiple or width % cfg.size_multiple:
        raise ValueError(f"{name} needs input sides that are multiples of {cfg.size_multiple}, got {height}x{width}")


def create_model(
    name: str,
    num_classes: int,
    in_chans: int | None = None,
    pretrained: bool = False,
    weights: str | os.PathLike | None = None,
    **kwargs,
) -> nn.Module:
    """Build a registered model (or `timm/<name>`) with a `num_classes` head.

    Image models take float (B, in_chans, H, W); point models (`model_input(name) == "points"`) take float
    (B, L, in_chans) point features from qdraw.points.

    Args:
        name: a key of `list_models()`, or `timm/<timm model name>` when timm is installed.
        num_classes: size of the classifier output.
        in_chans: image channels (the stem conv is adapted; 1 = greyscale) or features per point (6, or 7 with
            time); None means the model's default (3 for images, 6 for points).
        pretrained: load ImageNet weights from the torch hub cache, downloading them if needed.
        weights: path of a local state_dict (or training checkpoint) to load instead.
        **kwargs: passed to the builder; None values are dropped so "unset" means the model's default.

    Raises:
        ValueError: unknown name, bad sizes, or both `pretrained` and `weights`.
        PretrainedWeightsError: `pretrained=True` without cached weights or network.
    """
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if pretrained and weights is not None:
        raise ValueError("pass pretrained=True or weights=PATH, not both")
    if num_classes < 1 or (in_chans is not None and in_chans < 1):
        raise ValueError(f"num_classes and in_chans must be positive, got {num_classes} and {in_chans}")
    if name.startswith("timm/"):
        return _create_timm(name.removeprefix("timm/"), num_classes, in_chans or 3, pretrained, weights, **kwargs)
    if name not in _model_entrypoints:
        known = ", ".join(list_models()) or "none registered (the shipped ones are in models.py: import it first)"
        raise ValueError(f"unknown model {name!r}; known models: {known}, or timm/<name>")
    if name not in model_cfgs:
        raise ValueError(f"model {name!r} is registered but has no entry in models.model_cfgs")
    cfg = model_cfgs[name]
    if in_chans is not None:
        kwargs["in_chans"] = in_chans
    model = _model_entrypoints[name](num_classes=num_classes, **kwargs)
    if pretrained:
        load_weights(model, load_pretrained_state_dict(name), cfg, allow_missing=cfg.pretrained_missing)
    elif weights is not None:
        load_weights(model, _read_state_dict(weights), cfg)
    model.register_forward_pre_hook(partial(_check_input_size, name=name, cfg=cfg))
    return model


def _create_timm(
    arch: str, num_classes: int, in_chans: int, pretrained: bool, weights: str | os.PathLike | None, **kwargs
) -> nn.Module:
    """Any timm model; timm does its own pretrained loading, ours handles `weights=`."""
    try:
        import timm
    except ImportError:
        raise ValueError(f"timm/{arch} needs timm, which is not installed") from None
    model = timm.create_model(arch, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans, **kwargs)
    if weights is not None:
        first_conv, classifier = model.pretrained_cfg["first_conv"], model.pretrained_cfg["classifier"]
        if not (isinstance(first_conv, str) and isinstance(classifier, str)):
            raise ValueError(f"timm/{arch} has several stems or heads; load its weights with timm instead")
        load_weights(model, _read_state_dict(weights), ModelCfg(first_conv, classifier))
    return model
