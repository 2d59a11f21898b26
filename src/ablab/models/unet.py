"""U-Net (Ronneberger et al. 2015, "U-Net: Convolutional Networks for Biomedical Image
Segmentation"): a contracting path of conv-conv-pool levels, a bottleneck, and an expanding path
that up-samples and merges the contracting path's map of the same size at every level, ending in
a 1x1 conv to one logit per class and pixel.

The paper's net has depth 4 (four poolings, 64 → 1024 channels) and unpadded convs; here the
depth and the first level's width are arguments (``depth`` 3, ``base_width`` 16 by default:
small images on a CPU) and the convs are padded, so the output has the input's height and width
(:mod:`ablab.blocks.unet`). With ``depth`` d, level i (0-based) has ``base_width`` · 2^i channels
and the bottleneck ``base_width`` · 2^d; every pooling halves the size, so the input's height and
width must be divisible by 2^d.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ablab.blocks.unet import DoubleConv, UpLevel
from ablab.errors import ConfigError


def check_input_size(x: Tensor, depth: int) -> None:
    """Raise a one-line :class:`ConfigError` unless x's height and width divide by 2^depth.

    Wrapped for ``torch.fx``: a traced graph keeps the call, not the Python branch on sizes.
    """
    step = 2**depth
    height, width = x.shape[-2], x.shape[-1]
    if height % step == 0 and width % step == 0:
        return
    nearest = sorted({n for s in (height, width) for n in (s // step * step, -(-s // step) * step)})
    fits = " or ".join(str(n) for n in nearest if n > 0)
    raise ConfigError(
        f"model=unet with depth {depth} needs input height and width divisible by {step}; "
        f"got {height}x{width}: use data.image_size={fits} (or a smaller model.depth)"
    )


torch.fx.wrap("check_input_size")


class UNet(nn.Module):
    """logits = head(decoder(bottleneck(encoder(x)), skips)): (N, C_in, H, W) → (N, classes, H, W).

    ``encoder[i]`` is two 3x3 convs to ``base_width`` · 2^i channels, its output kept as skip i,
    then a 2x2 max pool; ``bottleneck`` two convs to ``base_width`` · 2^depth; ``decoder[j]``
    (from the deepest level up) up-samples ×2 to half the channels (``up``), merges skip
    depth−1−j (``skip``) and applies two convs; ``head`` is a 1x1 conv to ``num_classes``.
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 2,
        *,
        depth: int = 3,
        base_width: int = 16,
        up: str = "transposed",
        skip: str = "concat",
        norm: str = "bn",
        act: str = "relu",
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ConfigError(f"model.depth={depth}: a U-Net needs at least 1 pooling level")
        if base_width < 1:
            raise ConfigError(f"model.base_width={base_width} must be a positive channel count")
        if num_classes < 2:
            raise ConfigError(f"model.num_classes={num_classes}: segmentation needs at least 2")
        self.depth = depth
        widths = [base_width * 2**i for i in range(depth + 1)]  # the last: the bottleneck's
        c_in, encoder = in_channels, []
        for width in widths[:-1]:
            encoder.append(DoubleConv(c_in, width, norm=norm, act=act))
            c_in = width
        self.encoder = nn.ModuleList(encoder)
        self.pool = nn.MaxPool2d(2, 2)
        self.bottleneck = DoubleConv(c_in, widths[-1], norm=norm, act=act)
        self.decoder = nn.ModuleList(
            UpLevel(widths[i + 1], widths[i], widths[i], up=up, skip=skip, norm=norm, act=act)
            for i in reversed(range(depth))
        )
        self.head = nn.Conv2d(widths[0], num_classes, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        check_input_size(x, self.depth)
        skips = []
        for level in self.encoder:
            x = level(x)
            skips.append(x)  # (N, base_width·2^i, H/2^i, W/2^i)
            x = self.pool(x)
        x = self.bottleneck(x)
        for level, skip in zip(self.decoder, reversed(skips), strict=True):
            x = level(x, skip)
        return self.head(x)
