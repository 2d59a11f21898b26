"""Feature pyramid: every level of a backbone given the semantics of the coarsest one.

Lin et al. 2017, "Feature Pyramid Networks for Object Detection" §3: a 1x1 lateral conv brings
each backbone level C_l to d channels; a top-down path upsamples the coarser merged map by
nearest neighbour and adds it, M_l = lateral_l(C_l) + up(M_{l+1}); a 3x3 conv on each merged map
"reduces the aliasing effect of upsampling", P_l = smooth_l(M_l). There are no non-linearities
(the paper found them to matter little), d = 256 in the paper.

Upsampling goes to the lateral's own size rather than by a fixed factor 2, so inputs whose sides
are not multiples of the deepest stride (a 5x5 level above a 9x9 one) still add up.

Extra levels (Lin et al. 2017b, "Focal Loss for Dense Object Detection" §4, RetinaNet's P6 and
P7): a 3x3/2 conv on the deepest backbone level gives the first, and each next one a ReLU and a
3x3/2 conv on the previous; ``extra_from="pyramid"`` starts from the deepest pyramid map P_L
instead (FCOS, Tian et al. 2019): 9·d² rather than 9·C_L·d multiply-adds per P6 pixel.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from ablab.errors import ConfigError, unknown_choice
from ablab.layers.conv import ConvNormAct

#: Where the first extra level is computed from: the deepest backbone level C_L or pyramid map P_L.
EXTRA_SOURCES = ("backbone", "pyramid")


class FeaturePyramid(nn.Module):
    """P_l = smooth_l(lateral_l(C_l) + up(M_{l+1})), then extra levels P_{L+k} by 3x3/2 convs.

    ``in_channels`` are the backbone levels' channels, finest first (``net.level_channels``);
    the output is one map of ``out_channels`` per input level, same sizes, then ``extra_levels``
    more, each half the size of the one before (rounded up). ``norm`` (a ``NORM`` name) follows
    every conv of the pyramid, whose bias goes exactly when the norm has a shift of its own.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        out_channels: int = 256,
        *,
        extra_levels: int = 0,
        extra_from: str = "backbone",
        norm: str = "none",
    ) -> None:
        super().__init__()
        in_channels = tuple(in_channels)
        if not in_channels:
            raise ConfigError("a feature pyramid needs at least one input level")
        if extra_levels < 0:
            raise ConfigError(f"extra_levels must be 0 or more, got {extra_levels}")
        if extra_from not in EXTRA_SOURCES:
            raise unknown_choice("extra_from", extra_from, EXTRA_SOURCES)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.extra_from = extra_from
        linear = {"norm": norm, "act": "identity"}
        self.laterals = nn.ModuleList(
            ConvNormAct(c, out_channels, 1, **linear) for c in in_channels
        )
        self.smoothing = nn.ModuleList(
            ConvNormAct(out_channels, out_channels, 3, **linear) for _ in in_channels
        )
        c_extra = in_channels[-1] if extra_from == "backbone" else out_channels
        extras = []
        for k in range(extra_levels):
            # P7 = conv(ReLU(P6)) (RetinaNet); the first extra conv reads C_L or P_L as they are.
            act_before = [nn.ReLU()] if k > 0 else []
            extras.append(
                nn.Sequential(*act_before, ConvNormAct(c_extra, out_channels, 3, 2, **linear))
            )
            c_extra = out_channels
        self.extras = nn.ModuleList(extras)

    def output_strides(self, level_strides: Sequence[int]) -> tuple[int, ...]:
        """Strides of the outputs for inputs at ``level_strides``: the same, then ×2 per extra."""
        strides = list(level_strides)
        for _ in self.extras:
            strides.append(2 * strides[-1])
        return tuple(strides)

    def forward(self, levels: Sequence[Tensor]) -> list[Tensor]:
        if len(levels) != len(self.laterals):
            raise ValueError(
                f"FeaturePyramid built for {len(self.laterals)} levels, given {len(levels)}"
            )
        laterals = [lateral(c) for lateral, c in zip(self.laterals, levels, strict=True)]
        # Top-down: M_L = lateral_L(C_L); M_l = lateral_l(C_l) + nearest-upsampled M_{l+1}.
        merged = [laterals[-1]]
        for lateral in reversed(laterals[:-1]):
            top_down = F.interpolate(merged[0], size=lateral.shape[-2:], mode="nearest")
            merged.insert(0, lateral + top_down)
        pyramid = [smooth(m) for smooth, m in zip(self.smoothing, merged, strict=True)]
        x = levels[-1] if self.extra_from == "backbone" else pyramid[-1]
        for extra in self.extras:
            x = extra(x)
            pyramid.append(x)
        return pyramid
