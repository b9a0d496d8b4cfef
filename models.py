"""The architecture zoo: one builder per registered name, the models train.py, predict.py and export.py build.

Read this file to see what `--model` accepts; extend it by adding a builder with `@register_model` and its
`ModelCfg` in `model_cfgs` (stem conv, head, ImageNet weights). The registry and factory (`create_model`, weight
loading, `timm/<name>`) live in `qdraw/zoo.py`; importing this module registers the builders below. torchvision
supplies the models it has; Cadene's `pretrainedmodels` supplies SE-ResNeXt, NASNet-A-Mobile, DPN-68 and
Inception-ResNet-v2, with their fixed `AvgPool2d(7|8)` heads swapped for adaptive pooling so they run at Quick, Draw!
sizes (64-256 px; pretrainedmodels issues #164 and #171); CBAM-ResNet-50 is built here from `qdraw.cbam`. Every image
model takes `in_chans` (1 for the greyscale encoding). The point models (`stroke_gru`, `stroke_lstm`,
`stroke_transformer`, `learned_rasterizer`, from `qdraw.strokenets`) read float (B, L, F) point features from
`qdraw.points.pack_points` instead, with `in_chans` = F (6, or 7 with time); their `ModelCfg` says `input="points"`.
"""
from __future__ import annotations

import os

import torch
from torch import nn
from torchvision import models as tvm
from torchvision.models.resnet import ResNet

from qdraw.cbam import CBAMBottleneck
from qdraw.strokenets import LearnedRasterizer, StrokeRNN, StrokeTransformer
from qdraw.zoo import (ModelCfg, PretrainedWeightsError, adapt_input_conv, create_model, list_models,
                       load_pretrained_state_dict, load_weights, model_cfgs, model_input, register_model, set_in_chans)

__all__ = ["ModelCfg", "PretrainedWeightsError", "adapt_input_conv", "create_model", "list_models",
           "load_pretrained_state_dict", "load_weights", "model_cfgs", "model_input", "register_model"]


def _tv_cfg(weights: tvm.WeightsEnum, first_conv: str, classifier: str, **kwargs) -> ModelCfg:
    """Config for torchvision weights; torch hub's file names carry the SHA-256 prefix after the last dash."""
    match = torch.hub.HASH_REGEX.search(os.path.basename(weights.url))
    return ModelCfg(first_conv, classifier, url=weights.url, sha256=match.group(1) if match else None, **kwargs)


_CADENE = "http://data.lip6.fr/cadene/pretrainedmodels/"
# Cadene's file names have a hex suffix too, but pretrainedmodels never checks it, so we do not rely on it.
model_cfgs.update({
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
    # Point models: no ImageNet weights; first_conv is their first Conv1d, over the point features.
    "stroke_gru": ModelCfg("front.convs.0.conv", "head", input="points"),
    "stroke_lstm": ModelCfg("front.convs.0.conv", "head", input="points"),
    "stroke_transformer": ModelCfg("front.convs.0.conv", "head", input="points"),
    "learned_rasterizer": ModelCfg("points.convs.0.conv", "head", input="points"),
})


# torchvision models: built with the right head directly, so its own init scheme applies to it.


@register_model
def mobilenetv2(num_classes: int, in_chans: int = 3, **kwargs) -> nn.Module:
    """MobileNetV2 (arXiv 1801.04381); kwargs: width_mult, dropout."""
    return set_in_chans(tvm.mobilenet_v2(num_classes=num_classes, **kwargs), "features.0.0", in_chans)


@register_model
def squeezenet(num_classes: int, in_chans: int = 3, **kwargs) -> nn.Module:
    """SqueezeNet 1.1: 2.4x cheaper than 1.0 at the same ImageNet accuracy (torchvision docs); kwargs: dropout."""
    return set_in_chans(tvm.squeezenet1_1(num_classes=num_classes, **kwargs), "features.0", in_chans)


@register_model
def resnet34(num_classes: int, in_chans: int = 3, **kwargs) -> nn.Module:
    """ResNet-34 (arXiv 1512.03385); kwargs: zero_init_residual."""
    return set_in_chans(tvm.resnet34(num_classes=num_classes, **kwargs), "conv1", in_chans)


@register_model
def resnet50(num_classes: int, in_chans: int = 3, **kwargs) -> nn.Module:
    """ResNet-50 (arXiv 1512.03385); kwargs: zero_init_residual."""
    return set_in_chans(tvm.resnet50(num_classes=num_classes, **kwargs), "conv1", in_chans)


@register_model
def densenet121(num_classes: int, in_chans: int = 3, **kwargs) -> nn.Module:
    """DenseNet-121 (arXiv 1608.06993); kwargs: drop_rate, memory_efficient."""
    return set_in_chans(tvm.densenet121(num_classes=num_classes, **kwargs), "features.conv0", in_chans)


@register_model
def densenet161(num_classes: int, in_chans: int = 3, **kwargs) -> nn.Module:
    """DenseNet-161 (arXiv 1608.06993); kwargs: drop_rate, memory_efficient."""
    return set_in_chans(tvm.densenet161(num_classes=num_classes, **kwargs), "features.conv0", in_chans)


@register_model
def cbam_resnet50(num_classes: int, in_chans: int = 3, **kwargs) -> nn.Module:
    """ResNet-50 with CBAM in every bottleneck (arXiv 1807.06521); kwargs: zero_init_residual."""
    model = ResNet(CBAMBottleneck, [3, 4, 6, 3], num_classes=num_classes, **kwargs)
    return set_in_chans(model, "conv1", in_chans)


# pretrainedmodels: imported lazily (it costs ~0.9 s) and only for the classes torchvision lacks.


@register_model
def se_resnext50_32x4d(num_classes: int, in_chans: int = 3) -> nn.Module:
    """SE-ResNeXt-50 32x4d (arXiv 1709.01507)."""
    from pretrainedmodels.models.senet import se_resnext50_32x4d as build

    model = build(num_classes=num_classes, pretrained=None)
    model.avg_pool = nn.AdaptiveAvgPool2d(1)  # was AvgPool2d(7): 224 px only
    return set_in_chans(model, "layer0.conv1", in_chans)


@register_model
def nasnetamobile(num_classes: int, in_chans: int = 3) -> nn.Module:
    """NASNet-A-Mobile 4@1056 (arXiv 1707.07012)."""
    from pretrainedmodels.models.nasnet_mobile import nasnetamobile as build

    model = build(num_classes=num_classes, pretrained=None)
    model.avg_pool = nn.AdaptiveAvgPool2d(1)  # was AvgPool2d(7): 224 px only
    return set_in_chans(model, "conv0.conv", in_chans)


@register_model
def dpn68(num_classes: int, in_chans: int = 3) -> nn.Module:
    """DPN-68 (arXiv 1707.01629), with the same global average pool in train and eval mode."""
    from pretrainedmodels.models.dpn import dpn68 as build

    model = build(num_classes=num_classes, pretrained=None)
    # Test-time pooling is a 7x7 avg pool on the last features before the 1x1 head: it fails below 224 px and
    # makes eval scores differ from the training objective.
    model.test_time_pool = False
    return set_in_chans(model, "features.conv1_1.conv", in_chans)


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
    return set_in_chans(model, "conv2d_1a.conv", in_chans)


# Point models (qdraw.strokenets): float (B, L, in_chans) features from qdraw.points.pack_points, in_chans = 6
# (simplified) or 7 (raw, with dt). Defaults sized for the 16-class CPU budget; see qdraw.strokenets for the layers.


@register_model
def stroke_gru(num_classes: int, in_chans: int = 6, **kwargs) -> nn.Module:
    """Conv1d front end, 2-layer bidirectional GRU, masked mean + max pooling; kwargs: hidden (128), layers (2),
    conv_widths ((64, 128)), dropout (0.1)."""
    return StrokeRNN(num_classes, in_chans, cell="gru", **kwargs)


@register_model
def stroke_lstm(num_classes: int, in_chans: int = 6, **kwargs) -> nn.Module:
    """stroke_gru with LSTM cells (a third more weights per layer); kwargs: hidden (128), layers (2), conv_widths
    ((64, 128)), dropout (0.1)."""
    return StrokeRNN(num_classes, in_chans, cell="lstm", **kwargs)


@register_model
def stroke_transformer(num_classes: int, in_chans: int = 6, **kwargs) -> nn.Module:
    """Conv1d front end, sinusoidal positions, pre-LN Transformer encoder, masked mean + max pooling; kwargs: dim
    (128), depth (4), heads (4), mlp_ratio (2.0), conv_widths ((64,)), dropout (0.1)."""
    return StrokeTransformer(num_classes, in_chans, **kwargs)


@register_model
def learned_rasterizer(num_classes: int, in_chans: int = 6, **kwargs) -> nn.Module:
    """Dilated Conv1d point features averaged onto a grid, then ResNet stages (the Kaggle 8th place model); kwargs:
    grid (32), point_channels (64), trunk ("resnet34"; "resnet18", "resnet50"), width (64, ResNet's stage-1
    width), point_hidden (64), dilations ((1, 2, 4, 8)), dropout (0.0)."""
    return LearnedRasterizer(num_classes, in_chans, **kwargs)
