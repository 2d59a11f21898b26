"""RepVGG (Ding et al. 2021): a plain stack of 3x3 conv + ReLU at inference, trained multi-branch.

RepVGG-A0: depths 1, 2, 4, 14, 1 with widths min(64, 64a), 64a, 128a, 256a, 512b for a = 0.75,
b = 2.5 (48, 48, 96, 192, 1280); the first layer of every stage has stride 2. ``reparameterize()``
turns the trained net into the single-path deployment form, block by block.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ablab.blocks.repvgg import RepVGGBlock
from ablab.models.levels import FeatureLevels


class RepVGG(FeatureLevels, nn.Module):
    """logits = head(stages(stem(x))), stem and stages made of RepVGG blocks."""

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 1000,
        *,
        depths: Sequence[int] = (1, 2, 4, 14, 1),
        widths: Sequence[int] = (48, 48, 96, 192, 1280),
        stem_stride: int = 2,
        norm: str = "bn",
        act: str = "relu",
        shortcut: str = "identity",
    ) -> None:
        super().__init__()
        depths, widths = tuple(depths), tuple(widths)
        kw = {"norm": norm, "act": act, "shortcut": shortcut}
        # Stage 0 is a single strided block: the stem.
        self.stem = RepVGGBlock(in_channels, widths[0], stem_stride, **kw)
        stages, c_in = [], widths[0]
        for depth, width in zip(depths[1:], widths[1:], strict=True):
            blocks = []
            for j in range(depth):
                blocks.append(RepVGGBlock(c_in, width, 2 if j == 0 else 1, **kw))
                c_in = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, num_classes)
        )

    @torch.no_grad()
    def reparameterize(self) -> RepVGG:
        """Fuse every block into one 3x3 conv (call in eval mode); returns ``self``."""
        for module in self.modules():
            if isinstance(module, RepVGGBlock):
                module.reparameterize()
        return self

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))
