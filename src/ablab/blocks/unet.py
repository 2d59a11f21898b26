"""The levels of a U-Net (Ronneberger et al. 2015, "U-Net: Convolutional Networks for Biomedical
Image Segmentation"): two 3x3 convs per level, an up-sampling step that halves the channels, and
the skip that hands the contracting path's map at the same size to the expanding path.

The paper's convs are unpadded (572 → 388 px, skips cropped to fit); here every conv is padded
("same" size), so the output has the input's size and a skip needs no crop. The paper has no
normalisation; ``norm`` adds one (``bn`` by default) and ``norm=none`` gives its plain layers.

The two switches of the up path, each a name in its table:

- ``up``: ``transposed`` — the paper's "2x2 up-convolution", a 2x2/2 transposed conv from c_in to
  c_out channels (4·c_in·c_out weights); ``bilinear`` — bilinear ×2 up-sampling and a 1x1 conv
  from c_in to c_out (c_in·c_out weights): the same sizes, a fixed interpolation in place of a
  learned one.
- ``skip``: ``concat`` — the paper's copy: [skip; up] along channels; ``none`` — the up-sampled
  map alone, so the level's first conv takes c_out channels instead of 2·c_out (the same depth,
  fewer weights): what the skips contribute, measured.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from ablab.errors import unknown_choice
from ablab.layers import ConvNormAct


class DoubleConv(nn.Sequential):
    """y = act(norm(conv3x3(act(norm(conv3x3(x)))))), padded: one U-Net level's two convs."""

    def __init__(self, c_in: int, c_out: int, *, norm: str = "bn", act: str = "relu") -> None:
        super().__init__(
            ConvNormAct(c_in, c_out, 3, norm=norm, act=act),
            ConvNormAct(c_out, c_out, 3, norm=norm, act=act),
        )


def transposed_up(c_in: int, c_out: int) -> nn.Module:
    """2x2/2 transposed conv, c_in → c_out channels: the paper's up-convolution."""
    return nn.ConvTranspose2d(c_in, c_out, kernel_size=2, stride=2)


def bilinear_up(c_in: int, c_out: int) -> nn.Module:
    """Bilinear ×2 up-sampling, then a 1x1 conv c_in → c_out: a fixed interpolation."""
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
        nn.Conv2d(c_in, c_out, kernel_size=1),
    )


class ConcatSkip(nn.Module):
    """y = [skip; up] along channels: the paper's copy of the contracting path's map."""

    @staticmethod
    def channels(c_skip: int) -> int:
        """Channels the skip adds to the up-sampled map's."""
        return c_skip

    def forward(self, up: Tensor, skip: Tensor) -> Tensor:
        return torch.cat([skip, up], dim=1)


class NoSkip(nn.Module):
    """y = up: the contracting path's map is not used (an encoder-decoder without skips)."""

    @staticmethod
    def channels(c_skip: int) -> int:
        return 0

    def forward(self, up: Tensor, skip: Tensor) -> Tensor:
        return up


#: ``up`` name -> the up-sampling layer, (c_in, c_out) -> module doubling height and width
UPSAMPLERS: dict[str, Callable[[int, int], nn.Module]] = {
    "transposed": transposed_up,
    "bilinear": bilinear_up,
}
#: ``skip`` name -> how the skip meets the up-sampled map
SKIPS: dict[str, type[nn.Module]] = {"concat": ConcatSkip, "none": NoSkip}


class UpLevel(nn.Module):
    """y = convs(merge(up(x), skip)): ×2 up-sampling to c_out channels, the skip merged
    (``concat``: c_skip more channels; ``none``: none), two 3x3 convs to c_out."""

    def __init__(
        self,
        c_in: int,
        c_skip: int,
        c_out: int,
        *,
        up: str = "transposed",
        skip: str = "concat",
        norm: str = "bn",
        act: str = "relu",
    ) -> None:
        super().__init__()
        if up not in UPSAMPLERS:
            raise unknown_choice("U-Net up-sampling", up, UPSAMPLERS)
        if skip not in SKIPS:
            raise unknown_choice("U-Net skip", skip, SKIPS)
        self.up = UPSAMPLERS[up](c_in, c_out)
        self.merge = SKIPS[skip]()
        self.convs = DoubleConv(c_out + self.merge.channels(c_skip), c_out, norm=norm, act=act)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.convs(self.merge(self.up(x), skip))
