"""A small 2D UNet with a named ``bottleneck`` module.

This file ships inside each demo-zoo package as its ``pytorch_state_dict`` architecture, so it
imports nothing but torch. Grey-box perturbation hooks find the deepest encoder output at the
module named ``bottleneck``.
"""

from __future__ import annotations

import torch
from torch import nn


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class UNet2d(nn.Module):
    """UNet: ``depth`` pooling levels, ``features * 2**level`` channels, logits out.

    Parameters
    ----------
    in_channels, out_channels : int
        Input channels and output channels (logits; the package's postprocessing applies sigmoid).
    features : int
        Channels at the first level.
    depth : int
        Number of 2x down-samplings; the input's spatial size must be a multiple of ``2**depth``.
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 1, features: int = 8, depth: int = 2):
        super().__init__()
        widths = [features * 2**level for level in range(depth + 1)]
        self.encoders = nn.ModuleList(
            [_block(in_channels if i == 0 else widths[i - 1], widths[i]) for i in range(depth)]
        )
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = _block(widths[depth - 1], widths[depth])
        self.upsamplers = nn.ModuleList(
            [nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in reversed(range(depth))]
        )
        self.decoders = nn.ModuleList([_block(2 * widths[i], widths[i]) for i in reversed(range(depth))])
        self.head = nn.Conv2d(widths[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for up, decoder, skip in zip(self.upsamplers, self.decoders, reversed(skips), strict=True):
            x = decoder(torch.cat([up(x), skip], dim=1))
        return self.head(x)
