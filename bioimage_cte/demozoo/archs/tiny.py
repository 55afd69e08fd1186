"""A tiny convolutional network of any dimensionality and any number of output tensors.

Ships inside the shape-test packages (:mod:`bioimage_cte.demozoo.shapes`) as their
``pytorch_state_dict`` architecture, so it imports nothing but torch. Two 3x3(x3) convolutions
give a receptive field of 5 pixels: a halo of 2 or more makes tiled prediction exact.
"""

from __future__ import annotations

import torch
from torch import nn


class TinyNet(nn.Module):
    """conv - ReLU - conv - ReLU, then one 1x1 head per output tensor; logits out.

    Parameters
    ----------
    dims : int
        2 for (b, c, y, x) inputs, 3 for (b, c, z, y, x).
    in_channels : int
        Input channels.
    out_channels : list of int
        Channels of each output tensor; with several, ``forward`` returns a tuple.
    features : int
        Hidden channels.
    """

    def __init__(self, dims: int = 2, in_channels: int = 1, out_channels: list[int] | None = None,
                 features: int = 4):
        super().__init__()
        conv = nn.Conv3d if dims == 3 else nn.Conv2d
        self.body = nn.Sequential(conv(in_channels, features, 3, padding=1), nn.ReLU(),
                                  conv(features, features, 3, padding=1), nn.ReLU())
        self.heads = nn.ModuleList([conv(features, n, 1) for n in (out_channels or [1])])

    def forward(self, x: torch.Tensor):
        features = self.body(x)
        outs = tuple(head(features) for head in self.heads)
        return outs[0] if len(outs) == 1 else outs
