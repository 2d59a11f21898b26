"""Depthwise-separable and inverted-residual blocks (MobileNets).

MobileNetV1 (Howard et al. 2017): a 3x3 depthwise conv then a 1x1 pointwise conv, each with norm
and activation; it replaces a k x k conv at about 1/C_out + 1/k² of its parameters and MACs.
MobileNetV2 (Sandler et al. 2018): expand with a 1x1 conv by ``expansion``, depthwise k x k, then
project with a 1x1 conv that has **no activation** (the linear bottleneck), with an identity
shortcut where shapes allow; ``se_ratio`` adds squeeze-and-excitation on the expanded features
(MnasNet / EfficientNet's MBConv, Tan et al. 2019; MobileNetV3, Howard et al. 2019, with a
hard-sigmoid gate).
"""

from __future__ import annotations

from timm.layers import DropPath, SEModule, make_divisible
from torch import Tensor, nn

from ablab.blocks.residual import branch_extras
from ablab.layers import ConvNormAct, make_shortcut
from ablab.registry import BLOCK


@BLOCK.register("depthwise_separable")
class DepthwiseSeparable(nn.Module):
    """y = act(norm(pw1x1(act(norm(dw_kxk(x)))))), no shortcut (MobileNetV1)."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        stride: int = 1,
        *,
        norm: str = "bn",
        act: str = "relu",
        shortcut: str = "none",
        kernel_size: int = 3,
        se_ratio: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.residual = nn.Sequential(
            ConvNormAct(c_in, c_in, kernel_size, stride, norm=norm, act=act, group_width=1),
            ConvNormAct(c_in, c_out, 1, norm=norm, act=act),
        )
        self.se, self.drop_path = branch_extras(c_out, shortcut, se_ratio, drop_path)
        self.shortcut = make_shortcut(shortcut, c_in, c_out, stride, norm)

    def forward(self, x: Tensor) -> Tensor:
        out = self.drop_path(self.se(self.residual(x)))
        return out if self.shortcut is None else out + self.shortcut(x)


@BLOCK.register("inverted_residual")
class InvertedResidual(nn.Module):
    """y = project(se(dw(expand(x)))) + x where shapes match; project has no activation.

    ``se_ratio``: squeeze width as a fraction of ``c_in``; ``se_act`` / ``se_gate`` are timm
    activation names (``relu``, ``silu``; ``sigmoid``, ``hard_sigmoid``).
    """

    def __init__(
        self,
        c_in: int,
        c_out: int,
        stride: int = 1,
        *,
        norm: str = "bn",
        act: str = "relu6",
        shortcut: str = "identity",
        expansion: float = 6.0,
        kernel_size: int = 3,
        se_ratio: float = 0.0,
        se_divisor: int = 1,
        se_act: str = "relu",
        se_gate: str = "sigmoid",
        linear_bottleneck: bool = True,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        hidden = round(c_in * expansion)
        layers: list[nn.Module] = []
        if hidden != c_in:  # expansion 1 (the first V2 block) has no expand conv
            layers.append(ConvNormAct(c_in, hidden, 1, norm=norm, act=act))
        layers.append(
            ConvNormAct(hidden, hidden, kernel_size, stride, norm=norm, act=act, group_width=1)
        )
        if se_ratio > 0:
            # The squeeze width is a fraction of the block's *input* width (EfficientNet's
            # convention), rounded to a multiple of ``se_divisor`` (8 in MobileNetV3).
            squeeze = make_divisible(c_in * se_ratio, se_divisor)
            layers.append(
                SEModule(hidden, rd_channels=squeeze, act_layer=se_act, gate_layer=se_gate)
            )
        # The linear bottleneck: ReLU on a thin projection destroys information (Sandler et al.
        # §3.2); ``linear_bottleneck=false`` puts the activation back to test that claim.
        layers.append(
            ConvNormAct(hidden, c_out, 1, norm=norm, act="identity" if linear_bottleneck else act)
        )
        self.residual = nn.Sequential(*layers)
        self.shortcut = make_shortcut(shortcut, c_in, c_out, stride, norm)
        # Stochastic depth only where there is a shortcut to fall back on.
        keep = drop_path > 0 and self.shortcut is not None
        self.drop_path = DropPath(drop_path) if keep else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.drop_path(self.residual(x))
        return out if self.shortcut is None else out + self.shortcut(x)
