"""Dense blocks and transitions (Huang et al. 2017, "Densely Connected Convolutional Networks").

Layer ℓ of a dense block sees the concatenation of the block input and of every earlier layer's
output, x_ℓ = H_ℓ([x_0, x_1, …, x_{ℓ−1}]), and contributes k new maps (the growth rate), so a block
of L layers turns c_in channels into c_in + L·k. H_ℓ is pre-activation: norm-act-1x1 conv to
``bn_size``·k channels (the "-B" bottleneck, 4k in the paper) → norm-act-3x3 conv to k. Between
blocks a transition (norm-act-1x1 conv to ⌊θ·c⌋ channels, 2x2 average pool) compresses by θ (the
"-C", θ = 0.5 in DenseNet-BC) and halves the size. Dropout, when on, follows every conv except the
stem (the paper's §4.2 and its Lua code; torchvision drops only the 3x3 conv's output).

The notes say earlier layers are concatenated rather than summed; only within a block: the
transitions between blocks are where the size changes, and there nothing is concatenated.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ablab.blocks.preact import norm_act_conv
from ablab.errors import ConfigError
from ablab.layers import make_act, make_norm
from ablab.layers.norm import uses_norm
from ablab.registry import BLOCK


def _unit(
    c_in: int, c_out: int, kernel_size: int, norm: str, act: str, drop_rate: float
) -> nn.Sequential:
    """norm → act → conv, then dropout when ``drop_rate`` > 0."""
    unit = norm_act_conv(c_in, c_out, kernel_size, 1, norm, act)
    if drop_rate > 0:
        unit.append(nn.Dropout(drop_rate))
    return unit


@BLOCK.register("dense_layer")
class DenseLayer(nn.Sequential):
    """H(x) = conv3x3(act(norm(conv1x1(act(norm(x)))))): k = ``c_out`` maps from all before."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        stride: int = 1,
        *,
        norm: str = "bn",
        act: str = "relu",
        bn_size: int | None = 4,
        drop_rate: float = 0.0,
    ) -> None:
        if stride != 1:
            raise ConfigError("a dense layer keeps the spatial size: transitions downsample")
        super().__init__()
        if bn_size:  # DenseNet-B; bn_size null/0 gives the original layer, norm-act-3x3 only
            self.bottleneck = _unit(c_in, bn_size * c_out, 1, norm, act, drop_rate)
            c_in = bn_size * c_out
        self.conv = _unit(c_in, c_out, 3, norm, act, drop_rate)


class DenseBlock(nn.Module):
    """y = [x_0, x_1, …, x_L], x_ℓ = H_ℓ([x_0, …, x_{ℓ−1}]): c_in + depth·growth_rate channels."""

    def __init__(
        self,
        c_in: int,
        depth: int,
        growth_rate: int,
        *,
        norm: str = "bn",
        act: str = "relu",
        bn_size: int | None = 4,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        kw = {"norm": norm, "act": act, "bn_size": bn_size, "drop_rate": drop_rate}
        self.layers = nn.ModuleList(
            DenseLayer(c_in + i * growth_rate, growth_rate, **kw) for i in range(depth)
        )
        self.out_channels = c_in + depth * growth_rate

    def forward(self, x: Tensor) -> Tensor:
        features = [x]
        for layer in self.layers:
            features.append(layer(torch.cat(features, dim=1)))
        return torch.cat(features, dim=1)


class Transition(nn.Sequential):
    """y = avgpool2x2(conv1x1(act(norm(x)))): compress to ``c_out`` channels at half the size."""

    def __init__(
        self, c_in: int, c_out: int, *, norm: str = "bn", act: str = "relu", drop_rate: float = 0.0
    ) -> None:
        super().__init__()
        self.norm = make_norm(norm, c_in)
        self.act = make_act(act, c_in)
        self.conv = nn.Conv2d(c_in, c_out, 1, bias=not uses_norm(norm))
        if drop_rate > 0:
            self.drop = nn.Dropout(drop_rate)
        # ceil_mode: odd sizes keep their last row and column, and a 1x1 map stays 1x1, so the
        # ImageNet layout still runs on 28 px inputs (224 px sizes are even: same result).
        self.pool = nn.AvgPool2d(2, 2, ceil_mode=True)
