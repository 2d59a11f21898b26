"""Normalisation layers by name (``bn``, ``bn_tf``, ``gn``, ``ln``, ``lrn``, ``none``) for
(N, C, H, W) maps.

BatchNorm: Ioffe & Szegedy 2015 (``bn_tf``: with TensorFlow's ε and moving-average decay, as
MobileNetV3 was trained); GroupNorm: Wu & He 2018; LayerNorm: Ba et al. 2016 (here over (C, H, W)
per sample, i.e. GroupNorm with one group, the form used for conv nets); local response
normalisation: Krizhevsky et al. 2012 (AlexNet).
"""

from __future__ import annotations

from torch import nn

from ablab.registry import NORM


@NORM.register("bn")
def batch_norm(channels: int) -> nn.Module:
    """y = γ (x − E_batch[x]) / sqrt(Var_batch[x] + ε) + β, running stats at eval."""
    return nn.BatchNorm2d(channels)


@NORM.register("bn_tf")
def batch_norm_tf(channels: int) -> nn.Module:
    """BatchNorm with running stats ← 0.99 · running + 0.01 · batch and ε = 1e-3: the moving-average
    decay 0.99 MobileNetV3 was trained with (Howard et al. 2019 §6.1; PyTorch's momentum is
    1 − decay) and TensorFlow's default ε, as torchvision's MobileNetV3 and its weights."""
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


@NORM.register("gn")
def group_norm(channels: int, group_size: int = 16) -> nn.Module:
    """GroupNorm with groups of about ``group_size`` channels: the most groups, at most
    channels // group_size, that divide the channels (DenseNet widths like 84 are not multiples
    of 16)."""
    groups = max(1, channels // group_size)
    while channels % groups:
        groups -= 1
    return nn.GroupNorm(groups, channels)


@NORM.register("ln")
def layer_norm(channels: int) -> nn.Module:
    """LayerNorm over (C, H, W) of each sample: GroupNorm with a single group."""
    return nn.GroupNorm(1, channels)


@NORM.register("lrn")
def local_response_norm(channels: int) -> nn.Module:
    """b = a / (k + α/n Σ_{n neighbouring channels} a²)^β with n=5, α=1e-4, β=0.75, k=2 (AlexNet)."""
    return nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)


@NORM.register("none")
def no_norm(channels: int) -> nn.Module:
    """No normalisation (the preceding conv then carries a bias)."""
    return nn.Identity()


#: Norms with a learnable shift β, which makes a preceding conv bias redundant.
SHIFTING_NORMS = frozenset({"bn", "bn_tf", "gn", "ln"})


def make_norm(norm: str, channels: int) -> nn.Module:
    """Build the normalisation layer named ``norm`` for ``channels`` feature maps."""
    return NORM[norm](channels)


def uses_norm(norm: str) -> bool:
    """Whether ``norm`` has a learnable shift, so the conv before it needs no bias."""
    NORM[norm]  # validate the name
    return norm in SHIFTING_NORMS
