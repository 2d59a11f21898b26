"""Multi-level features of a stem → stages → head classifier, the input of a feature pyramid.

Lin et al. 2017, "Feature Pyramid Networks for Object Detection" §3: a backbone "stage" is the
run of layers whose outputs have one size, and the pyramid reads the last map of each stage
(C2…C5 of a ResNet, strides 4, 8, 16, 32). In the zoo a new size starts at a stage of
``self.stages``, but not every stage changes the size (MobileNetV2's stride-1 stages, AlexNet's
conv3-4), so a level is the output of the last stage at each stride. The stem is never a level
(FPN leaves conv1 out for its memory footprint). The deepest level is ``forward_features(x)``.

Which stages are levels, their channels and strides are found once by running the stem and stages
on a 1024 px meta tensor (shapes only: no memory, no arithmetic, parameters and running
statistics untouched), and checked to be exact: a level of stride s has 1024 / s pixels. Nets
whose unpadded convs and pools give no exact stride (AlexNet, SqueezeNet, LeNet) are not
covered.
"""

from __future__ import annotations

from itertools import chain, pairwise
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.func import functional_call

#: The side of the shape probe: a power of two above any stride in the zoo, so every stride divides it.
PROBE_SIZE = 1024


class LevelLayout(NamedTuple):
    """Which entries of ``stages`` end a level, and each level's channels and stride."""

    stages: tuple[int, ...]
    channels: tuple[int, ...]
    strides: tuple[int, ...]


def _on_meta(module: nn.Module) -> dict[str, Tensor]:
    """The module's parameters and buffers as meta tensors: same shapes, no data."""
    named = chain(module.named_parameters(), module.named_buffers())
    return {name: torch.empty_like(tensor, device="meta") for name, tensor in named}


def probe_levels(stem: nn.Module, stages: nn.Sequential) -> LevelLayout:
    """The levels of ``stages(stem(x))``: the last stage at each stride, from a meta-tensor probe."""
    first = next(m for m in chain(stem.modules(), stages.modules()) if isinstance(m, nn.Conv2d))
    x = torch.empty(1, first.in_channels, PROBE_SIZE, PROBE_SIZE, device="meta")
    x = functional_call(stem, _on_meta(stem), (x,))
    shapes = []
    for stage in stages:
        x = functional_call(stage, _on_meta(stage), (x,))
        shapes.append(tuple(x.shape[1:]))  # (C, H, W)
    # A stage is a level when the next one changes the size (the last stage always is).
    sizes = [shape[1:] for shape in shapes]
    ends = [i for i, (size, after) in enumerate(pairwise([*sizes, None])) if size != after]
    strides = []
    for i in ends:
        _, height, width = shapes[i]
        stride = PROBE_SIZE // height
        if height * stride != PROBE_SIZE or width * stride != PROBE_SIZE:
            raise ValueError(
                f"stage {i} maps {PROBE_SIZE} px to {height}x{width}: no exact stride, so no "
                "feature levels (unpadded convs or pools)"
            )
        strides.append(stride)
    return LevelLayout(tuple(ends), tuple(shapes[i][0] for i in ends), tuple(strides))


class FeatureLevels:
    """levels = [C_l]: the output of the last stage at each stride, C_l at stride ``level_strides[l]``.

    A mixin for ``nn.Module`` classifiers with ``stem`` and ``stages`` attributes; it adds
    ``forward_levels`` and leaves ``forward`` and ``forward_features`` as they are.
    """

    stem: nn.Module
    stages: nn.Sequential

    @property
    def level_layout(self) -> LevelLayout:
        """Which stages are levels, with their channels and strides (probed once, then kept)."""
        layout = self.__dict__.get("_level_layout")
        if layout is None:
            layout = self.__dict__["_level_layout"] = probe_levels(self.stem, self.stages)
        return layout

    @property
    def level_channels(self) -> tuple[int, ...]:
        """Channels of each level, finest first: an FPN's ``in_channels``."""
        return self.level_layout.channels

    @property
    def level_strides(self) -> tuple[int, ...]:
        """Input pixels per level pixel, strictly increasing (4, 8, 16, 32 for an ImageNet ResNet)."""
        return self.level_layout.strides

    def forward_levels(self, x: Tensor) -> list[Tensor]:
        """[C_l for each level], finest first; the last one is ``forward_features(x)``."""
        ends = self.level_layout.stages
        x, levels = self.stem(x), []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in ends:
                levels.append(x)
        return levels


class Backbone(FeatureLevels, nn.Module):
    """forward(x) = net.forward_levels(x): a classifier's stem and stages, without its head.

    It shares the net's modules (no copy): parameters and MACs are the backbone's alone, so
    ``complexity.measure(nn.Sequential(Backbone(net), FeaturePyramid(...)), shape)`` measures a
    backbone plus pyramid, and a detector built on it holds no unused classifier head.
    """

    def __init__(self, net: FeatureLevels) -> None:
        super().__init__()
        self.stem, self.stages = net.stem, net.stages
        self.__dict__["_level_layout"] = net.level_layout

    def forward(self, x: Tensor) -> list[Tensor]:
        return self.forward_levels(x)
