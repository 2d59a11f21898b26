"""Convolution followed by optional normalisation and activation."""

from __future__ import annotations

from torch import nn

from ablab.layers.act import make_act
from ablab.layers.norm import make_norm, uses_norm


class ConvNormAct(nn.Sequential):
    """y = act(norm(conv(x))); the conv has a bias exactly when ``norm`` is ``none``."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int | None = None,
        *,
        norm: str = "bn",
        act: str = "relu",
    ) -> None:
        if padding is None:
            padding = kernel_size // 2  # "same" size for odd kernels at stride 1
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel_size, stride, padding, bias=not uses_norm(norm))
        self.norm = make_norm(norm, c_out)
        self.act = make_act(act)
