"""MobileNetV1 (Howard et al. 2017) and MobileNetV2 (Sandler et al. 2018) as one class.

V1: a 3x3/2 conv stem, then depthwise-separable blocks, downsampling by strided convs instead of
pooling. V2: inverted residual blocks with linear bottlenecks, then a 1x1 conv to 1280 channels.
Per-stage lists (``depths``, ``widths``, ``strides``, ``expansions``, ``kernel_sizes``) spell out the
paper's layout table; the first block of a stage carries its stride.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

import ablab.blocks  # noqa: F401  (registers the blocks in BLOCK)
from ablab.layers import ConvNormAct
from ablab.registry import BLOCK


class MobileNet(nn.Module):
    """logits = head(stages(stem(x))); head = [1x1 conv] → global pool → dropout → linear."""

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 1000,
        *,
        block: str = "inverted_residual",
        stem_width: int = 32,
        stem_stride: int = 2,
        depths: Sequence[int] = (1, 2, 3, 4, 3, 3, 1),
        widths: Sequence[int] = (16, 24, 32, 64, 96, 160, 320),
        strides: Sequence[int] = (1, 2, 2, 2, 1, 2, 1),
        expansions: Sequence[float] | None = (1, 6, 6, 6, 6, 6, 6),
        kernel_sizes: Sequence[int] | None = None,
        norm: str = "bn",
        act: str = "relu6",
        shortcut: str = "identity",
        se_ratio: float = 0.0,
        linear_bottleneck: bool = True,
        drop_path_rate: float = 0.0,
        head_width: int = 1280,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        depths, widths, strides = tuple(depths), tuple(widths), tuple(strides)
        kernel_sizes = tuple(kernel_sizes) if kernel_sizes else (3,) * len(depths)
        make_block = BLOCK[block]
        self.stem = ConvNormAct(in_channels, stem_width, 3, stem_stride, norm=norm, act=act)
        total, index, c_in, stages = sum(depths), 0, stem_width, []
        for i, (depth, width) in enumerate(zip(depths, widths, strict=True)):
            extra = {"kernel_size": kernel_sizes[i], "se_ratio": se_ratio}
            if expansions is not None:
                extra |= {"expansion": tuple(expansions)[i], "linear_bottleneck": linear_bottleneck}
            blocks = []
            for j in range(depth):
                drop = drop_path_rate * index / max(1, total - 1)
                blocks.append(
                    make_block(
                        c_in,
                        width,
                        strides[i] if j == 0 else 1,
                        norm=norm,
                        act=act,
                        shortcut=shortcut,
                        drop_path=drop,
                        **extra,
                    )
                )
                c_in, index = width, index + 1
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        head: list[nn.Module] = []
        if head_width:
            head.append(ConvNormAct(c_in, head_width, 1, norm=norm, act=act))
            c_in = head_width
        head += [
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(c_in, num_classes),
        ]
        self.head = nn.Sequential(*head)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))
