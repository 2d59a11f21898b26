"""SqueezeNet 1.0 (Iandola et al. 2016, "SqueezeNet: AlexNet-level accuracy with 50x fewer
parameters and <0.5MB model size", Table 1) and 1.1 (the authors' release notes: 2.4x less
computation at the same accuracy) as one class.

Stem conv (+ 3x3/2 max pool), eight Fire modules in stages with a 3x3/2 max pool opening every
stage after the first, then the paper's head: dropout 0.5 → 1x1 conv to the classes → ReLU →
global average pool, with no fully connected layer. The versions differ only in the stem (1.0:
96 7x7/2 filters; 1.1: 64 3x3/2) and where the pools sit (1.0: after fire4 and fire8, ``depths``
3-4-1; 1.1: after fire3 and fire5, ``depths`` 2-2-4). Fire widths follow the paper's
metaparameters: output widths 128-128-256-256-384-384-512-512, squeeze ratio 1/8, half the
expand filters 3x3.

Pools and the stem conv are unpadded with ``ceil_mode`` pools, as torchvision: 224 → 109 → 54 →
27 → 13 for 1.0 (Table 1's 111/55 assume a 227 px input) and 224 → 111 → 55 → 27 → 13 for 1.1.
28 px inputs end at 1x1 in both; the minimum input sizes are 21 px (1.0) and 17 px (1.1).
Not copied from torchvision: its init (Kaiming-uniform, final conv N(0, 0.01)); ablab's ``init``
switch covers that. ``head_act`` names the ReLU before the pool (``identity`` removes it).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ablab.blocks.fire import Fire
from ablab.errors import ConfigError
from ablab.layers import ConvNormAct, make_act


def downsample() -> nn.MaxPool2d:
    """3x3/2 max pool, unpadded, rounding up: 109 → 54, 2 → 1."""
    return nn.MaxPool2d(3, 2, ceil_mode=True)


class SqueezeNet(nn.Module):
    """logits = head(stages(stem(x))); head = dropout → 1x1 conv to classes → act → global pool."""

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 1000,
        *,
        stem_width: int = 96,
        stem_kernel_size: int = 7,
        stem_stride: int = 2,
        stem_padding: int = 0,
        stem_pool: bool = True,
        depths: Sequence[int] = (3, 4, 1),
        fire_widths: Sequence[int] = (128, 128, 256, 256, 384, 384, 512, 512),
        squeeze_ratio: float = 0.125,
        expand_3x3_ratio: float = 0.5,
        norm: str = "none",
        act: str = "relu",
        shortcut: str = "none",
        head_act: str = "relu",
        dropout: float = 0.5,
    ) -> None:
        """``fire_widths``: the output width of each Fire module in order (``sum(depths)`` of them)."""
        super().__init__()
        depths, fire_widths = tuple(depths), tuple(fire_widths)
        if sum(depths) != len(fire_widths):
            raise ConfigError(
                f"depths {depths} place {sum(depths)} fire modules but fire_widths lists "
                f"{len(fire_widths)}"
            )
        conv1 = ConvNormAct(
            in_channels, stem_width, stem_kernel_size, stem_stride, stem_padding, norm=norm, act=act
        )
        stem: list[nn.Module] = [conv1]
        if stem_pool:
            stem.append(downsample())
        self.stem = nn.Sequential(*stem)
        widths, stages, c_in = iter(fire_widths), [], stem_width
        for i, depth in enumerate(depths):
            layers: list[nn.Module] = [downsample()] if i > 0 else []
            for _ in range(depth):
                c_out = next(widths)
                layers.append(
                    Fire(
                        c_in,
                        c_out,
                        norm=norm,
                        act=act,
                        shortcut=shortcut,
                        squeeze_ratio=squeeze_ratio,
                        expand_3x3_ratio=expand_3x3_ratio,
                    )
                )
                c_in = c_out
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(
            nn.Dropout(dropout),
            nn.Conv2d(c_in, num_classes, 1),  # conv10: the classifier, so it keeps its bias
            make_act(head_act, num_classes),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))
