"""Channel dropout inside a network: the feature perturbation every grey-box adapter applies.

The mask is drawn here, once, for every weights format (the torch forward hook and the ONNX graph's mask input
multiply by the same :meth:`FeatureDropout.channel_mask`), so every format of one network drops the same channels
for the same seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["FeatureDropout"]


@dataclass(frozen=True)
class FeatureDropout:
    """Channel dropout: whole feature maps zeroed with probability ``p``, survivors scaled by 1/(1-p).

    ``seed`` fixes the channel mask; the same mask is used for every tile and slice of one image.

    Examples
    --------
    >>> FeatureDropout(0.2, seed=0)
    FeatureDropout(p=0.2, seed=0)
    """

    p: float
    seed: int

    def __post_init__(self) -> None:
        if not 0.0 <= self.p < 1.0:
            raise ValueError(f"dropout rate p={self.p} is out of range: use 0 <= p < 1 (e.g. 0.2)")

    def channel_mask(self, n_channels: int) -> np.ndarray:
        """The (n_channels,) float32 mask: 0 for a dropped channel, 1/(1-p) for a kept one.

        Drawn with torch's generator from ``seed`` (torch's draw is the same on every platform).
        """
        import torch

        gen = torch.Generator().manual_seed(self.seed)
        keep = torch.rand(n_channels, generator=gen) >= self.p
        return (keep.float() / (1.0 - self.p)).numpy()
