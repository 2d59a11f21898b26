"""GoogLeNet / Inception v1 (Szegedy et al. 2015, "Going Deeper with Convolutions", Table 1).

Stem (7x7/2 conv, 3x3/2 max pool, 1x1 conv, 3x3 conv, 3x3/2 max pool: 224 → 28), then three
stages of Inception blocks (3a-3b at 28, 4a-4e at 14, 5a-5b at 7) with a 3x3/2 max pool opening
the second and third, then global average pool → dropout → linear. ``branch_widths`` spells out
Table 1: per stage, per block (#1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj).

Auxiliary classifiers (§5: on top of 4a and 4d, their losses weighted by 0.3 during training,
discarded at inference) exist with ``aux_heads=true``. Design: ``forward`` always returns the main
logits only and never runs the auxiliary heads, so the classifier task, ``measure()`` and the fx
trace see one tensor whatever the mode; ``forward_with_aux`` returns ``(logits, [aux_4a, aux_4d])``
and ``aux_weight`` (0.3) records the paper's loss weight, for a training step that adds
``aux_weight * Σ loss(aux_i, y)``. A training step that calls only ``forward`` leaves the auxiliary
heads without gradients: they change the parameter count but not the trained net.

Where this differs from the paper (and from torchvision, whose parameter count ``googlenet.yaml``
matches: BN after every conv, 3x3 in the "5x5" branch, dropout 0.2):
- the paper's two LRN layers in the stem are left out (torchvision's BN replaces them);
- max pools are 3x3/2 with padding 1 (the paper's Table 1 size; torchvision pads 0 with
  ``ceil_mode`` and uses 2x2 before 5a, as the TensorFlow port it took its weights from): the
  same 112/56/28/14/7 sizes at 224 px, and any input of at least 1 px runs (28 px ends at 1x1);
- BN uses PyTorch's ε = 1e-5, not torchvision's 1e-3; init is ablab's ``init`` switch, not
  torchvision's truncated normal (σ 0.01).
The ``cifar`` stem (one 3x3/1 conv to 192 channels, no pools) is the common CIFAR GoogLeNet:
32 → 32 → 16 → 8.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

import ablab.blocks.stem  # noqa: F401  (registers the stems in STEM)
from ablab.blocks.inception import Inception, InceptionAux
from ablab.errors import ConfigError
from ablab.models.levels import FeatureLevels
from ablab.registry import STEM

#: Table 1 of the paper: per stage, per block (#1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj).
TABLE_1 = (
    ((64, 96, 128, 16, 32, 32), (128, 128, 192, 32, 96, 64)),
    (
        (192, 96, 208, 16, 48, 64),
        (160, 112, 224, 24, 64, 64),
        (128, 128, 256, 24, 64, 64),
        (112, 144, 288, 32, 64, 64),
        (256, 160, 320, 32, 128, 128),
    ),
    ((256, 160, 320, 32, 128, 128), (384, 192, 384, 48, 128, 128)),
)


def downsample() -> nn.MaxPool2d:
    """3x3/2 max pool, padded so that even a 1 px map survives: 112 → 56, 7 → 4, 1 → 1."""
    return nn.MaxPool2d(3, 2, 1)


class GoogLeNet(FeatureLevels, nn.Module):
    """logits = head(stages(stem(x))); stage i: a 3x3/2 max pool (for i > 0), then Inception blocks."""

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 1000,
        *,
        stem: str = "imagenet",
        stem_widths: Sequence[int] = (64, 64, 192),
        branch_widths: Sequence[Sequence[Sequence[int]]] = TABLE_1,
        kernel_5x5: int = 5,
        norm: str = "bn",
        act: str = "relu",
        shortcut: str = "none",
        aux_heads: bool = False,
        aux_taps: Sequence[Sequence[int]] = ((1, 0), (1, 3)),
        aux_dropout: float = 0.7,
        aux_weight: float = 0.3,
        dropout: float = 0.4,
    ) -> None:
        """``aux_taps``: (stage, block) pairs whose outputs feed an auxiliary head (4a and 4d)."""
        super().__init__()
        make_stem = STEM[stem]
        stem_widths = tuple(stem_widths)
        layout = tuple(tuple(tuple(block) for block in stage) for stage in branch_widths)
        taps = [tuple(tap) for tap in aux_taps] if aux_heads else []
        for stage, block in taps:
            if not (0 <= stage < len(layout) and 0 <= block < len(layout[stage])):
                raise ConfigError(f"aux_taps names block {block} of stage {stage}: no such block")
        self.stem = make_stem(in_channels, stem_widths, norm, act)
        self.aux_heads = nn.ModuleList()
        self.aux_weight = aux_weight
        # (stage, index inside the stage's Sequential) -> aux head; index 0 is the pool for i > 0.
        self._aux_at: dict[tuple[int, int], int] = {}
        stages, c_in = [], stem_widths[-1]
        for i, stage in enumerate(layout):
            layers: list[nn.Module] = [downsample()] if i > 0 else []
            for j, widths in enumerate(stage):
                c_out = widths[0] + widths[2] + widths[4] + widths[5]
                layers.append(
                    Inception(
                        c_in,
                        c_out,
                        norm=norm,
                        act=act,
                        shortcut=shortcut,
                        branch_widths=widths,
                        kernel_5x5=kernel_5x5,
                    )
                )
                c_in = c_out
                if (i, j) in taps:
                    self._aux_at[(i, len(layers) - 1)] = len(self.aux_heads)
                    self.aux_heads.append(
                        InceptionAux(c_out, num_classes, norm=norm, act=act, dropout=aux_dropout)
                    )
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(c_in, num_classes)
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))

    def forward_with_aux(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(main logits, auxiliary logits in tap order); the list is empty without aux heads.

        The paper's training loss is loss(logits, y) + aux_weight · Σ_i loss(aux_i, y).
        """
        x, aux = self.stem(x), []
        for i, stage in enumerate(self.stages):
            for j, layer in enumerate(stage):
                x = layer(x)
                if (i, j) in self._aux_at:
                    aux.append(self.aux_heads[self._aux_at[(i, j)]](x))
        return self.head(x), aux
