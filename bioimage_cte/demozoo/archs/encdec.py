"""Two non-UNet 2D networks: a plain encoder-decoder without skip connections, and a ResNet-like encoder with a
feature-pyramid decoder (the shape of segmentation_models_pytorch networks with a pretrained encoder).

This file ships inside demo-zoo packages as their ``pytorch_state_dict`` architecture, so it imports
nothing but torch. No module is named ``bottleneck``: the layer to perturb is found from the traced
network (:mod:`bioimage_cte.predict.layers`).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class EncoderDecoder2d(nn.Module):
    """Encoder of strided convolutions, decoder of transposed convolutions, no skip connections; logits out.

    Parameters
    ----------
    in_channels, out_channels : int
        Input and output channels.
    features : int
        Channels at the first level, doubled at every down-sampling.
    depth : int
        Number of 2x down-samplings; the input's spatial size must be a multiple of ``2**depth``.
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 1, features: int = 8, depth: int = 3):
        super().__init__()
        widths = [features * 2**level for level in range(depth + 1)]
        self.encoder = nn.Sequential(
            _conv(in_channels, widths[0]),
            *[nn.Sequential(_conv(widths[i], widths[i + 1], stride=2), _conv(widths[i + 1], widths[i + 1]))
              for i in range(depth)],
        )
        self.decoder = nn.Sequential(
            *[nn.Sequential(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2), _conv(widths[i], widths[i]))
              for i in reversed(range(depth))],
        )
        self.head = nn.Conv2d(widths[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.decoder(self.encoder(x)))


class _BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convolutions and an identity (or 1x1 strided) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = functional.relu(self.bn1(self.conv1(x)))
        return functional.relu(self.bn2(self.conv2(out)) + identity)


class ResNetEncoder(nn.Module):
    """A small ResNet: a stem, then ``len(widths)`` stages of two basic blocks, each stage after the first at half
    the resolution. ``forward`` returns the feature map of every stage (finest first), as pretrained-encoder
    libraries do."""

    def __init__(self, in_channels: int, widths: tuple[int, ...]):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        for i, width in enumerate(widths):
            cin = widths[max(i - 1, 0)]
            self.add_module(f"layer{i + 1}", nn.Sequential(_BasicBlock(cin, width, stride=1 if i == 0 else 2),
                                                           _BasicBlock(width, width)))
        self.n_stages = len(widths)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        x = self.stem(x)
        for i in range(self.n_stages):
            x = getattr(self, f"layer{i + 1}")(x)
            features.append(x)
        return features


class ResNetFPN2d(nn.Module):
    """ResNet-like encoder and a feature-pyramid decoder (lateral 1x1 convolutions, top-down upsampling); logits out.

    Parameters
    ----------
    in_channels, out_channels : int
        Input and output channels.
    features : int
        Channels of the first stage, doubled at every further stage; also the pyramid's width.
    depth : int
        Number of 2x down-samplings (stages minus one); the input size must be a multiple of ``2**depth``.
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 1, features: int = 8, depth: int = 3):
        super().__init__()
        widths = tuple(features * 2**level for level in range(depth + 1))
        self.encoder = ResNetEncoder(in_channels, widths)
        self.lateral = nn.ModuleList([nn.Conv2d(w, features, 1) for w in widths])
        self.smooth = _conv(features, features)
        self.head = nn.Conv2d(features, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder(x)
        top = self.lateral[-1](features[-1])
        for lateral, feature in zip(reversed(self.lateral[:-1]), reversed(features[:-1]), strict=True):
            top = lateral(feature) + functional.interpolate(top, size=feature.shape[-2:], mode="nearest")
        return self.head(self.smooth(top))
