"""Normalisation layers by name (``bn``, ``gn``, ``ln``, ``none``) for (N, C, H, W) feature maps.

BatchNorm: Ioffe & Szegedy 2015; GroupNorm: Wu & He 2018; LayerNorm: Ba et al. 2016 (here over
(C, H, W) per sample, i.e. GroupNorm with one group, the form used for conv nets).
"""

from __future__ import annotations

from torch import nn

from ablab.registry import NORM


@NORM.register("bn")
def batch_norm(channels: int) -> nn.Module:
    """y = γ (x − E_batch[x]) / sqrt(Var_batch[x] + ε) + β, running stats at eval."""
    return nn.BatchNorm2d(channels)


@NORM.register("gn")
def group_norm(channels: int, group_size: int = 16) -> nn.Module:
    """GroupNorm with groups of ``group_size`` channels (one group when channels are fewer)."""
    return nn.GroupNorm(max(1, channels // group_size), channels)


@NORM.register("ln")
def layer_norm(channels: int) -> nn.Module:
    """LayerNorm over (C, H, W) of each sample: GroupNorm with a single group."""
    return nn.GroupNorm(1, channels)


@NORM.register("none")
def no_norm(channels: int) -> nn.Module:
    """No normalisation (the preceding conv then carries a bias)."""
    return nn.Identity()


def make_norm(norm: str, channels: int) -> nn.Module:
    """Build the normalisation layer named ``norm`` for ``channels`` feature maps."""
    return NORM[norm](channels)


def uses_norm(norm: str) -> bool:
    """Whether ``norm`` adds a learnable shift, which makes a conv bias redundant."""
    NORM[norm]  # validate the name
    return norm != "none"
