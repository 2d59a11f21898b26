"""VGG (Simonyan & Zisserman 2015, "Very Deep Convolutional Networks for Large-Scale Image
Recognition"), configurations A/B/D/E = VGG-11/13/16/19, optionally with BatchNorm.

Every conv is 3x3/1 pad 1, every stage ends in a 2x2/2 max pool, and the head is
FC 4096 → FC 4096 → FC classes with dropout. Two stacked 3x3 convs see a 5x5 window with 18/25 =
0.72 of the parameters and one more non-linearity (the notes' argument for the design).
VGG-16 has 138,357,544 parameters (about 528 MiB in float32); the notes' "550M" is its size in MB,
not its parameter count, and its last stage stays at 512 channels.

Pools use ``ceil_mode`` so 28 px inputs survive five halvings (28 → 14 → 7 → 4 → 2 → 1); at 224 px
the sizes are exactly the paper's (224 → 7).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ablab.layers import ConvNormAct, make_act
from ablab.models.levels import FeatureLevels


class VGG(FeatureLevels, nn.Module):
    """logits = head(stages(stem(x))); stage i: ``depths[i]`` 3x3 convs of ``widths[i]``, max pool."""

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 1000,
        *,
        depths: Sequence[int] = (2, 2, 3, 3, 3),
        widths: Sequence[int] = (64, 128, 256, 512, 512),
        norm: str = "none",
        act: str = "relu",
        conv_bias: bool | None = None,
        head_pool: int = 7,
        head_widths: Sequence[int] = (4096, 4096),
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.stem = nn.Identity()  # VGG has no stem: the first stage reads the image directly
        stages, c_in = [], in_channels
        for depth, width in zip(tuple(depths), tuple(widths), strict=True):
            layers = []
            for _ in range(depth):
                layers.append(ConvNormAct(c_in, width, 3, norm=norm, act=act, bias=conv_bias))
                c_in = width
            layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        head: list[nn.Module] = [nn.AdaptiveAvgPool2d(head_pool), nn.Flatten()]
        features = c_in * head_pool * head_pool
        for width in head_widths:
            head += [nn.Linear(features, width), make_act(act, width), nn.Dropout(dropout)]
            features = width
        head.append(nn.Linear(features, num_classes))
        self.head = nn.Sequential(*head)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))
