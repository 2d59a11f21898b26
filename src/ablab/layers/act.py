"""Activation functions by name; each entry builds a module for a given channel count.

ReLU: Nair & Hinton 2010; Leaky ReLU: Maas et al. 2013; PReLU: He et al. 2015; maxout:
Goodfellow et al. 2013; ReLU6 and h-swish: Howard et al. 2017/2019 (MobileNets); SiLU/swish:
Ramachandran et al. 2017; GELU: Hendrycks & Gimpel 2016.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from ablab.registry import ACT


def _fixed(make: Callable[[], nn.Module]) -> Callable[[int], nn.Module]:
    """An activation with no per-channel parameters: the channel count is not needed."""

    def build(channels: int) -> nn.Module:
        return make()

    build.__doc__ = f"{make!r} (channel-independent)"
    return build


ACT.register("sigmoid")(_fixed(nn.Sigmoid))
ACT.register("tanh")(_fixed(nn.Tanh))
ACT.register("relu")(_fixed(nn.ReLU))
ACT.register("leaky_relu")(_fixed(lambda: nn.LeakyReLU(0.01)))
ACT.register("relu6")(_fixed(nn.ReLU6))
ACT.register("silu", "swish")(_fixed(nn.SiLU))
ACT.register("hswish")(_fixed(nn.Hardswish))
ACT.register("gelu")(_fixed(nn.GELU))
ACT.register("identity")(_fixed(nn.Identity))


@ACT.register("prelu")
def prelu(channels: int) -> nn.Module:
    """max(0, x) + a_c min(0, x) with one learned slope a_c per channel (init 0.25)."""
    return nn.PReLU(channels)


class Maxout(nn.Module):
    """y_c = max_i (w_{c,i} x_c + b_{c,i}), i < k: the max of k learned affine pieces per channel.

    Goodfellow et al. 2013 apply the max over k linear feature maps; applied after a layer's own
    linear map this is the same family with the pieces' shared part folded into that layer, so it
    keeps the channel count and drops in wherever an activation goes. Pieces start as
    slopes 0, 1/(k−1), …, 1 with zero bias, i.e. exactly ReLU for k = 2.
    """

    def __init__(self, channels: int, pieces: int = 2) -> None:
        super().__init__()
        if pieces < 2:
            raise ValueError(f"maxout needs at least 2 pieces, got {pieces}")
        self.weight = nn.Parameter(torch.linspace(0.0, 1.0, pieces).repeat(channels, 1))
        self.bias = nn.Parameter(torch.zeros(channels, pieces))

    def forward(self, x: Tensor) -> Tensor:
        # Channels last so (C, k) parameters broadcast for any rank, with no shape arithmetic
        # that torch.fx could not trace: (N, C, *S) → (N, *S, C, 1) → (N, *S, C, k) → (N, C, *S).
        pieces = x.movedim(1, -1).unsqueeze(-1) * self.weight + self.bias
        return pieces.amax(dim=-1).movedim(-1, 1)


@ACT.register("maxout")
def maxout(channels: int, pieces: int = 2) -> nn.Module:
    """Maxout with ``pieces`` affine pieces per channel."""
    return Maxout(channels, pieces)


def make_act(act: str, channels: int) -> nn.Module:
    """Build the activation named ``act`` for ``channels`` features."""
    return ACT[act](channels)
