"""Stems: the first layers of an image classifier, picked by name from ``ablab.registry.STEM``.

Every family (ResNet, DenseNet, GoogLeNet) looks its ``stem`` up in the one table, through one
signature: ``stem(c_in, widths, norm, act, *, preact=False) -> nn.Sequential``. ``widths`` are the
output channels of the stem's convs, one number or one per conv; the last is what the first stage
gets.

- ``imagenet``: a 7x7/2 conv and a 3x3/2 max pool, 224 → 56 (He et al. 2016, Table 1; Huang et
  al. 2017, Table 1). Three widths add GoogLeNet's 1x1 and 3x3 convs and a second pool, → 28
  (Szegedy et al. 2015, Table 1, without its LRN layers).
- ``cifar``: 3x3/1 convs, one per width, no pooling: 32 → 32 (He et al. 2016 §4.2: one conv).

``preact`` is for families whose first block pre-activates its input (DenseNet): a stem ending on
a conv then leaves that conv's norm and act out (Huang et al. 2017 §3: "a convolution ... is
performed on the input images"); a stem ending on a max pool keeps them, since the pool follows
the activation.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from ablab.errors import ConfigError
from ablab.layers import ConvNormAct
from ablab.layers.norm import uses_norm
from ablab.registry import STEM


def _widths(widths: int | Sequence[int]) -> tuple[int, ...]:
    widths = (widths,) if isinstance(widths, int) else tuple(widths)
    if not widths:
        raise ConfigError("a stem needs at least one width")
    return widths


def _pool() -> nn.MaxPool2d:
    """3x3/2 max pool, padded so that even a 1 px map survives: 112 → 56, 7 → 4, 1 → 1."""
    return nn.MaxPool2d(3, 2, 1)


@STEM.register("imagenet")
def imagenet_stem(
    c_in: int, widths: int | Sequence[int], norm: str, act: str, *, preact: bool = False
) -> nn.Sequential:
    """7x7/2 conv + norm + act, max pool [, 1x1 conv, 3x3 conv, max pool]: 224 → 56 [→ 28]."""
    widths = _widths(widths)
    if len(widths) not in (1, 3):
        raise ConfigError(
            "the imagenet stem takes 1 width (a 7x7 conv: ResNet, DenseNet) or 3 "
            f"(7x7, 1x1 and 3x3 convs: GoogLeNet), not {list(widths)}"
        )
    layers = [ConvNormAct(c_in, widths[0], 7, 2, 3, norm=norm, act=act), _pool()]
    if len(widths) == 3:
        w1, w2, w3 = widths
        layers += [
            ConvNormAct(w1, w2, 1, norm=norm, act=act),
            ConvNormAct(w2, w3, 3, norm=norm, act=act),
            _pool(),
        ]
    return nn.Sequential(*layers)


@STEM.register("cifar")
def cifar_stem(
    c_in: int, widths: int | Sequence[int], norm: str, act: str, *, preact: bool = False
) -> nn.Sequential:
    """3x3/1 conv + norm + act per width (the last one a bare conv if ``preact``): 32 → 32."""
    layers, c = [], c_in
    for i, width in enumerate(widths := _widths(widths)):
        if preact and i == len(widths) - 1:
            # The first block's norm-act follows directly: no bias before its norm's shift.
            conv = ConvNormAct(c, width, 3, norm="none", act="identity", bias=not uses_norm(norm))
        else:
            conv = ConvNormAct(c, width, 3, norm=norm, act=act)
        layers.append(conv)
        c = width
    return nn.Sequential(*layers)
