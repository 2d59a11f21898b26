"""ShuffleNet v2 unit (Ma et al. 2018, "ShuffleNet V2: Practical Guidelines for Efficient CNN
Architecture Design", Fig. 3c/3d).

Stride 1: split the channels in two halves; one passes unchanged, the other goes through
1x1 conv-norm-act → 3x3 depthwise conv-norm (no act) → 1x1 conv-norm-act; concatenate and shuffle
the two halves into each other. Stride 2: no split; both branches see the whole input and
downsample (left: 3x3/2 depthwise conv-norm → 1x1 conv-norm-act), so the channels double. Equal
widths in and out, no grouped 1x1 convs and no element-wise add follow the paper's guidelines
G1–G4 on memory access cost.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ablab.errors import ConfigError
from ablab.layers import ConvNormAct
from ablab.layers.shuffle import ChannelShuffle
from ablab.registry import BLOCK


@BLOCK.register("shuffle_v2")
class ShuffleV2Unit(nn.Module):
    """shuffle([x₁, branch(x₂)]), (x₁, x₂) = split(x); at stride 2 shuffle([left(x), branch(x)])."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        stride: int = 1,
        *,
        norm: str = "bn",
        act: str = "relu",
        kernel_size: int = 3,
    ) -> None:
        super().__init__()
        if c_out % 2:
            raise ConfigError(f"a ShuffleNet v2 unit needs an even width, got {c_out}")
        half = c_out // 2
        if stride == 1 and c_in != c_out:
            raise ConfigError(
                f"a stride-1 ShuffleNet v2 unit keeps its width: got {c_in} → {c_out} channels"
            )
        self.left = None
        if stride > 1:
            self.left = nn.Sequential(
                ConvNormAct(c_in, c_in, kernel_size, stride, norm=norm, act="identity",
                            group_width=1),
                ConvNormAct(c_in, half, 1, norm=norm, act=act),
            )  # fmt: skip
        self.branch = nn.Sequential(
            ConvNormAct(c_in if stride > 1 else half, half, 1, norm=norm, act=act),
            # No act after the depthwise conv (as in MobileNet v2's and Xception's depthwise).
            ConvNormAct(half, half, kernel_size, stride, norm=norm, act="identity", group_width=1),
            ConvNormAct(half, half, 1, norm=norm, act=act),
        )
        self.shuffle = ChannelShuffle(2)

    def forward(self, x: Tensor) -> Tensor:
        if self.left is None:
            kept, x = x.chunk(2, dim=1)  # (N, C, H, W) → 2 × (N, C/2, H, W)
            out = torch.cat((kept, self.branch(x)), dim=1)
        else:
            out = torch.cat((self.left(x), self.branch(x)), dim=1)
        return self.shuffle(out)
