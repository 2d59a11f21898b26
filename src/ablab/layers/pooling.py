"""Pooling layers: overlapping max pooling that accepts small maps, and spatial pyramid pooling.

Overlapping pooling: Krizhevsky et al. 2012 (3x3 windows at stride 2). Spatial pyramid pooling:
He et al. 2014, "Spatial Pyramid Pooling in Deep Convolutional Networks for Visual Recognition":
max pooling into fixed grids of 1x1, 2x2, 4x4, … bins gives a fixed-length vector from any input
size, so the FC head no longer fixes the input resolution.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ClampedMaxPool2d(nn.MaxPool2d):
    """max over k x k windows at stride s, with the window cut to the map when the map is smaller.

    On maps at least as large as the window this is exactly ``nn.MaxPool2d``; on smaller ones (an
    ImageNet layout fed 28 px digits) it pools the whole map instead of failing, so an ImageNet
    form still runs on small inputs.
    """

    def forward(self, x: Tensor) -> Tensor:
        k = self.kernel_size
        size = (min(k, x.shape[-2]), min(k, x.shape[-1])) if isinstance(k, int) else k
        return F.max_pool2d(x, size, self.stride, self.padding, self.dilation, self.ceil_mode)


class SpatialPyramidPool(nn.Module):
    """y = concat_l flatten(adaptive_max_pool(x, l x l)) for each level l: C · Σ l² features."""

    def __init__(self, levels: Sequence[int] = (4, 2, 1)) -> None:
        super().__init__()
        self.levels = tuple(levels)
        self.pools = nn.ModuleList(nn.AdaptiveMaxPool2d(level) for level in self.levels)

    def output_features(self, channels: int) -> int:
        """Length of the pooled vector for ``channels`` input maps."""
        return channels * sum(level * level for level in self.levels)

    def forward(self, x: Tensor) -> Tensor:
        # (N, C, H, W) → (N, C·l²) per level → (N, C·Σl²)
        return torch.cat([pool(x).flatten(1) for pool in self.pools], dim=1)
