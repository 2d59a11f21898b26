"""Residual shortcuts by name (He et al. 2016, "Deep Residual Learning", §3.3 options A and B).

- ``projection``: identity when shapes match, else a strided 1x1 conv + norm (option B).
- ``identity_pad``: parameter-free; subsample by the stride and zero-pad new channels (option A).
- ``identity``: identity when shapes match, and no shortcut where they change (MobileNetV2).
- ``none``: no shortcut at all: the block is plain (the same layers minus the add).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ablab.layers.norm import make_norm, uses_norm
from ablab.registry import SHORTCUT


class IdentityPad(nn.Module):
    """x[:, :, ::s, ::s] with (c_out − c_in) zero channels appended."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.extra, self.stride = c_out - c_in, stride

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra)) if self.extra else x


@SHORTCUT.register("projection")
def projection(c_in: int, c_out: int, stride: int, norm: str) -> nn.Module:
    if c_in == c_out and stride == 1:
        return nn.Identity()
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 1, stride, bias=not uses_norm(norm)), make_norm(norm, c_out)
    )


@SHORTCUT.register("identity_pad")
def identity_pad(c_in: int, c_out: int, stride: int, norm: str) -> nn.Module:
    if c_out < c_in:
        raise ValueError(f"identity_pad cannot shrink channels ({c_in} -> {c_out})")
    return nn.Identity() if (c_in == c_out and stride == 1) else IdentityPad(c_in, c_out, stride)


@SHORTCUT.register("identity")
def identity_only(c_in: int, c_out: int, stride: int, norm: str) -> nn.Module | None:
    return nn.Identity() if (c_in == c_out and stride == 1) else None


@SHORTCUT.register("none")
def no_shortcut(c_in: int, c_out: int, stride: int, norm: str) -> None:
    return None


def make_shortcut(shortcut: str, c_in: int, c_out: int, stride: int, norm: str) -> nn.Module | None:
    """The shortcut module for a block, or ``None`` for a plain block."""
    return SHORTCUT[shortcut](c_in, c_out, stride, norm)
