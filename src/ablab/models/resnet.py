"""ResNet family: ImageNet ResNets, CIFAR ResNets and their plain twins, pre-activation, ResNeXt, SE.

He et al. 2016, "Deep Residual Learning for Image Recognition" (ImageNet layout §3.4, CIFAR layout
6n+2 with 16/32/64 channels §4.2); He et al. 2016b, "Identity Mappings in Deep Residual Networks"
(pre-activation); Xie et al. 2017 (ResNeXt); Hu et al. 2018 (SE).

One class: the stem, the block (by name), depths, widths and the three switches — ``norm``,
``act``, ``shortcut`` — are arguments, and every named variant is a YAML file in ``conf/model``.
Notes' slips recorded here: the first stage does not halve the size (the stem's max pool does);
there is one FC layer after global pooling; 64-128-256-512 are the widths of ResNet-18/34 only
(ResNet-50+ end their stages with 256-512-1024-2048 channels).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

import ablab.blocks  # noqa: F401  (registers the blocks in BLOCK and the stems in STEM)
from ablab.blocks.residual import inner_width
from ablab.errors import ConfigError
from ablab.layers import make_act, make_norm
from ablab.models.levels import FeatureLevels
from ablab.registry import BLOCK, STEM

#: The arguments every stackable block takes (``ablab.blocks``); the rest are its family's own.
_CORE = {"norm", "act", "shortcut", "se_ratio", "drop_path"}
_FIXED = {"c_in", "c_out", "stride", *_CORE}


class ResNet(FeatureLevels, nn.Module):
    """logits = head(stages(stem(x))); stage i has ``depths[i]`` blocks of ``widths[i]`` channels,
    the first of each stage after the first one strided by 2.

    Any block taking the core arguments (norm, act, shortcut, se_ratio, drop_path) stacks: the
    residual ones, ``conv`` (one k x k conv), ``depthwise_separable``, ``inverted_residual``...;
    ``block_args`` are passed to each block as they are (``{kernel_size: 5}``).
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 1000,
        *,
        block: str = "basic",
        depths: Sequence[int] = (2, 2, 2, 2),
        widths: Sequence[int] = (64, 128, 256, 512),
        stem: str = "imagenet",
        stem_width: int = 64,
        norm: str = "bn",
        act: str = "relu",
        shortcut: str = "projection",
        bottleneck_ratio: float | None = None,
        group_width: int | None = None,
        cardinality: int | None = None,
        se_ratio: float = 0.0,
        drop_path_rate: float = 0.0,
        zero_init_last: bool = False,
        final_norm: bool = False,
        dropout: float = 0.0,
        block_args: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        depths, widths = tuple(depths), tuple(widths)
        make_stem, make_block = STEM[stem], BLOCK[block]
        params = inspect.signature(make_block).parameters
        if not set(params) >= _CORE:
            valid = [n for n in BLOCK if set(inspect.signature(BLOCK[n]).parameters) >= _CORE]
            raise ConfigError(
                f"ResNet stacks blocks taking {sorted(_CORE)}, not '{block}'; "
                f"valid: {', '.join(valid)}"
            )
        # The residual family's shape arguments go only to blocks that take them.
        shape = {"bottleneck_ratio": bottleneck_ratio, "group_width": group_width or cardinality}
        for key, value in shape.items():
            if value and key not in params:
                raise ConfigError(f"model.block={block} takes no {key}; set it to null")
        if "bottleneck_ratio" in params and bottleneck_ratio is None:
            bottleneck_ratio = params["bottleneck_ratio"].default
        if cardinality and group_width:
            raise ConfigError("set either model.cardinality or model.group_width, not both")
        block_args = dict(block_args or {})
        if unknown := set(block_args) - set(params):
            raise ConfigError(
                f"model.block_args {sorted(unknown)} are not arguments of block '{block}'; "
                f"valid: {', '.join(p for p in params if p not in _FIXED)}"
            )
        self.stem = make_stem(in_channels, stem_width, norm, act)
        total, index = sum(depths), 0
        stages, c_in = [], stem_width
        for i, (depth, width) in enumerate(zip(depths, widths, strict=True)):
            blocks = []
            if cardinality:  # ResNeXt: a fixed number of groups, so group width grows per stage
                group_width = inner_width(width, bottleneck_ratio, None) // cardinality
            family = {"bottleneck_ratio": bottleneck_ratio, "group_width": group_width}
            family = {k: v for k, v in family.items() if k in params}
            for j in range(depth):
                blocks.append(
                    make_block(
                        c_in,
                        width,
                        2 if (j == 0 and i > 0) else 1,
                        norm=norm,
                        act=act,
                        shortcut=shortcut,
                        se_ratio=se_ratio,
                        # Stochastic depth: the drop rate grows linearly with block index.
                        drop_path=drop_path_rate * index / max(1, total - 1),
                        **family,
                        **block_args,
                    )
                )
                c_in, index = width, index + 1
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        final = [make_norm(norm, c_in), make_act(act, c_in)] if final_norm else []
        self.head = nn.Sequential(
            *final,
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(c_in, num_classes),
        )
        self._zero_init_last = zero_init_last
        self.special_init()

    def special_init(self) -> None:
        """The init this architecture owns, which ``ablab.init.initialize`` re-applies after any
        scheme: with ``zero_init_last``, every block that has a shortcut starts as it."""
        if self._zero_init_last:
            for module in self.stages.modules():
                if callable(getattr(module, "zero_init_last", None)):
                    module.zero_init_last()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))
