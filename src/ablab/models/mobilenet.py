"""MobileNetV1 (Howard et al. 2017), MobileNetV2 (Sandler et al. 2018), EfficientNet (Tan & Le
2019) and MobileNetV3 (Howard et al. 2019).

V1: a 3x3/2 conv stem, then depthwise-separable blocks, downsampling by strided convs instead of
pooling. V2: inverted residual blocks with linear bottlenecks, then a 1x1 conv to 1280 channels.
EfficientNet-B0 is the same anatomy found by architecture search — MBConv blocks (inverted
residuals with squeeze-and-excitation and SiLU), drop-connect — and B1-B7 scale it by the
compound rule: depth × α^φ, width × β^φ, resolution × γ^φ with α = 1.2, β = 1.1, γ = 1.15
(α·β²·γ² ≈ 2, so each step of φ doubles the FLOPs). The released B1-B3 use rounded coefficients
(width, depth, resolution) = (1.0, 1.1, 240), (1.1, 1.2, 260), (1.2, 1.4, 300), which the configs
use so parameter counts equal torchvision's; ``compound_scaling`` gives the exact rule.
Per-stage lists (``depths``, ``widths``, ``strides``, ``expansions``, ``kernel_sizes``) spell out
the papers' layout tables; the first block of a stage carries its stride.

V3's searched layout varies kernel, expansion, SE and activation from block to block, so
``MobileNetV3`` takes the paper's table row by row (Howard et al. 2019, Tables 1 and 2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from timm.layers import make_divisible
from torch import nn

import ablab.blocks  # noqa: F401  (registers the blocks in BLOCK)
from ablab.errors import ConfigError
from ablab.layers import ConvNormAct, make_act
from ablab.models.levels import FeatureLevels
from ablab.registry import BLOCK


def compound_scaling(
    phi: float, alpha: float = 1.2, beta: float = 1.1, gamma: float = 1.15
) -> tuple[float, float, float]:
    """(depth, width, resolution) multipliers α^φ, β^φ, γ^φ of EfficientNet's compound rule."""
    return alpha**phi, beta**phi, gamma**phi


def scaled_width(width: int, width_mult: float) -> int:
    """width · multiplier rounded to a multiple of 8, never more than 10% below (as in the papers)."""
    return make_divisible(width * width_mult, 8)


class MobileNet(FeatureLevels, nn.Module):
    """logits = head(stages(stem(x))); head = [1x1 conv] → global pool → dropout → linear."""

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 1000,
        *,
        block: str = "inverted_residual",
        stem_width: int = 32,
        stem_stride: int = 2,
        depths: Sequence[int] = (1, 2, 3, 4, 3, 3, 1),
        widths: Sequence[int] = (16, 24, 32, 64, 96, 160, 320),
        strides: Sequence[int] = (1, 2, 2, 2, 1, 2, 1),
        expansions: Sequence[float] | None = (1, 6, 6, 6, 6, 6, 6),
        kernel_sizes: Sequence[int] | None = None,
        width_mult: float = 1.0,
        depth_mult: float = 1.0,
        norm: str = "bn",
        act: str = "relu6",
        shortcut: str = "identity",
        se_ratio: float = 0.0,
        se_act: str = "relu",
        linear_bottleneck: bool = True,
        drop_path_rate: float = 0.0,
        head_width: int = 1280,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        depths = tuple(math.ceil(d * depth_mult) for d in depths)
        widths = tuple(scaled_width(w, width_mult) for w in widths)
        strides = tuple(strides)
        kernel_sizes = tuple(kernel_sizes) if kernel_sizes else (3,) * len(depths)
        make_block = BLOCK[block]
        stem_width = scaled_width(stem_width, width_mult)
        self.stem = ConvNormAct(in_channels, stem_width, 3, stem_stride, norm=norm, act=act)
        total, index, c_in, stages = sum(depths), 0, stem_width, []
        for i, (depth, width) in enumerate(zip(depths, widths, strict=True)):
            extra = {"kernel_size": kernel_sizes[i], "se_ratio": se_ratio}
            if expansions is not None:
                extra |= {
                    "expansion": tuple(expansions)[i],
                    "linear_bottleneck": linear_bottleneck,
                    "se_act": se_act,
                }
            blocks = []
            for j in range(depth):
                drop = drop_path_rate * index / max(1, total - 1)
                blocks.append(
                    make_block(
                        c_in,
                        width,
                        strides[i] if j == 0 else 1,
                        norm=norm,
                        act=act,
                        shortcut=shortcut,
                        drop_path=drop,
                        **extra,
                    )
                )
                c_in, index = width, index + 1
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        head: list[nn.Module] = []
        if head_width:  # widened with the network, never narrowed (Sandler et al. §5.1)
            head_width = scaled_width(head_width, max(1.0, width_mult))
            head.append(ConvNormAct(c_in, head_width, 1, norm=norm, act=act))
            c_in = head_width
        head += [
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(c_in, num_classes),
        ]
        self.head = nn.Sequential(*head)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


class MobileNetV3(FeatureLevels, nn.Module):
    """logits = head(stages(stem(x))); head = 1x1 conv → pool → linear → act → dropout → linear.

    ``blocks`` rows are the paper's table: [kernel, expanded width, output width, SE, NL, stride],
    NL ``RE`` or ``HS``. ``act`` is what HS layers, the stem and the head use (h-swish; set
    ``silu`` to compare with swish, SEEDS claim 32), ``act_early`` what RE layers use. SE squeezes
    to a quarter of the expanded width, rounded to a multiple of 8, with a hard-sigmoid gate.
    A new stage starts at every strided row. ``norm`` defaults to ``bn_tf``: BatchNorm with the
    decay 0.99 and ε 1e-3 it was trained with (torchvision's MobileNetV3 too).
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 1000,
        *,
        blocks: Sequence[Sequence] = (),
        stem_width: int = 16,
        stem_stride: int = 2,
        norm: str = "bn_tf",
        act: str = "hswish",
        act_early: str = "relu",
        se_gate: str = "hard_sigmoid",
        linear_bottleneck: bool = True,
        drop_path_rate: float = 0.0,
        head_conv_width: int = 960,
        head_width: int = 1280,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        rows = [tuple(row) for row in blocks]
        nonlinearity = {"RE": act_early, "HS": act}
        for row in rows:
            if len(row) != 6 or row[4] not in nonlinearity:
                raise ConfigError(
                    f"MobileNetV3 block row {list(row)} is not "
                    "[kernel, expanded, out, se, RE|HS, stride]"
                )
        self.stem = ConvNormAct(in_channels, stem_width, 3, stem_stride, norm=norm, act=act)
        stages: list[list[nn.Module]] = []
        c_in = stem_width
        for index, (kernel, expanded, width, se, nl, stride) in enumerate(rows):
            if stride > 1 or not stages:
                stages.append([])
            stages[-1].append(
                BLOCK["inverted_residual"](
                    c_in,
                    width,
                    stride,
                    norm=norm,
                    act=nonlinearity[nl],
                    expansion=expanded / c_in,
                    kernel_size=kernel,
                    se_ratio=expanded / c_in / 4 if se else 0.0,
                    se_divisor=8,
                    se_gate=se_gate,
                    linear_bottleneck=linear_bottleneck,
                    drop_path=drop_path_rate * index / max(1, len(rows) - 1),
                )
            )
            c_in = width
        self.stages = nn.Sequential(*(nn.Sequential(*stage) for stage in stages))
        self.head = nn.Sequential(
            ConvNormAct(c_in, head_conv_width, 1, norm=norm, act=act),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(head_conv_width, head_width),
            make_act(act, head_width),
            nn.Dropout(dropout),
            nn.Linear(head_width, num_classes),
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))
