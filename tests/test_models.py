"""models.py and qdraw/cbam.py: every registered model trains a step at 64-224 px (point models: on 64-224 points);
registry rules; weight loading (local files, a local HTTP server standing in for the download site, the offline
error); CBAM's equations. The point models' own properties are tested in test_strokenets.py."""

import dataclasses
import functools
import hashlib
import http.server
import threading
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import Bottleneck

import models
from qdraw import zoo
from qdraw.cbam import CBAM, CBAMBottleneck, ChannelAttention, SpatialAttention

NUM_CLASSES = 5
RASTER_ZOO = [
    "cbam_resnet50", "densenet121", "densenet161", "dpn68", "inceptionresnetv2", "mobilenetv2", "nasnetamobile",
    "resnet34", "resnet50", "se_resnext50_32x4d", "squeezenet",
]
POINT_ZOO = ["learned_rasterizer", "stroke_gru", "stroke_lstm", "stroke_transformer"]
ZOO = sorted(RASTER_ZOO + POINT_ZOO)
# The costliest by `bench.py models` (over 2 GMACs per 128 px image); 224 px cases are marked slow too. On 2 cores
# most cases take under 1 s (the whole file 61 s), but 5-40 s each while a training job shares the cores.
SLOW = {"densenet161", "inceptionresnetv2"}


def _train_cases() -> list:
    """(name, size) for every model at 64 and 128 px, plus 224 px (ImageNet size) marked slow; for a point model,
    size is the number of points."""
    cases = []
    for name in models.list_models():
        for size in (64, 128, 224):
            slow = size == 224 or name in SLOW
            cases.append(pytest.param(name, size, marks=pytest.mark.slow if slow else (), id=f"{name}-{size}"))
    return cases


def _batch(name: str, size: int = 64, in_chans: int | None = None, seed: int = 1) -> torch.Tensor:
    """A fixed random batch of two inputs for model `name`, keyed on what it reads: images (2, C, size, size), or
    point features (2, size, F) laid out as qdraw.points writes them (valid prefix of size and size // 2 points)."""
    gen = torch.Generator().manual_seed(seed)
    if models.model_input(name) == "raster":
        return torch.randn(2, in_chans or 3, size, size, generator=gen)
    x = torch.rand(2, size, in_chans or 6, generator=gen)
    x[..., 3:5] -= 0.5  # dx, dy are signed
    x[..., 0] = 1.0
    x[1, size // 2:] = 0.0  # padding rows are all zero
    return x


def _outputs(model: nn.Module, name: str, size: int = 64, in_chans: int | None = None) -> torch.Tensor:
    """Eval-mode logits of `_batch`."""
    with torch.no_grad():
        return model.eval()(_batch(name, size, in_chans))


def test_zoo_is_registered_with_configs():
    assert models.list_models() == ZOO
    assert set(models.model_cfgs) == set(ZOO)


@pytest.mark.parametrize("name,size", _train_cases())
def test_train_step(name: str, size: int):
    torch.manual_seed(0)
    model = models.create_model(name, NUM_CLASSES).train()
    out = model(_batch(name, size, seed=0))
    assert out.shape == (2, NUM_CLASSES)
    assert torch.isfinite(out).all()
    F.cross_entropy(out, torch.tensor([0, 3])).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), pname
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("name", ZOO)
def test_weights_file_roundtrip(name: str, tmp_path: Path):
    """weights=PATH reproduces the saved model; another num_classes keeps all but the head."""
    torch.manual_seed(0)
    source = models.create_model(name, NUM_CLASSES).eval()
    path = tmp_path / "w.pth"
    torch.save(source.state_dict(), path)
    torch.manual_seed(1)  # a different init, so equality below comes from the file
    same = models.create_model(name, NUM_CLASSES, weights=path)
    assert torch.equal(_outputs(same, name), _outputs(source, name))

    other = models.create_model(name, NUM_CLASSES + 2, weights=path).state_dict()
    src, head = source.state_dict(), models.model_cfgs[name].classifier
    assert other[f"{head}.weight"].shape[0] == NUM_CLASSES + 2
    for key, value in other.items():
        if not zoo._under(key, head):
            assert torch.equal(value, src[key]), key


@pytest.mark.parametrize("name", ZOO)
def test_greyscale_registry_checkpoint_roundtrip(name: str, tmp_path: Path):
    """in_chans=1 (point models: 7, with time) builds and runs; name + kwargs + state_dict saved with torch.save
    rebuild an identical model."""
    torch.manual_seed(0)
    in_chans = 1 if models.model_input(name) == "raster" else 7
    kwargs = {"num_classes": NUM_CLASSES, "in_chans": in_chans}
    source = models.create_model(name, **kwargs)
    # a point model's first conv reads every feature but `valid`
    stem_chans = in_chans if in_chans == 1 else in_chans - 1
    assert source.get_submodule(models.model_cfgs[name].first_conv).weight.shape[1] == stem_chans
    expected = _outputs(source, name, in_chans=in_chans)
    assert expected.shape == (2, NUM_CLASSES) and torch.isfinite(expected).all()
    torch.save({"arch": name, "kwargs": kwargs, "model": source.state_dict()}, tmp_path / "ckpt.pth")
    ckpt = torch.load(tmp_path / "ckpt.pth", map_location="cpu", weights_only=True)
    torch.manual_seed(1)  # a different init, so equality below comes from the file
    rebuilt = models.create_model(ckpt["arch"], **ckpt["kwargs"])
    rebuilt.load_state_dict(ckpt["model"])
    assert torch.equal(_outputs(rebuilt, name, in_chans=in_chans), expected)


def test_weights_accepts_training_checkpoint(tmp_path: Path):
    """weights= also takes a training checkpoint, which keeps the state_dict under "model"."""
    source = models.create_model("squeezenet", NUM_CLASSES)
    torch.save({"version": 1, "arch": "squeezenet", "model": source.state_dict(), "epoch": 3}, tmp_path / "c.pth")
    loaded = models.create_model("squeezenet", NUM_CLASSES, weights=tmp_path / "c.pth")
    assert torch.equal(_outputs(loaded, "squeezenet"), _outputs(source, "squeezenet"))


def test_rgb_weights_into_greyscale_model_sum_over_channels(tmp_path: Path):
    torch.manual_seed(0)
    rgb = models.create_model("resnet34", NUM_CLASSES)
    torch.save(rgb.state_dict(), tmp_path / "rgb.pth")
    grey = models.create_model("resnet34", NUM_CLASSES, in_chans=1, weights=tmp_path / "rgb.pth")
    assert torch.equal(grey.conv1.weight, rgb.conv1.weight.sum(dim=1, keepdim=True))
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():  # a grey image and its RGB copy give the same logits, up to summation order
        torch.testing.assert_close(grey.eval()(x), rgb.eval()(x.expand(-1, 3, -1, -1)), rtol=1e-4, atol=1e-4)


def test_adapt_input_conv_exact():
    w = torch.arange(6.0).reshape(1, 3, 1, 2)  # channels [0, 1], [2, 3], [4, 5]
    assert models.adapt_input_conv(w, 3) is w
    assert models.adapt_input_conv(w, 1).flatten().tolist() == [6.0, 9.0]
    four = models.adapt_input_conv(w, 4)  # cycles R, G, B, R and scales by 3/4
    assert four.flatten().tolist() == [0.0, 0.75, 1.5, 2.25, 3.0, 3.75, 0.0, 0.75]


def test_head_mismatch_outside_classifier_is_an_error(tmp_path: Path):
    state = models.create_model("resnet34", NUM_CLASSES).state_dict()
    state["layer1.0.conv1.weight"] = torch.zeros(1, 1, 1, 1)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(RuntimeError, match="layer1.0.conv1.weight"):
        models.create_model("resnet34", NUM_CLASSES, weights=tmp_path / "bad.pth")
    del state["layer1.0.conv1.weight"]
    torch.save(state, tmp_path / "missing.pth")
    with pytest.raises(RuntimeError, match="missing keys.*layer1.0.conv1.weight"):
        models.create_model("resnet34", NUM_CLASSES, weights=tmp_path / "missing.pth")


def test_missing_weights_file(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        models.create_model("squeezenet", NUM_CLASSES, weights=tmp_path / "nope.pth")


def test_resnet50_weights_fill_cbam_resnet50_except_attention():
    """cbam_resnet50's pretrained path: ResNet-50 weights load, only `.cbam.` keys may be missing."""
    state = models.create_model("resnet50", 1000).state_dict()
    cbam = models.create_model("cbam_resnet50", NUM_CLASSES)
    cfg = models.model_cfgs["cbam_resnet50"]
    with pytest.raises(RuntimeError, match=r"layer1\.0\.cbam\."):
        models.load_weights(cbam, state, cfg)
    models.load_weights(cbam, state, cfg, allow_missing=cfg.pretrained_missing)
    assert torch.equal(cbam.layer4[2].conv3.weight, state["layer4.2.conv3.weight"])
    assert cbam.fc.weight.shape == (NUM_CLASSES, 2048)


def test_register_duplicate_raises(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(zoo, "_model_entrypoints", dict(zoo._model_entrypoints))
    with pytest.raises(ValueError, match="resnet34"):
        models.register_model(models.resnet34)

    @models.register_model("tiny")
    def _tiny(num_classes: int, in_chans: int = 3) -> nn.Module:
        return nn.Linear(in_chans, num_classes)

    assert "tiny" in models.list_models()
    with pytest.raises(ValueError, match="already registered"):
        models.register_model("tiny")(_tiny)
    with pytest.raises(ValueError, match="model_cfgs"):
        models.create_model("tiny", NUM_CLASSES)


def test_model_input_of_every_model():
    assert [name for name in models.list_models() if models.model_input(name) == "points"] == POINT_ZOO
    assert all(models.model_input(name) == "raster" for name in RASTER_ZOO)


def test_unknown_name_lists_known_models():
    with pytest.raises(ValueError) as err:
        models.create_model("resnet35", NUM_CLASSES)
    assert all(name in str(err.value) for name in ZOO)


def test_none_kwargs_mean_model_default():
    assert models.create_model("mobilenetv2", NUM_CLASSES, dropout=None).classifier[0].p == 0.2
    assert models.create_model("mobilenetv2", NUM_CLASSES, dropout=0.5).classifier[0].p == 0.5
    with pytest.raises(TypeError):
        models.create_model("dpn68", NUM_CLASSES, dropout=0.5)


def test_bad_arguments():
    with pytest.raises(ValueError, match="not both"):
        models.create_model("squeezenet", NUM_CLASSES, pretrained=True, weights="w.pth")
    with pytest.raises(ValueError, match="positive"):
        models.create_model("squeezenet", 0)


def test_input_size_limits():
    with pytest.raises(ValueError, match="multiples of 32"):
        models.create_model("nasnetamobile", NUM_CLASSES)(torch.randn(1, 3, 100, 100))
    irv2 = models.create_model("inceptionresnetv2", NUM_CLASSES).eval()
    with pytest.raises(ValueError, match="at least 49x49"):
        irv2(torch.randn(1, 3, 48, 48))
    assert _outputs(irv2, "inceptionresnetv2", 49).shape == (2, NUM_CLASSES)  # the documented minimum really runs


def test_timm_models_when_installed():
    pytest.importorskip("timm")
    assert _outputs(models.create_model("timm/resnet18", NUM_CLASSES), "timm/resnet18").shape == (2, NUM_CLASSES)


# Pretrained weights: a local HTTP server stands in for the download site; torch hub's cache lives in tmp_path.


@pytest.fixture
def weights_server(tmp_path: Path):
    """Base URL of an HTTP server on 127.0.0.1 serving tmp_path/"srv"; stopped after the test."""
    root = tmp_path / "srv"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", root
    server.shutdown()
    server.server_close()


def _point_at(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str, url: str, sha256: str | None) -> Path:
    """Send `name`'s weights URL to `url`, give torch hub an empty home; return the expected cache file."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # in case anything called torch.hub.set_dir
    cfg = dataclasses.replace(models.model_cfgs[name], url=url, sha256=sha256)
    monkeypatch.setitem(models.model_cfgs, name, cfg)
    return tmp_path / "torch_home" / "hub" / "checkpoints" / url.rsplit("/", 1)[1]


def test_pretrained_downloads_then_uses_cache(weights_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    base, root = weights_server
    torch.manual_seed(0)
    imagenet = models.create_model("squeezenet", 1000).state_dict()
    torch.save(imagenet, root / "squeezenet1_1-test.pth")
    sha = hashlib.sha256((root / "squeezenet1_1-test.pth").read_bytes()).hexdigest()[:8]
    cached = _point_at(monkeypatch, tmp_path, "squeezenet", base + "squeezenet1_1-test.pth", sha)

    model = models.create_model("squeezenet", NUM_CLASSES, in_chans=1, pretrained=True)
    assert cached.is_file()
    assert torch.equal(model.features[3].squeeze.weight, imagenet["features.3.squeeze.weight"])
    assert torch.equal(model.features[0].weight, imagenet["features.0.weight"].sum(dim=1, keepdim=True))
    assert model.classifier[1].weight.shape[0] == NUM_CLASSES

    (root / "squeezenet1_1-test.pth").unlink()  # the server no longer has it: the second build reads the cache
    again = models.create_model("squeezenet", NUM_CLASSES, in_chans=1, pretrained=True)
    assert torch.equal(again.features[0].weight, model.features[0].weight)


def test_pretrained_hash_mismatch_leaves_no_file(weights_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    base, root = weights_server
    torch.save(models.create_model("squeezenet", 1000).state_dict(), root / "squeezenet1_1-test.pth")
    cached = _point_at(monkeypatch, tmp_path, "squeezenet", base + "squeezenet1_1-test.pth", "00000000")
    with pytest.raises(RuntimeError, match="hash"):
        models.create_model("squeezenet", NUM_CLASSES, pretrained=True)
    assert not cached.exists()


def test_pretrained_offline_error_is_clear(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    url = "http://127.0.0.1:9/resnet34-b627a593.pth"  # port 9 (discard): nothing listens, the connection is refused
    cached = _point_at(monkeypatch, tmp_path, "resnet34", url, "b627a593")
    with pytest.raises(models.PretrainedWeightsError) as err:
        models.create_model("resnet34", NUM_CLASSES, pretrained=True)
    assert isinstance(err.value, FileNotFoundError)
    assert url in str(err.value) and str(cached) in str(err.value)
    assert err.value.__cause__ is None and err.value.__suppress_context__  # no urllib traceback chained
    assert not cached.exists()


def test_no_pretrained_weights_is_a_value_error(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(models.model_cfgs, "squeezenet", dataclasses.replace(models.model_cfgs["squeezenet"], url=None))
    with pytest.raises(ValueError, match="no pretrained weights"):
        models.create_model("squeezenet", NUM_CLASSES, pretrained=True)


# CBAM (arXiv 1807.06521): the two attention equations with hand-set weights, and where the block applies it.


def test_channel_attention_equation():
    att = ChannelAttention(2, reduction=2)  # hidden size 1
    with torch.no_grad():
        att.mlp[0].weight.copy_(torch.tensor([1.0, 1.0]).view(1, 2, 1, 1))
        att.mlp[2].weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
    x = torch.tensor([[[[1.0, 3.0]], [[0.0, 2.0]]]])  # channel avg (2, 1), max (3, 2)
    hidden = (2.0 + 1.0) + (3.0 + 2.0)  # the shared MLP's hidden unit summed over the avg and max descriptors
    expected = x * torch.sigmoid(torch.tensor([hidden, -hidden])).view(1, 2, 1, 1)
    torch.testing.assert_close(att(x), expected, rtol=0, atol=1e-7)


def test_spatial_attention_equation():
    att = SpatialAttention(7)
    with torch.no_grad():
        att.conv.weight.zero_()
        att.conv.weight[0, 0, 3, 3] = 2.0  # centre tap on the channel mean
        att.conv.weight[0, 1, 3, 3] = -1.0  # centre tap on the channel max
    x = torch.tensor([[[[1.0, 4.0]], [[3.0, 0.0]]]])  # per pixel: mean (2, 2), max (3, 4)
    gate = torch.sigmoid(torch.tensor([2 * 2.0 - 3.0, 2 * 2.0 - 4.0]))
    torch.testing.assert_close(att(x), x * gate.view(1, 1, 1, 2), rtol=0, atol=1e-7)


def test_cbam_is_channel_then_spatial():
    torch.manual_seed(0)
    cbam = CBAM(32)
    x = torch.randn(2, 32, 5, 5)
    assert torch.equal(cbam(x), cbam.spatial(cbam.channel(x)))


def test_cbam_bottleneck_matches_torchvision_without_attention():
    """With the attention replaced by identity the block is torchvision's; CBAM sits before the identity add."""
    torch.manual_seed(0)
    block = CBAMBottleneck(256, 64).eval()
    plain = Bottleneck(256, 64).eval()
    plain.load_state_dict({k: v for k, v in block.state_dict().items() if ".cbam." not in f".{k}"})
    x = torch.randn(2, 256, 8, 8)
    block.cbam = nn.Identity()
    with torch.no_grad():
        assert torch.equal(block(x), plain(x))
        block.cbam = ZeroBranch()
        assert torch.equal(block(x), F.relu(x))  # attention that zeroes the branch leaves relu(identity)
    model = models.create_model("cbam_resnet50", NUM_CLASSES)
    assert sum(isinstance(m, CBAM) for m in model.modules()) == 16  # one per bottleneck: 3 + 4 + 6 + 3


class ZeroBranch(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)
