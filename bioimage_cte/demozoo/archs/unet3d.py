"""A small 3D UNet in the layout of pytorch-3dunet: ``encoders`` (the last one is the bottleneck), ``decoders``.

This file ships inside each 3D demo-zoo package as its ``pytorch_state_dict`` architecture, so it
imports nothing but torch. No module is named ``bottleneck``: the layer to perturb is found from
the traced network (:mod:`bioimage_cte.predict.layers`).
"""

from __future__ import annotations

import torch
from torch import nn


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(cin, cout, 3, padding=1, bias=False),
        nn.GroupNorm(min(4, cout), cout),
        nn.ReLU(inplace=True),
        nn.Conv3d(cout, cout, 3, padding=1, bias=False),
        nn.GroupNorm(min(4, cout), cout),
        nn.ReLU(inplace=True),
    )


class UNet3d(nn.Module):
    """3D UNet: ``depth`` 2x poolings of (z, y, x), ``features * 2**level`` channels, logits out.

    Parameters
    ----------
    in_channels, out_channels : int
        Input channels and output channels (logits; the package's postprocessing applies sigmoid).
    features : int
        Channels at the first level.
    depth : int
        Number of 2x down-samplings; each spatial size must be a multiple of ``2**depth``.
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 1, features: int = 4, depth: int = 2):
        super().__init__()
        widths = [features * 2**level for level in range(depth + 1)]
        self.encoders = nn.ModuleList(
            [_block(in_channels, widths[0])]
            + [nn.Sequential(nn.MaxPool3d(2), _block(widths[i - 1], widths[i])) for i in range(1, depth + 1)]
        )
        self.upsamplers = nn.ModuleList(
            [nn.ConvTranspose3d(widths[i + 1], widths[i], 2, stride=2) for i in reversed(range(depth))]
        )
        self.decoders = nn.ModuleList([_block(2 * widths[i], widths[i]) for i in reversed(range(depth))])
        self.final_conv = nn.Conv3d(widths[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
        for up, decoder, skip in zip(self.upsamplers, self.decoders, reversed(skips[:-1]), strict=True):
            x = decoder(torch.cat([up(x), skip], dim=1))
        return self.final_conv(x)
