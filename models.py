"""Model registry and the architecture zoo: one builder per key, `create_model(name, num_classes, ...)` to build any.

The registry follows torchvision's `models/_api.py` (`register_model`, `list_models`) and timm's
`_factory.create_model` (unset kwargs mean "model default"). torchvision supplies the models it has; Cadene's
`pretrainedmodels` supplies SE-ResNeXt, NASNet-A-Mobile, DPN-68 and Inception-ResNet-v2, with their fixed
`AvgPool2d(7|8)` heads swapped for adaptive pooling so they run at Quick, Draw! sizes (64-256 px; pretrainedmodels
issues #164 and #171); CBAM-ResNet-50 is built here from `qdraw.cbam`. Every model takes `in_chans` (1 for the
greyscale baseline) and loads ImageNet weights (`pretrained=True`) or a local state_dict (`weights=PATH`), with the
first conv adapted to `in_chans` and a classifier of a different size re-initialised. `timm/<name>` builds any timm
model when timm is installed.
"""

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
from torchvision import models as tvm
from torchvision.models.resnet import ResNet

from qdraw.cbam import CBAMBottleneck

__all__ = [
    "ModelCfg", "PretrainedWeightsError", "adapt_input_conv", "create_model", "list_models",
    "load_pretrained_state_dict", "load_weights", "model_cfgs", "register_model",
]

_model_entrypoints: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str | Callable[..., nn.Module] | None = None) -> Callable:
    """Register a builder under `name` (default: the function's name); usable as `@register_model` or with a name.

    The builder takes `num_classes`, `in_chans` and its own keyword arguments; `create_model` also needs the name in
    `model_cfgs` (stem conv, head, weights URL).

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
    """

    first_conv: str
    classifier: str
    url: str | None = None
    sha256: str | None = None
    min_size: int = 1
    size_multiple: int = 1
    pretrained_missing: tuple[str, ...] = ()


def _tv_cfg(weights: tvm.WeightsEnum, first_conv: str, classifier: str, **kwargs) -> ModelCfg:
    """Config for torchvision weights; torch hub's file names carry the SHA-256 prefix after the last dash."""
    match = torch.hub.HASH_REGEX.search(os.path.basename(weights.url))
    return ModelCfg(first_conv, classifier, url=weights.url, sha256=match.group(1) if match else None, **kwargs)


_CADENE = "http://data.lip6.fr/cadene/pretrainedmodels/"
# Cadene's file names have a hex suffix too, but pretrainedmodels never checks it, so we do not rely on it.
model_cfgs: dict[str, ModelCfg] = {
    "mobilenetv2": _tv_cfg(tvm.MobileNet_V2_Weights.DEFAULT, "features.0.0", "classifier.1"),
    "squeezenet": _tv_cfg(tvm.SqueezeNet1_1_Weights.DEFAULT, "features.0", "classifier.1", min_size=17),
    "resnet34": _tv_cfg(tvm.ResNet34_Weights.DEFAULT, "conv1", "fc"),
    "resnet50": _tv_cfg(tvm.ResNet50_Weights.DEFAULT, "conv1", "fc"),
    "densenet121": _tv_cfg(tvm.DenseNet121_Weights.DEFAULT, "features.conv0", "classifier", min_size=29),
    "densenet161": _tv_cfg(tvm.DenseNet161_Weights.DEFAULT, "features.conv0", "classifier", min_size=29),
    # CBAM has no ImageNet release in either library: start from ResNet-50's and leave the attention at init.
    "cbam_resnet50": _tv_cfg(tvm.ResNet50_Weights.DEFAULT, "conv1", "fc", pretrained_missing=(".cbam.",)),
    "se_resnext50_32x4d": ModelCfg(
        "layer0.conv1", "last_linear", url=_CADENE + "se_resnext50_32x4d-a260b3a4.pth", min_size=3
    ),
    # Its reduction cells pad-and-crop some branches and not others, so their sizes agree only when every
    # reduction halves an even size: 64, 96, 128, 224 ... (pretrainedmodels' port assumes 224).
    "nasnetamobile": ModelCfg(
        "conv0.conv", "last_linear", url=_CADENE + "nasnetamobile-7e03cead.pth", min_size=32, size_multiple=32
    ),
    "dpn68": ModelCfg("features.conv1_1.conv", "last_linear", url=_CADENE + "dpn68-4af7d88d2.pth"),
    "inceptionresnetv2": ModelCfg(
        "conv2d_1a.conv", "last_linear", url=_CADENE + "inceptionresnetv2-520b38e4.pth", min_size=49
    ),
}


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


def _set_in_chans(model: nn.Module, path: str, in_chans: int) -> nn.Module:
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
    if stem in state and stem in own and state[stem].shape[1] != own[stem].shape[1]:
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
    height, width = args[0].shape[-2:]
    if min(height, width) < cfg.min_size:
        raise ValueError(f"{name} needs inputs of at least {cfg.min_size}x{cfg.min_size} px, got {height}x{width}")
    if height % cfg.size_multiple or width % cfg.size_multiple:
        raise ValueError(f"{name} needs input sides that are multiples of {cfg.size_multiple}, got {height}x{width}")


def create_model(
    name: str,
    num_classes: int,
    in_chans: int = 3,
    pretrained: bool = False,
    weights: str | os.PathLike | None = None,
    **kwargs,
) -> nn.Module:
    """Build a registered model (or `timm/<name>`) with a `num_classes` head for (B, in_chans, H, W) float input.

    Args:
        name: a key of `list_models()`, or `timm/<timm model name>` when timm is installed.
        num_classes: size of the classifier output.
        in_chans: input channels; the stem conv is adapted (1 = greyscale).
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
    if num_classes < 1 or in_chans < 1:
        raise ValueError(f"num_classes and in_chans must be positive, got {num_classes} and {in_chans}")
    if name.startswith("timm/"):
        return _create_timm(name.removeprefix("timm/"), num_classes, in_chans, pretrained, weights, **kwargs)
    if name not in _model_entrypoints:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}, or timm/<name>")
    if name not in model_cfgs:
        raise ValueError(f"model {name!r} is registered but has no entry in models.model_cfgs")
    cfg = model_cfgs[name]
    model = _model_entrypoints[name](num_classes=num_classes, in_chans=in_chans, **kwargs)
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


# torchvision models: built with the right head directly, so its own init scheme applies to it.


@register_model
def mobilenetv2(num_classes: int, in_chans: int = 3, **kwargs) -> nn.Module:
    """MobileNetV2 (arXiv 1801.04381); kwargs: width_mult, dropout."""
    return _set_in_chans(tvm.mobilenet_v2(num_classes=num_classes, **kwargs), "features.0.0", in_chans)


@register_model
def squeezenet(num_classes: int, in_chans: int = 3, **kwargs) -> nn.Module:
    """SqueezeNet 1.1: 2.4x cheaper than 1.0 at the same ImageNet accuracy (torchvision docs); kwargs: dropout."""
    return _set_in_chans(tvm.squeezenet1_1(num_classes=num_classes, **kwargs), "features.0", in_chans)


@register_model
def resnet34(num_classes: int, in_chans: int = 3, **kwargs) -> nn.Module:
    """ResNet-34 (arXiv 1512.03385); kwargs: zero_init_residual."""
    return _set_in_chans(tvm.resnet34(num_classes=num_classes, **kwargs), "conv1", in_chans)


@register_model
def resnet50(num_classes: int, in_chans: int = 3, **kwargs) -> nn.Module:
    """ResNet-50 (arXiv 1512.03385); kwargs: zero_init_residual."""
    return _set_in_chans(tvm.resnet50(num_classes=num_classes, **kwargs), "conv1", in_chans)


@register_model
def densenet121(num_classes: int, in_chans: int = 3, **kwargs) -> nn.Module:
    """DenseNet-121 (arXiv 1608.06993); kwargs: drop_rate, memory_efficient."""
    return _set_in_chans(tvm.densenet121(num_classes=num_classes, **kwargs), "features.conv0", in_chans)


@register_model
def densenet161(num_classes: int, in_chans: int = 3, **kwargs) -> nn.Module:
    """DenseNet-161 (arXiv 1608.06993); kwargs: drop_rate, memory_efficient."""
    return _set_in_chans(tvm.densenet161(num_classes=num_classes, **kwargs), "features.conv0", in_chans)


@register_model
def cbam_resnet50(num_classes: int, in_chans: int = 3, **kwargs) -> nn.Module:
    """ResNet-50 with CBAM in every bottleneck (arXiv 1807.06521); kwargs: zero_init_residual."""
    model = ResNet(CBAMBottleneck, [3, 4, 6, 3], num_classes=num_classes, **kwargs)
    return _set_in_chans(model, "conv1", in_chans)


# pretrainedmodels: imported lazily (it costs ~0.9 s) and only for the classes torchvision lacks.


@register_model
def se_resnext50_32x4d(num_classes: int, in_chans: int = 3) -> nn.Module:
    """SE-ResNeXt-50 32x4d (arXiv 1709.01507)."""
    from pretrainedmodels.models.senet import se_resnext50_32x4d as build

    model = build(num_classes=num_classes, pretrained=None)
    model.avg_pool = nn.AdaptiveAvgPool2d(1)  # was AvgPool2d(7): 224 px only
    return _set_in_chans(model, "layer0.conv1", in_chans)


@register_model
def nasnetamobile(num_classes: int, in_chans: int = 3) -> nn.Module:
    """NASNet-A-Mobile 4@1056 (arXiv 1707.07012)."""
    from pretrainedmodels.models.nasnet_mobile import nasnetamobile as build

    model = build(num_classes=num_classes, pretrained=None)
    model.avg_pool = nn.AdaptiveAvgPool2d(1)  # was AvgPool2d(7): 224 px only
    return _set_in_chans(model, "conv0.conv", in_chans)


@register_model
def dpn68(num_classes: int, in_chans: int = 3) -> nn.Module:
    """DPN-68 (arXiv 1707.01629), with the same global average pool in train and eval mode."""
    from pretrainedmodels.models.dpn import dpn68 as build

    model = build(num_classes=num_classes, pretrained=None)
    # Test-time pooling is a 7x7 avg pool on the last features before the 1x1 head: it fails below 224 px and
    # makes eval scores differ from the training objective.
    model.test_time_pool = False
    return _set_in_chans(model, "features.conv1_1.conv", in_chans)


@register_model
def inceptionresnetv2(num_classes: int, in_chans: int = 3) -> nn.Module:
    """Inception-ResNet-v2 (arXiv 1602.07261), with a padded stem.

    The stem's three unpadded 3x3 convs and two 3x3 max pools make the original need 75 px inputs; padding them by 1
    keeps every weight shape (ImageNet weights still load) and lowers the minimum to 49 px, so 64 px works.
    """
    from pretrainedmodels.models.inceptionresnetv2 import inceptionresnetv2 as build

    model = build(num_classes=num_classes, pretrained=None)
    model.avgpool_1a = nn.AdaptiveAvgPool2d(1)  # was AvgPool2d(8): 299 px only
    for conv in (model.conv2d_1a.conv, model.conv2d_2a.conv, model.conv2d_4a.conv):
        conv.padding = (1, 1)
    for pool in (model.maxpool_3a, model.maxpool_5a):
        pool.padding = 1
    return _set_in_chans(model, "conv2d_1a.conv", in_chans)
