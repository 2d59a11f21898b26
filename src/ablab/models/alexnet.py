"""AlexNet (Krizhevsky, Sutskever & Hinton 2012, "ImageNet Classification with Deep Convolutional
Neural Networks") and ZF-Net (Zeiler & Fergus 2014, "Visualizing and Understanding Convolutional
Networks") as one class; SPP-net's head (He et al. 2014) as an option.

The notes' AlexNet (``conf/model/alexnet.yaml``): 224x224x3 → conv 11x11/4, 96 → overlapping max
pool 3/2 → LRN(5) → conv 5x5, 256, two groups → pool → LRN → conv 3x3 384 → 384 → 256 (the last two
in two groups, as each GPU saw only its own half) → pool → FC 4096 → FC 4096 → FC 1000, ReLU,
dropout 0.5: 60,965,224 parameters. Output sizes at 224 px with padding 2: 55 → 27 → 27 → 13 → 13
→ 13 → 13 → 6, so the first FC layer reads 6x6x256 = 9216 features.
Notes' slips: "(224 − 11)/4 + 2 = 55" is wrong — ⌊(224 − 11)/4⌋ + 1 = 54; 55 needs a 227 px
input or padding 2 (torchvision's choice, used here). "About 240M parameters" is ~61.0M (~233 MiB
in float32). With two groups, conv2's kernels are 5x5x48, not 5x5x96.

torchvision's layout (64/192/384/256/256, no LRN, no groups: 61,100,840 parameters) is the same
class with other arguments (``alexnet_torchvision.yaml``); ZF-Net is a 7x7/2 first conv and a
5x5/2 second conv without groups (``zfnet.yaml``).

Pools are ``ClampedMaxPool2d`` with ``ceil_mode``: at ImageNet sizes exactly 3/2 overlapping
pooling, while a 28 px input (1 → 1 after the last pool instead of an error) still runs through
the ImageNet form; ``alexnet_small.yaml`` is the layout meant for 28-32 px inputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ablab.layers import ConvNormAct, make_act, make_norm
from ablab.layers.pooling import ClampedMaxPool2d, SpatialPyramidPool


class AlexNet(nn.Module):
    """logits = head(stages(stem(x))): conv1 (+ pool + LRN) stem, four conv stages, FC head."""

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 1000,
        *,
        widths: Sequence[int] = (96, 256, 384, 384, 256),
        kernels: Sequence[int] = (11, 5, 3, 3, 3),
        strides: Sequence[int] = (4, 1, 1, 1, 1),
        paddings: Sequence[int] = (2, 2, 1, 1, 1),
        pool_after: Sequence[bool] = (True, True, False, False, True),
        split_groups: Sequence[bool] = (False, True, False, True, True),
        lrn: bool = True,
        norm: str = "none",
        act: str = "relu",
        pool_size: int = 3,
        head_pool: int = 6,
        spp_levels: Sequence[int] | None = None,
        head_widths: Sequence[int] = (4096, 4096),
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        widths, kernels, strides = tuple(widths), tuple(kernels), tuple(strides)
        paddings, pool_after, split_groups = tuple(paddings), tuple(pool_after), tuple(split_groups)
        units, c_in = [], in_channels
        for i, width in enumerate(widths):
            unit: list[nn.Module] = [
                ConvNormAct(
                    c_in, width, kernels[i], strides[i], paddings[i], norm=norm, act=act,
                    group_width=c_in // 2 if split_groups[i] else None,
                )
            ]  # fmt: skip
            if pool_after[i]:
                # Overlapping pooling (window 3 > stride 2): -0.4% top-1 error in the paper.
                unit.append(ClampedMaxPool2d(pool_size, 2, ceil_mode=True))
                if lrn and i < 2:  # LRN after the first two pools, as the notes lay it out
                    unit.append(make_norm("lrn", width))
            units.append(nn.Sequential(*unit))
            c_in = width
        self.stem = units[0]
        self.stages = nn.Sequential(*units[1:])
        pool: nn.Module
        if spp_levels:  # SPP-net: a fixed-length vector from any input size
            pool = SpatialPyramidPool(spp_levels)
            features = pool.output_features(c_in)
        else:
            pool = nn.Sequential(nn.AdaptiveAvgPool2d(head_pool), nn.Flatten())
            features = c_in * head_pool * head_pool
        head: list[nn.Module] = [pool]
        for width in head_widths:
            head += [nn.Dropout(dropout), nn.Linear(features, width), make_act(act, width)]
            features = width
        head.append(nn.Linear(features, num_classes))
        self.head = nn.Sequential(*head)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))
