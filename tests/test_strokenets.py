"""qdraw/strokenets.py and the point models of models.py: padding never changes logits, the bidirectional RNN equals
torch's packed one, the learned rasteriser's scatter on a hand-made drawing, ONNX export with dynamic batch and
length, a tiny model overfitting 32 drawings, a training step of every registered point model, registry rules."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import models
from qdraw import zoo
from qdraw.points import pack_points
from qdraw.raster import pack_strokes
from qdraw.simplify import normalize
from qdraw.strokenets import MaskedBiRNN, grid_cells, masked_pool, scatter_mean_grid
from qdraw.strokes import to_arrays
from qdraw.synthetic import generate_records

POINT_MODELS = ["learned_rasterizer", "stroke_gru", "stroke_lstm", "stroke_transformer"]
# Small settings of each model, so a test runs in about a second on 2 busy cores (dropout 0: train-mode outputs are
# then deterministic too).
TINY = {
    "stroke_gru": {"hidden": 24, "conv_widths": (16, 24), "dropout": 0.0},
    "stroke_lstm": {"hidden": 24, "conv_widths": (16, 24), "dropout": 0.0},
    "stroke_transformer": {"dim": 32, "depth": 2, "heads": 4, "conv_widths": (16,), "dropout": 0.0},
    "learned_rasterizer": {"grid": 16, "point_channels": 16, "point_hidden": 16, "trunk": "resnet18", "width": 8},
}
CLASSES = ["circle", "square", "line", "zigzag"]


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: these models are small, and on a shared 2-core machine two threads that wait on each other
    made this file 10x slower (177 s against 17 s with another job running)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _drawings(per_class: int, seed: int = 0) -> tuple[list, list[int]]:
    """Synthetic raw drawings in the 0..255 frame with times, as (n, 3) strokes, and their class indices."""
    drawings, labels = [], []
    for label, name in enumerate(CLASSES):
        for rec in generate_records(name, per_class, seed):
            strokes = to_arrays(rec["drawing"])
            xy = normalize(strokes)
            drawings.append([np.column_stack([np.round(p), s[:, 2]]) for p, s in zip(xy, strokes)])
            labels.append(label)
    return drawings, labels


def _points(max_len: int, with_time: bool = True, per_class: int = 2, seed: int = 0) -> torch.Tensor:
    """A batch of synthetic drawings plus an empty one and a one-point one, packed: float (B, max_len, 6 | 7)."""
    drawings, _ = _drawings(per_class, seed)
    xy, t, strokes, offsets = pack_strokes(drawings + [[], [np.array([[7, 9, 0]])]])
    return torch.from_numpy(pack_points(xy, t if with_time else None, strokes, offsets, max_len))


def _tiny(name: str, in_chans: int = 7, num_classes: int = 5) -> nn.Module:
    torch.manual_seed(0)
    return models.create_model(name, num_classes, in_chans=in_chans, **TINY[name])


def test_point_models_are_registered_as_points():
    assert [n for n in models.list_models() if models.model_input(n) == "points"] == POINT_MODELS
    assert models.model_input("resnet34") == "raster" and models.model_input("timm/resnet18") == "raster"
    with pytest.raises(ValueError, match="unknown model"):
        models.model_input("stroke_gru2")
    with pytest.raises(ValueError, match="input"):
        models.ModelCfg("conv1", "fc", input="voxels")


@pytest.mark.parametrize("name", POINT_MODELS)
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_extra_padding_leaves_logits_unchanged(name: str, train: bool):
    """Padding appended at the end, even with random features behind valid = 0, changes no logit beyond 1e-5."""
    model = _tiny(name).train(train)
    x = _points(40)
    assert (x[:, :, 0].sum(1) < 40).any()  # some drawings already end in padding
    pad = torch.rand(x.shape[0], 23, x.shape[2], generator=torch.Generator().manual_seed(1))
    pad[..., 0] = 0
    with torch.no_grad():
        ref, padded = model(x), model(torch.cat([x, pad], 1))
    assert torch.isfinite(ref).all()
    torch.testing.assert_close(padded, ref, rtol=0, atol=1e-5)
    with torch.no_grad():  # and the test can fail: a real point where padding was changes the logits
        x2 = torch.cat([x, pad], 1)
        x2[:, 40, 0] = 1
        assert (model(x2) - ref).abs().max() > 1e-4


def test_masked_birnn_equals_torch_packed_bidirectional_gru():
    """The gather-reversal backward pass gives what torch's packed bidirectional GRU gives at every valid point."""
    torch.manual_seed(0)
    ours = MaskedBiRNN("gru", 5, 7, layers=2)
    ref = nn.GRU(5, 7, num_layers=2, batch_first=True, bidirectional=True)
    with torch.no_grad():
        for i in range(2):
            for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(ref, f"{kind}_l{i}").copy_(getattr(ours.fwd[i], f"{kind}_l0"))
                getattr(ref, f"{kind}_l{i}_reverse").copy_(getattr(ours.bwd[i], f"{kind}_l0"))
    lengths = torch.tensor([6, 1, 4])
    h = torch.randn(3, 6, 5)
    with torch.no_grad():
        got = ours(h, lengths)
        packed = nn.utils.rnn.pack_padded_sequence(h, lengths, batch_first=True, enforce_sorted=False)
        want, _ = nn.utils.rnn.pad_packed_sequence(ref(packed)[0], batch_first=True)
    for b, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(got[b, :n], want[b, :n], rtol=0, atol=1e-6)


def test_masked_pool_mean_and_max_of_valid_points():
    h = torch.tensor([[[1.0, -2.0], [3.0, -4.0], [100.0, 100.0]], [[5.0, 6.0], [7.0, 8.0], [9.0, 10.0]]])
    mask = torch.tensor([[True, True, False], [False, False, False]])
    assert masked_pool(h, mask).tolist() == [[2.0, -3.0, 3.0, -2.0], [0.0, 0.0, 0.0, 0.0]]


def test_scatter_of_a_hand_made_drawing_onto_known_cells():
    """Strokes (0, 0) (63, 0) (64, 10) and (255, 255) on a 4 x 4 grid: column floor(X * 4 / 255) is 0, 0, 1, 3
    (63 -> 0.99, 64 -> 1.004, 255 clamps to 3), row 0, 0, 0, 3; two padding rows would fall into cell (0, 0)."""
    xy, t, strokes, offsets = pack_strokes([[np.array([[0, 0], [63, 0], [64, 10]]), np.array([[255, 255]])]])
    x = torch.from_numpy(pack_points(xy, t, strokes, offsets, max_len=6))
    col, row = grid_cells(x, 4)
    assert col.tolist() == [[0, 0, 1, 3, 0, 0]] and row.tolist() == [[0, 0, 0, 3, 0, 0]]
    feats = torch.stack([x[..., 3] * 255, x[..., 5]], 1)  # dx in frame units (0, 63, 1, 191) and pen_up (0, 0, 1, 1)
    feats[0, :, 4:] = 1000.0  # values at padding must not count
    grid = scatter_mean_grid(feats, col, row, x[..., 0] > 0, 4)
    expected = torch.zeros(1, 2, 4, 4)
    expected[0, :, 0, 0] = torch.tensor([31.5, 0.0])  # mean of the first two points
    expected[0, :, 0, 1] = torch.tensor([1.0, 1.0])
    expected[0, :, 3, 3] = torch.tensor([191.0, 1.0])
    torch.testing.assert_close(grid, expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("trunk", ["resnet18", "resnet34"])
def test_rasterizer_trunk_is_torchvision_resnet_stages(trunk: str):
    """At width 64 (point_channels 64) the trunk is layer1..layer4 of torchvision's ResNet: same names, same shapes."""
    import torchvision

    ours = {k.removeprefix("trunk."): v.shape for k, v in models.create_model("learned_rasterizer", 5, trunk=trunk)
            .state_dict().items() if k.startswith("trunk.")}
    theirs = {k: v.shape for k, v in getattr(torchvision.models, trunk)().state_dict().items()
              if k.startswith("layer")}
    assert ours == theirs


def _onnx_probabilities(model: nn.Module, inputs: list[torch.Tensor]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(onnxruntime, torch) softmax probabilities of each input, the model exported once on another shape by
    export.py's own exporter (qdraw.export.to_onnx: torch.export-based, batch and length dynamic)."""
    import onnxruntime as ort

    from qdraw.export import MIN_OPSET, GraphInput, Probabilities, to_onnx

    wrapper = Probabilities(model).eval()
    inp = GraphInput("points", torch.zeros(3, 20, inputs[0].shape[2]), {0: "batch", 1: "length"}, "points", None)
    opts = ort.SessionOptions()
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # a shared machine (qdraw.classifier)
    session = ort.InferenceSession(to_onnx(wrapper, inp, MIN_OPSET).SerializeToString(), opts,
                                   providers=["CPUExecutionProvider"])
    out = []
    for x in inputs:
        with torch.no_grad():
            out.append((session.run(None, {"points": x.numpy()})[0], wrapper(x).numpy()))
    return out


# stroke_gru and learned_rasterizer go through export.py itself in tests/test_stroke_pipeline.py (its check feeds
# random lengths, predict.py on the .onnx equals the checkpoint on real drawings); each export costs 5-15 s here
@pytest.mark.parametrize("name", ["stroke_lstm", "stroke_transformer"])
def test_onnx_export_dynamic_batch_and_length(name: str):
    model = _tiny(name, in_chans=6).eval()
    long = _points(61, with_time=False)  # 10 drawings, one empty
    short = _points(9, with_time=False, seed=1)[3:5]
    for got, want in _onnx_probabilities(model, [long, short]):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


def test_tiny_gru_overfits_32_drawings():
    """32 synthetic drawings of 4 classes, full batch: 100 % training accuracy within 150 Adam steps (~2 s)."""
    drawings, labels = _drawings(8, seed=3)
    x = torch.from_numpy(pack_points(*pack_strokes(drawings), max_len=48))
    y = torch.tensor(labels)
    torch.manual_seed(0)
    model = models.create_model("stroke_gru", len(CLASSES), in_chans=7, hidden=32, conv_widths=(32,), dropout=0.0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(150):
        opt.zero_grad()
        logits = model(x)
        if (logits.argmax(1) == y).all():
            break
        F.cross_entropy(logits, y).backward()
        opt.step()
    assert (model.eval()(x).argmax(1) == y).float().mean().item() == 1.0, f"not fitted after {step} steps"


@pytest.mark.parametrize("name", POINT_MODELS)
@pytest.mark.parametrize("in_chans", [6, 7])
def test_train_step_of_default_model(name: str, in_chans: int):
    """Each registered point model at its defaults: (B, num_classes) finite logits and finite, non-zero gradients
    for every parameter, on a batch with an empty drawing."""
    torch.manual_seed(0)
    model = models.create_model(name, 5, in_chans=in_chans).train()
    x = _points(32, with_time=in_chans == 7, per_class=1)
    out = model(x)
    assert out.shape == (x.shape[0], 5) and torch.isfinite(out).all()
    F.cross_entropy(out, torch.arange(x.shape[0]) % 5).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


def test_registry_defaults_and_input_checks(tmp_path):
    model = models.create_model("stroke_gru", 5)  # in_chans unset: the point default, 6
    assert model.in_chans == 6
    for bad in (3, 8):
        with pytest.raises(ValueError, match="in_chans = 6"):
            models.create_model("stroke_transformer", 5, in_chans=bad)
    with pytest.raises(ValueError, match=r"point features float \(B, L, 6\)"):
        model(torch.zeros(2, 3, 64, 64))
    with pytest.raises(ValueError, match=r"\(B, L, 6\)"):
        model(torch.zeros(2, 16, 7))
    with pytest.raises(ValueError, match="trunk"):
        models.create_model("learned_rasterizer", 5, trunk="vgg16")
    # weights for another F are refused (the features differ), not adapted as image stems are
    torch.save(model.state_dict(), tmp_path / "w.pth")
    assert torch.equal(models.create_model("stroke_gru", 5, weights=tmp_path / "w.pth").head.weight, model.head.weight)
    with pytest.raises(RuntimeError, match="size mismatch"):
        models.create_model("stroke_gru", 5, in_chans=7, weights=tmp_path / "w.pth")
    assert zoo.model_cfgs["stroke_gru"].first_conv == "front.convs.0.conv"
