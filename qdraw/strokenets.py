"""Stroke networks: classifiers that read a drawing as the pen's path, float32 (B, L, F) point features → logits.

The input is :func:`qdraw.points.pack_points`'s layout (valid, x, y, dx, dy, pen_up[, dt]; F = 6 or 7): one float
tensor, so predict, ONNX export and serving pass a single input, with the mask derived as ``x[..., 0] > 0`` and the
valid points a prefix of each row. Every model here makes padding irrelevant by construction, in training as well
as eval: point-wise layers are re-zeroed on padding after each conv (so a conv's look past the last valid point sees
the zeros its own zero padding would give), normalisation is LayerNorm over each point's channels (BatchNorm would
mix padding into its batch statistics), recurrences and attention never let padding reach a valid point, and pooling
is masked. Appending padding changes logits only by float rounding.

* :class:`StrokeRNN`: conv front end, stacked bidirectional GRU or LSTM, masked mean + max pooling, linear head.
* :class:`StrokeTransformer`: conv front end, sinusoidal positions, pre-LN Transformer encoder with a key padding
  mask, masked mean + max pooling, linear head.
* :class:`LearnedRasterizer`: the 8th-place Kaggle model (github.com/alekseynp/kaggle-quickdraw): dilated Conv1d
  features per point, averaged onto a G x G grid at each point's cell (:func:`scatter_mean_grid`), then the residual
  stages of a torchvision ResNet, global average pooling and a linear head. The network draws its own picture.

Torch ops only; exportable to ONNX (opset >= 16, for ScatterElements with reduction="add") with dynamic batch and
length by the TorchScript-based exporter.
"""
from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

# Steps are small next to positions: on 4 real simplified classes packed at L = 128, |dx| has median 0.04 and 90th
# percentile 0.23 (|dy| 0.04, 0.17) against x's 0.45 and 0.88. Scaled by 10, a typical step is the size of a typical
# position, so the first conv's dx/dy weights do not start with a tenfold smaller effective learning rate.
_FEATURE_SCALE = {"x": 1.0, "y": 1.0, "dx": 10.0, "dy": 10.0, "pen_up": 1.0, "dt": 1.0}
_TRUNKS = {"resnet18": (BasicBlock, (2, 2, 2, 2)), "resnet34": (BasicBlock, (3, 4, 6, 3)),
           "resnet50": (Bottleneck, (3, 4, 6, 3))}


def check_point_chans(in_chans: int) -> int:
    """in_chans as given, or ValueError: point models read F = 6 (no time) or 7 (with dt) features (qdraw.points)."""
    if in_chans not in (6, 7):
        raise ValueError(f"point models take in_chans = 6 (simplified: no time) or 7 (raw: with dt) features per "
                         f"point (qdraw.points), got {in_chans}")
    return in_chans


def point_mask(x: torch.Tensor) -> torch.Tensor:
    """Bool (B, L): True at real points (feature 0, `valid`, is 1 there and 0 on padding)."""
    return x[..., 0] > 0


def masked_pool(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean and max over the valid points of (B, L, C) features → (B, 2C); a drawing with no points pools to zeros.

    `torch.where`, not a multiply, keeps padding out, so even non-finite values there cannot leak into the result.
    """
    keep = mask.unsqueeze(-1)
    count = keep.sum(1).to(h.dtype)
    mean = torch.where(keep, h, 0.0).sum(1) / count.clamp(min=1.0)
    peak = torch.where(keep, h, float("-inf")).amax(1)
    peak = torch.where(count > 0, peak, 0.0)
    return torch.cat([mean, peak], -1)


class PointConv(nn.Module):
    """Conv1d over the point axis, LayerNorm over channels, ReLU, then zeros on padding: (B, C, L) → (B, C', L)."""

    def __init__(self, in_chans: int, out_chans: int, kernel_size: int = 3, dilation: int = 1):
        super().__init__()
        self.conv = nn.Conv1d(in_chans, out_chans, kernel_size, padding=dilation * (kernel_size - 1) // 2,
                              dilation=dilation)
        self.norm = nn.LayerNorm(out_chans)

    def forward(self, h: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.conv(h).transpose(1, 2)).transpose(1, 2)
        return torch.relu(h) * keep


class PointFeatures(nn.Module):
    """The features a point model reads (all but `valid`, dx and dy scaled), through a stack of PointConvs.

    Input float32 (B, L, F), output float32 (B, widths[-1], L), zero on padding.
    """

    def __init__(self, in_chans: int, widths: tuple[int, ...], kernel_size: int = 3,
                 dilations: tuple[int, ...] | None = None):
        super().__init__()
        names = ("x", "y", "dx", "dy", "pen_up", "dt")[:check_point_chans(in_chans) - 1]
        self.register_buffer("scale", torch.tensor([_FEATURE_SCALE[n] for n in names]), persistent=False)
        dilations = dilations or (1,) * len(widths)
        if len(dilations) != len(widths) or not widths:
            raise ValueError(f"need one dilation per conv width, got widths {widths} and dilations {dilations}")
        chans = (len(names), *widths)
        self.convs = nn.ModuleList(PointConv(chans[i], chans[i + 1], kernel_size, dilations[i])
                                   for i in range(len(widths)))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        keep = mask.unsqueeze(1).to(x.dtype)
        h = (x[..., 1:] * self.scale).transpose(1, 2) * keep
        for conv in self.convs:
            h = conv(h, keep)
        return h


def _reverse_valid(lengths: torch.Tensor, size: int) -> torch.Tensor:
    """Int64 (B, size): index n-1-i for i < n, i elsewhere; gathering with it reverses each valid prefix in place,
    and gathering again undoes it (the permutation is its own inverse)."""
    pos = torch.arange(size, device=lengths.device).unsqueeze(0)
    last = lengths.unsqueeze(1) - 1
    return torch.where(pos <= last, last - pos, pos)


class MaskedBiRNN(nn.Module):
    """Stacked bidirectional GRU/LSTM over (B, L, C) whose outputs at valid points are exact whatever the padding.

    pack_padded_sequence is what torch offers, but the TorchScript-based ONNX exporter (the one that runs here: the
    dynamo one needs onnxscript) exports packed sequences poorly, and a bidirectional RNN run over the padded batch
    would start its backward pass in the padding. Instead each layer runs two unidirectional RNNs: forward over the
    batch as it is (valid points are a prefix, and step i only sees steps <= i), and backward as a forward RNN over
    the batch with each valid prefix reversed in place by a gather (:func:`_reverse_valid`), its outputs put back by
    the same gather. Padding comes after the valid points in both directions, so it never reaches them. Plain RNN
    ops and gathers: exact and ONNX-exportable with dynamic batch and length (on CUDA the gathers' backward is a
    scatter-add, bit-reproducible under torch.use_deterministic_algorithms, like :func:`scatter_mean_grid`).
    """

    def __init__(self, cell: str, input_size: int, hidden: int, layers: int, dropout: float = 0.0):
        super().__init__()
        rnn = {"gru": nn.GRU, "lstm": nn.LSTM}.get(cell)
        if rnn is None or layers < 1 or hidden < 1:
            raise ValueError(f"need cell 'gru' or 'lstm', layers >= 1 and hidden >= 1, "
                             f"got {cell!r}, {layers}, {hidden}")
        sizes = [input_size] + [2 * hidden] * (layers - 1)
        self.fwd = nn.ModuleList(rnn(s, hidden, batch_first=True) for s in sizes)
        self.bwd = nn.ModuleList(rnn(s, hidden, batch_first=True) for s in sizes)
        self.drop = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        index = _reverse_valid(lengths, h.shape[1]).unsqueeze(-1)
        for i, (fwd, bwd) in enumerate(zip(self.fwd, self.bwd)):
            if i:
                h = self.drop(h)
            ahead = fwd(h)[0]
            back = bwd(torch.gather(h, 1, index.expand(-1, -1, h.shape[2])))[0]
            h = torch.cat([ahead, torch.gather(back, 1, index.expand(-1, -1, back.shape[2]))], -1)
        return h


class StrokeRNN(nn.Module):
    """Conv front end → bidirectional GRU/LSTM → masked mean + max → linear: (B, L, F) → (B, num_classes)."""

    def __init__(self, num_classes: int, in_chans: int = 6, cell: str = "gru", hidden: int = 128, layers: int = 2,
                 conv_widths: tuple[int, ...] = (64, 128), dropout: float = 0.1):
        super().__init__()
        self.in_chans = check_point_chans(in_chans)
        self.front = PointFeatures(in_chans, tuple(conv_widths))
        self.rnn = MaskedBiRNN(cell, conv_widths[-1], hidden, layers, dropout)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(4 * hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = point_mask(x)
        h = self.front(x, mask).transpose(1, 2)
        h = self.rnn(h, mask.sum(1))
        return self.head(self.drop(masked_pool(h, mask)))


class EncoderBlock(nn.Module):
    """Pre-LN Transformer encoder block (arXiv 2002.04745): x + attn(LN(x)), then x + MLP(LN(x)); (B, L, D) → same.

    Written out rather than nn.TransformerEncoderLayer: nn.MultiheadAttention's traced ONNX graph keeps the sample's
    batch and length in its reshapes (onnxruntime then refuses other sizes), while unflatten/flatten of the channel
    axis and scaled_dot_product_attention export with both dynamic.
    """

    def __init__(self, dim: int, heads: int, mlp_dim: int, dropout: float = 0.0):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(mlp_dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, attend: torch.Tensor) -> torch.Tensor:
        """h float (B, L, D); attend bool (B, 1, 1, L), True for the keys each query may look at."""
        q, k, v = self.qkv(self.norm1(h)).unflatten(-1, (3, self.heads, -1)).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=attend, dropout_p=self.dropout if self.training else 0.0)
        h = h + self.drop(self.proj(a.transpose(1, 2).flatten(2)))
        return h + self.drop(self.mlp(self.norm2(h)))


class StrokeTransformer(nn.Module):
    """Conv front end → sinusoidal positions → pre-LN Transformer encoder → masked mean + max → linear.

    Sinusoidal positions (arXiv 1706.03762) are computed for the input's length, so any L works, with no table to
    outgrow. Padding keys are masked out of attention; a drawing with no points attends to its first (padding) row
    so softmax never sees a row of -inf (NaN), and pooling then ignores it anyway.
    """

    def __init__(self, num_classes: int, in_chans: int = 6, dim: int = 128, depth: int = 4, heads: int = 4,
                 mlp_ratio: float = 2.0, conv_widths: tuple[int, ...] = (64,), dropout: float = 0.1):
        super().__init__()
        self.in_chans = check_point_chans(in_chans)
        if dim % heads or dim % 2:
            raise ValueError(f"dim must be even and divisible by heads, got dim={dim}, heads={heads}")
        self.front = PointFeatures(in_chans, (*conv_widths, dim))
        inv_freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.blocks = nn.ModuleList(EncoderBlock(dim, heads, int(dim * mlp_ratio), dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(2 * dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = point_mask(x)
        h = self.front(x, mask).transpose(1, 2)
        angle = torch.arange(h.shape[1], device=x.device, dtype=h.dtype).unsqueeze(1) * self.inv_freq
        h = h + torch.cat([angle.sin(), angle.cos()], -1)
        first = torch.arange(h.shape[1], device=x.device).unsqueeze(0) == 0
        attend = (mask | (first & (mask.sum(1, keepdim=True) == 0)))[:, None, None, :]
        for block in self.blocks:
            h = block(h, attend)
        return self.head(self.drop(masked_pool(self.norm(h), mask)))


def grid_cells(x: torch.Tensor, grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Int64 column and row (B, L) of each point on a grid x grid raster: clamp(floor(v * grid), 0, grid - 1)."""
    cells = (x[..., 1:3] * grid).floor().clamp(0, grid - 1).long()
    return cells[..., 0], cells[..., 1]


def scatter_mean_grid(feats: torch.Tensor, col: torch.Tensor, row: torch.Tensor, mask: torch.Tensor,
                      grid: int) -> torch.Tensor:
    """Average per-point features onto a grid: float (B, C, L) → float (B, C, grid, grid), row-major (y, x).

    Cell (row, col) holds the mean of the valid points that fall in it, an empty cell 0; padding adds nothing.
    Two `scatter_add`s (sums, then counts), one per batch with no loop over drawings; ONNX ScatterElements with
    reduction="add" accumulates duplicate indices as torch does. On CUDA the sums' order, hence their last bits,
    is only fixed under torch.use_deterministic_algorithms (train.py --deterministic).
    """
    b, c, _ = feats.shape
    weight = mask.to(feats.dtype).unsqueeze(1)
    cell = (row * grid + col).unsqueeze(1)
    sums = feats.new_zeros(b, c, grid * grid).scatter_add(2, cell.expand(-1, c, -1), feats * weight)
    counts = feats.new_zeros(b, 1, grid * grid).scatter_add(2, cell, weight)
    return (sums / counts.clamp(min=1.0)).view(b, c, grid, grid)


def _resnet_stages(trunk: str, in_chans: int, width: int) -> tuple[nn.Sequential, int]:
    """layer1..layer4 of a torchvision ResNet with stage widths width * (1, 2, 4, 8) (64 = torchvision's), taking
    in_chans channels (a projection shortcut is added where they differ); returns the stages and their output
    channels. Blocks are torchvision's BasicBlock / Bottleneck, initialised as torchvision's ResNet does, under
    torchvision's names: with width 64 and in_chans 64, ImageNet layer1..layer4 weights fit as they are."""
    if trunk not in _TRUNKS:
        raise ValueError(f"trunk must be one of {sorted(_TRUNKS)}, got {trunk!r}")
    block, depths = _TRUNKS[trunk]
    stages, chans = OrderedDict(), in_chans
    for i, depth in enumerate(depths):
        planes, stride = width * 2**i, 1 if i == 0 else 2
        out = planes * block.expansion
        down = None
        if stride != 1 or chans != out:
            down = nn.Sequential(nn.Conv2d(chans, out, 1, stride, bias=False), nn.BatchNorm2d(out))
        blocks = [block(chans, planes, stride, down)] + [block(out, planes) for _ in range(depth - 1)]
        stages[f"layer{i + 1}"] = nn.Sequential(*blocks)
        chans = out
    layers = nn.Sequential(stages)
    for m in layers.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return layers, chans


class LearnedRasterizer(nn.Module):
    """Dilated point convs → mean onto a grid x grid raster → ResNet stages → average pool → linear.

    Each point's feature vector (point_channels wide, from dx, dy, pen_up, dt when present, x and y, with a
    receptive field of 2 * sum(dilations) + 1 = 31 points by default) is averaged into the cell under the point
    (:func:`grid_cells`, :func:`scatter_mean_grid`), so the picture's "ink" is learned; then torchvision's residual
    stages (no stem: the grid is already small, 32 px by default) at widths width * (1, 2, 4, 8).
    """

    def __init__(self, num_classes: int, in_chans: int = 6, grid: int = 32, point_channels: int = 64,
                 trunk: str = "resnet34", width: int = 64, point_hidden: int = 64,
                 dilations: tuple[int, ...] = (1, 2, 4, 8), dropout: float = 0.0):
        super().__init__()
        self.in_chans = check_point_chans(in_chans)
        if grid < 1 or point_channels < 1 or width < 1:
            raise ValueError(f"grid, point_channels and width must be positive, got {grid}, {point_channels}, {width}")
        self.grid = grid
        self.points = PointFeatures(in_chans, (point_hidden,) * len(dilations), dilations=tuple(dilations))
        self.project = PointConv(point_hidden, point_channels, kernel_size=1)
        self.trunk, chans = _resnet_stages(trunk, point_channels, width)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(chans, num_classes)

    def rasterize(self, x: torch.Tensor) -> torch.Tensor:
        """The learned raster: float (B, point_channels, grid, grid)."""
        mask = point_mask(x)
        feats = self.project(self.points(x, mask), mask.unsqueeze(1).to(x.dtype))
        col, row = grid_cells(x, self.grid)
        return scatter_mean_grid(feats, col, row, mask, self.grid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # mean over (H, W) rather than AdaptiveAvgPool2d, whose CUDA backward has no deterministic kernel
        return self.head(self.drop(self.trunk(self.rasterize(x)).mean((2, 3))))
