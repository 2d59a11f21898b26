"""The Fire module of SqueezeNet (Iandola et al. 2016, "SqueezeNet: AlexNet-level accuracy with 50x
fewer parameters and <0.5MB model size", §3.1).

A 1x1 "squeeze" conv to few channels, then parallel 1x1 and 3x3 "expand" convs whose outputs are
concatenated. Its width is set by the paper's metaparameters (§5.1): the squeeze ratio
SR = s1x1 / (e1x1 + e3x3) and pct3x3 = e3x3 / (e1x1 + e3x3), here ``squeeze_ratio`` and
``expand_3x3_ratio``. ``shortcut`` adds the paper's bypass connections (§6): ``identity`` is its
simple bypass (only where widths match), ``projection`` its complex bypass (a 1x1 conv elsewhere).
SqueezeNet has no BN, hence ``norm="none"`` by default.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ablab.errors import ConfigError
from ablab.layers import ConvNormAct, make_shortcut
from ablab.registry import BLOCK


@BLOCK.register("fire")
class Fire(nn.Module):
    """y = concat(e1x1(s), e3x3(s)) [+ shortcut(x)], s = squeeze1x1(x); each conv with norm + act."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        stride: int = 1,
        *,
        norm: str = "none",
        act: str = "relu",
        shortcut: str = "none",
        squeeze_ratio: float = 0.125,
        expand_3x3_ratio: float = 0.5,
    ) -> None:
        super().__init__()
        if stride != 1:
            # Fire modules keep the grid size; SqueezeNet downsamples with max pools between them.
            raise ConfigError(f"the fire block has stride 1 only, got stride={stride}")
        squeeze = max(1, round(c_out * squeeze_ratio))
        e3 = round(c_out * expand_3x3_ratio)
        e1 = c_out - e3
        if min(e1, e3) < 1:
            raise ConfigError(
                f"expand_3x3_ratio={expand_3x3_ratio} leaves an expand branch of {c_out} channels empty"
            )
        self.squeeze = ConvNormAct(c_in, squeeze, 1, norm=norm, act=act)
        self.expand_1x1 = ConvNormAct(squeeze, e1, 1, norm=norm, act=act)
        self.expand_3x3 = ConvNormAct(squeeze, e3, 3, norm=norm, act=act)
        self.shortcut = make_shortcut(shortcut, c_in, c_out, stride, norm)

    def forward(self, x: Tensor) -> Tensor:
        s = self.squeeze(x)
        out = torch.cat([self.expand_1x1(s), self.expand_3x3(s)], dim=1)
        return out if self.shortcut is None else out + self.shortcut(x)
