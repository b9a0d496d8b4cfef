"""CBAM: Convolutional Block Attention Module (Woo et al., arXiv 1807.06521) and a CBAM-ResNet bottleneck.

CBAM refines a feature map with two cheap attention steps applied one after the other: channel attention (which
features matter) and spatial attention (where they are). The paper inserts it into every ResNet bottleneck on the
residual branch, just before the identity is added back; `CBAMBottleneck` does that on top of torchvision's
`Bottleneck`, so parameter names stay those of torchvision's ResNet plus `*.cbam.*` and ImageNet ResNet weights load
into everything but the attention modules.
"""

import torch
from torch import nn
from torchvision.models.resnet import Bottleneck


class ChannelAttention(nn.Module):
    """Channel attention M_c = sigmoid(MLP(avgpool(F)) + MLP(maxpool(F))), paper eq. (2).

    The MLP is shared between the two pooled descriptors and implemented with 1x1 convolutions so it works on
    (B, C, 1, 1) tensors without reshaping.
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.mlp(x.mean(dim=(2, 3), keepdim=True))
        mx = self.mlp(x.amax(dim=(2, 3), keepdim=True))
        return x * torch.sigmoid(avg + mx)


class SpatialAttention(nn.Module):
    """Spatial attention M_s = sigmoid(conv7x7([mean_c(F); max_c(F)])), paper eq. (3)."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.conv(pooled))


class CBAM(nn.Module):
    """Channel attention followed by spatial attention; the paper found this order best (Table 3).

    Float tensor of size (B, C, H, W) in, same size out.
    """

    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7) -> None:
        super().__init__()
        self.channel = ChannelAttention(channels, reduction)
        self.spatial = SpatialAttention(kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial(self.channel(x))


class CBAMBottleneck(Bottleneck):
    """torchvision's ResNet bottleneck with CBAM on the residual branch, before the identity addition (paper Fig. 3).

    Takes exactly `Bottleneck`'s constructor arguments so `torchvision.models.resnet.ResNet` can build it.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.cbam = CBAM(self.conv3.out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(self.cbam(out) + identity)
