"""DenseNet (Huang et al. 2017, "Densely Connected Convolutional Networks").

ImageNet layout (Table 1): 7x7/2 conv + norm + act + 3x3/2 max pool, four dense blocks (6, 12, 24,
16 layers for DenseNet-121) of bottleneck layers with growth rate k = 32, transitions with θ = 0.5
between them, then a final norm + act, global average pooling and one linear layer. CIFAR layout
(§3, "Implementation details"): one 3x3/1 conv to 2k channels with no norm or act (the first dense
layer pre-activates it), three equal blocks of (L − 4)/6 bottleneck layers for DenseNet-BC.
Stage i is [transition →] dense block, so stage outputs carry the block widths c_in + L·k; 224 px
gives 56 → 28 → 14 → 7. The pools round up, so the ImageNet form runs on any input of at least
1 px (28 px: 7 → 4 → 2 → 1).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

import ablab.blocks.stem  # noqa: F401  (registers the stems in STEM)
from ablab.blocks.dense import DenseBlock, Transition
from ablab.errors import ConfigError
from ablab.layers import make_act, make_norm
from ablab.models.levels import FeatureLevels
from ablab.registry import STEM


class DenseNet(FeatureLevels, nn.Module):
    """logits = head(stages(stem(x))); stage i = [transition →] a block of ``depths[i]`` layers."""

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 1000,
        *,
        growth_rate: int = 32,
        depths: Sequence[int] = (6, 12, 24, 16),
        bn_size: int | None = 4,
        compression: float = 0.5,
        stem: str = "imagenet",
        stem_width: int | None = None,
        norm: str = "bn",
        act: str = "relu",
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        depths = tuple(depths)
        make_stem = STEM[stem]
        if not 0 < compression <= 1:
            raise ConfigError(f"compression θ must be in (0, 1], got {compression}")
        width = stem_width or 2 * growth_rate  # the paper's 2k stem (64 for k = 32)
        # The first dense layer pre-activates: a CIFAR stem is a bare conv (§3).
        self.stem = make_stem(in_channels, width, norm, act, preact=True)
        kw = {"norm": norm, "act": act, "drop_rate": drop_rate}
        stages, c_in = [], width
        for i, depth in enumerate(depths):
            parts = OrderedDict()
            if i > 0:
                c_out = math.floor(compression * c_in)  # ⌊θ·m⌋
                parts["transition"] = Transition(c_in, c_out, **kw)
                c_in = c_out
            parts["block"] = DenseBlock(c_in, depth, growth_rate, bn_size=bn_size, **kw)
            c_in = parts["block"].out_channels
            stages.append(nn.Sequential(parts))
        self.stages = nn.Sequential(*stages)
        # Blocks end on a concatenation with no norm-act of its own (pre-activation): add one.
        self.head = nn.Sequential(
            make_norm(norm, c_in),
            make_act(act, c_in),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(c_in, num_classes),
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))
