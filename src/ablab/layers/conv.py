"""Convolution followed by optional normalisation and activation."""

from __future__ import annotations

from torch import nn

from ablab.errors import ConfigError
from ablab.layers.act import make_act
from ablab.layers.norm import make_norm, uses_norm


def num_groups(channels: int, group_width: int | None, c_out: int | None = None) -> int:
    """Groups of ``group_width`` input channels each (``None``: one group, a dense conv), checked
    to divide the ``c_out`` output channels too."""
    if group_width is None:
        return 1
    if group_width < 1 or channels % group_width:
        raise ConfigError(f"group_width={group_width} does not divide {channels} channels")
    groups = channels // group_width
    if c_out is not None and c_out % groups:
        raise ConfigError(f"{groups} groups do not divide {c_out} output channels")
    return groups


class ConvNormAct(nn.Sequential):
    """y = act(norm(conv(x))); the conv has a bias exactly when ``norm`` has no shift of its own.

    ``group_width`` sets channels per group: ``None`` dense, 1 depthwise, else grouped (ResNeXt).
    ``bias`` overrides the automatic choice (torchvision's VGG-BN keeps conv biases before BN).
    """

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
        group_width: int | None = None,
        bias: bool | None = None,
    ) -> None:
        if padding is None:
            padding = kernel_size // 2  # "same" size for odd kernels at stride 1
        groups = num_groups(c_in, group_width, c_out)
        super().__init__()
        self.conv = nn.Conv2d(
            c_in,
            c_out,
            kernel_size,
            stride,
            padding,
            groups=groups,
            bias=not uses_norm(norm) if bias is None else bias,
        )
        self.norm = make_norm(norm, c_out)
        self.act = make_act(act, c_out)
