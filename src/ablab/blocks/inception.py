"""The Inception module and auxiliary classifier of GoogLeNet (Szegedy et al. 2015, "Going Deeper
with Convolutions", Fig. 2b and §5).

Four parallel branches over the same input, concatenated along channels: a 1x1 conv; a 1x1
reduction then a 3x3 conv; a 1x1 reduction then a 5x5 conv; a 3x3/1 max pool then a 1x1
projection. The 1x1 reductions are what keep the 3x3 and 5x5 convs affordable. Every conv is a
``ConvNormAct``, so ``norm`` and ``act`` are switches (the paper has no BN; torchvision adds BN).

torchvision's GoogLeNet uses a 3x3 conv in the "5x5" branch (a slip in the TensorFlow model its
weights were ported from, kept for those weights: pytorch/vision#906); ``kernel_5x5`` sets that
kernel, so both layouts exist (5 is the paper's).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ablab.errors import ConfigError
from ablab.layers import ConvNormAct, make_act, make_shortcut
from ablab.registry import BLOCK


def default_branch_widths(c_out: int) -> tuple[int, int, int, int, int, int]:
    """Inception 3a's proportions (1x1 : 3x3 : 5x5 : pool = 2 : 4 : 1 : 1 of the output, reductions
    3/4 and 1/2 of their conv) for a block given only ``c_out``."""
    c3, c5, pool = c_out // 2, max(1, c_out // 8), max(1, c_out // 8)
    return (c_out - c3 - c5 - pool, max(1, 3 * c3 // 4), c3, max(1, c5 // 2), c5, pool)


@BLOCK.register("inception")
class Inception(nn.Module):
    """y = concat(1x1(x), 3x3(1x1(x)), kxk(1x1(x)), 1x1(maxpool3x3(x))) [+ shortcut(x)]."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        stride: int = 1,
        *,
        norm: str = "bn",
        act: str = "relu",
        shortcut: str = "none",
        branch_widths: Sequence[int] | None = None,
        kernel_5x5: int = 5,
    ) -> None:
        """``branch_widths`` = (#1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj), the columns
        of the paper's Table 1; the output has #1x1 + #3x3 + #5x5 + pool proj channels."""
        super().__init__()
        if stride != 1:
            # Inception v1 keeps the grid size; GoogLeNet downsamples with max pools between blocks.
            raise ConfigError(f"the inception block has stride 1 only, got stride={stride}")
        if kernel_5x5 % 2 == 0:
            raise ConfigError(f"kernel_5x5 must be odd to keep the size, got {kernel_5x5}")
        widths = tuple(branch_widths) if branch_widths else default_branch_widths(c_out)
        if len(widths) != 6:
            raise ConfigError(f"branch_widths needs 6 numbers (Table 1's columns), got {widths}")
        c1, c3_reduce, c3, c5_reduce, c5, pool_proj = widths
        if c1 + c3 + c5 + pool_proj != c_out:
            raise ConfigError(
                f"branch widths {widths} concatenate to {c1 + c3 + c5 + pool_proj} channels, "
                f"not c_out={c_out}"
            )
        self.branch_1x1 = ConvNormAct(c_in, c1, 1, norm=norm, act=act)
        self.branch_3x3 = nn.Sequential(
            ConvNormAct(c_in, c3_reduce, 1, norm=norm, act=act),
            ConvNormAct(c3_reduce, c3, 3, norm=norm, act=act),
        )
        self.branch_5x5 = nn.Sequential(
            ConvNormAct(c_in, c5_reduce, 1, norm=norm, act=act),
            ConvNormAct(c5_reduce, c5, kernel_5x5, norm=norm, act=act),
        )
        self.branch_pool = nn.Sequential(
            nn.MaxPool2d(3, 1, 1), ConvNormAct(c_in, pool_proj, 1, norm=norm, act=act)
        )
        self.shortcut = make_shortcut(shortcut, c_in, c_out, stride, norm)

    def forward(self, x: Tensor) -> Tensor:
        branches = [self.branch_1x1, self.branch_3x3, self.branch_5x5, self.branch_pool]
        out = torch.cat([branch(x) for branch in branches], dim=1)
        return out if self.shortcut is None else out + self.shortcut(x)


class InceptionAux(nn.Sequential):
    """logits = fc(dropout(act(fc(flatten(1x1 conv(avgpool_4x4(x)))))))."""

    def __init__(
        self,
        c_in: int,
        num_classes: int,
        *,
        norm: str = "bn",
        act: str = "relu",
        width: int = 128,
        hidden: int = 1024,
        pool_size: int = 4,
        dropout: float = 0.7,
    ) -> None:
        """The paper's 5x5/3 average pool gives 4x4 on 4a's and 4d's 14x14 maps; an adaptive pool
        to ``pool_size`` gives the same 4x4 at any input size (as torchvision)."""
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(pool_size)
        self.conv = ConvNormAct(c_in, width, 1, norm=norm, act=act)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(width * pool_size * pool_size, hidden)
        self.act = make_act(act, hidden)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden, num_classes)
