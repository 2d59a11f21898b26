"""LeNet-5 (LeCun et al., 1998, "Gradient-based learning applied to document recognition").

Layout as the notes give it, for a 28x28 input (``c1_padding=2`` keeps C1 at 28x28):

    C1 conv 5x5, 6   -> 28x28x6      S2 pool 2/2 -> 14x14x6
    C3 conv 5x5, 16  -> 10x10x16     S4 pool 2/2 -> 5x5x16
    C5 conv 5x5, 120 -> 1x1x120      F6 fc 84    -> output fc num_classes

61,706 parameters with one input channel and 10 classes. Slips in the notes, not copied here: S4
is 5x5x16 (the notes say 5x5x6), and C1 keeps 28x28 only with padding 2, which the notes leave
unstated. The original paper used 32x32 inputs with no padding (``c1_padding=0``). Sigmoid is the
default activation, as in the notes; pooling type is a switch (the notes say max pooling, the
paper used trainable average-like subsampling).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ablab.errors import unknown_choice
from ablab.layers import ConvNormAct, make_act


class LeNet5(nn.Module):
    """logits = head(stages(stem(x))): conv-pool, conv-pool, then C5 conv and two FC layers."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        *,
        widths: Sequence[int] = (6, 16, 120, 84),
        act: str = "sigmoid",
        norm: str = "none",
        pool: str = "max",
        c1_padding: int = 2,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        c1, c3, c5, f6 = tuple(widths)
        pools = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}
        if pool not in pools:
            raise unknown_choice("pool", pool, pools)
        make_pool = pools[pool]
        self.stem = nn.Sequential(
            ConvNormAct(in_channels, c1, 5, padding=c1_padding, norm=norm, act=act),
            make_pool(2, 2),
        )
        self.stages = nn.Sequential(
            ConvNormAct(c1, c3, 5, padding=0, norm=norm, act=act),
            make_pool(2, 2),
        )
        self.head = nn.Sequential(
            ConvNormAct(c3, c5, 5, padding=0, norm=norm, act=act),
            # At 28x28 C5 is already 1x1 and this is the identity; it lets larger inputs through.
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Dropout(dropout),  # not in LeNet-5; the switch for dropout ablations
            nn.Linear(c5, f6),
            make_act(act, f6),
            nn.Dropout(dropout),
            nn.Linear(f6, num_classes),
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))
