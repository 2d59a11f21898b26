"""ShuffleNet v2 (Ma et al. 2018, "ShuffleNet V2: Practical Guidelines for Efficient CNN
Architecture Design", Table 5).

3x3/2 conv + 3x3/2 max pool, three stages of 4, 8 and 4 units whose first unit has stride 2, a
1x1 conv to 1024 channels (2048 for x2.0), global average pooling and one linear layer; 224 px
gives 112 → 56 → 28 → 14 → 7. Widths by multiplier, first stage / second / third:
x0.5 48/96/192, x1.0 116/232/464, x1.5 176/352/704, x2.0 244/488/976; the stem has 24 channels.
The YAML spells the widths out. Every layer keeps at least 1 px, so the ImageNet form runs on any
input size (28 px: 14 → 7 → 4 → 2 → 1); the small form drops the stem's stride and pool.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ablab.blocks.shuffle import ShuffleV2Unit
from ablab.layers import ConvNormAct
from ablab.models.levels import FeatureLevels


class ShuffleNetV2(FeatureLevels, nn.Module):
    """logits = head(stages(stem(x))); head = 1x1 conv-norm-act → global pool → linear."""

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 1000,
        *,
        depths: Sequence[int] = (4, 8, 4),
        widths: Sequence[int] = (116, 232, 464),
        stem_width: int = 24,
        stem_stride: int = 2,
        stem_pool: bool = True,
        head_width: int = 1024,
        norm: str = "bn",
        act: str = "relu",
    ) -> None:
        super().__init__()
        depths, widths = tuple(depths), tuple(widths)
        stem: list[nn.Module] = [
            ConvNormAct(in_channels, stem_width, 3, stem_stride, norm=norm, act=act)
        ]
        if stem_pool:
            stem.append(nn.MaxPool2d(3, 2, 1))
        self.stem = nn.Sequential(*stem)
        stages, c_in = [], stem_width
        for depth, width in zip(depths, widths, strict=True):
            blocks = []
            for j in range(depth):
                blocks.append(ShuffleV2Unit(c_in, width, 2 if j == 0 else 1, norm=norm, act=act))
                c_in = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(
            ConvNormAct(c_in, head_width, 1, norm=norm, act=act),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(head_width, num_classes),
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))
