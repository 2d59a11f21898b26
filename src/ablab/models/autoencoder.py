"""Autoencoders: x̂ = decoder(encoder(x)), a code of ``code_size`` numbers in between.

- :class:`MLPAutoencoder`: fully connected layers around a linear code layer, as Hinton &
  Salakhutdinov 2006 ("Reducing the dimensionality of data with neural networks"; their MNIST net
  is 784-1000-500-250-30 with a linear code, trained end to end after RBM pre-training, which is
  not done here).
- :class:`ConvAutoencoder`: strided convolutions down, a linear map to the code and back,
  transposed convolutions up (Masci et al. 2011, "Stacked convolutional auto-encoders for
  hierarchical feature extraction", with strides in place of their max-pooling).

Trained on corrupted inputs towards the clean ones (``task=reconstruction`` with ``data.noise``),
either is a denoising autoencoder (Vincent et al. 2008, "Extracting and composing robust features
with denoising autoencoders"). The output is linear: it reconstructs the standardised image the
data module feeds, which is not bounded to [0, 1].

Both expose ``encoder`` (image -> (N, code_size)) and ``decoder`` ((N, code_size) -> image), and
``encode(x)``, the representation a linear probe reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

from torch import Tensor, nn

from ablab.errors import ConfigError
from ablab.layers import ConvNormAct, make_act, make_norm
from ablab.layers.norm import uses_norm


def _check_sizes(in_channels: int, image_size: int, code_size: int) -> None:
    for key, value in (("in_channels", in_channels), ("image_size", image_size),
                       ("code_size", code_size)):  # fmt: skip
        if value < 1:
            raise ConfigError(f"model.{key} must be positive, got {value}")


class Autoencoder(nn.Module):
    """x̂ = decoder(encoder(x)); ``encode(x)`` is the code."""

    encoder: nn.Module
    decoder: nn.Module

    def encode(self, x: Tensor) -> Tensor:
        """The (N, code_size) code of images x."""
        return self.encoder(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encoder(x))


class MLPAutoencoder(Autoencoder):
    """code = W_k φ(… φ(W_1 vec(x))); x̂ = the mirror image of those layers from the code."""

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 28,
        code_size: int = 32,
        *,
        hidden: Sequence[int] = (256, 128),
        act: str = "relu",
    ) -> None:
        super().__init__()
        _check_sizes(in_channels, image_size, code_size)
        hidden = tuple(hidden)
        if any(h < 1 for h in hidden):
            raise ConfigError(f"model.hidden must be positive widths, got {list(hidden)}")
        pixels = in_channels * image_size * image_size
        widths = (pixels, *hidden)
        encoder: list[nn.Module] = [nn.Flatten()]
        for c_in, c_out in zip(widths, hidden, strict=False):
            encoder += [nn.Linear(c_in, c_out), make_act(act, c_out)]
        encoder.append(nn.Linear(widths[-1], code_size))  # a linear code (Hinton & S. 2006)
        self.encoder = nn.Sequential(*encoder)
        back = (code_size, *reversed(hidden))
        decoder: list[nn.Module] = []
        for c_in, c_out in pairwise(back):
            decoder += [nn.Linear(c_in, c_out), make_act(act, c_out)]
        decoder += [
            nn.Linear(back[-1], pixels),
            nn.Unflatten(1, (in_channels, image_size, image_size)),
        ]
        self.decoder = nn.Sequential(*decoder)


class UpConvNormAct(nn.Sequential):
    """y = act(norm(convᵀ(x))): a 3x3 transposed conv of stride 2 that doubles the size, or
    doubles it less one (``output_padding`` 0), to undo a stride-2 conv exactly."""

    def __init__(
        self, c_in: int, c_out: int, output_padding: int, *, norm: str = "bn", act: str = "relu"
    ) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose2d(
            c_in, c_out, 3, stride=2, padding=1, output_padding=output_padding,
            bias=not uses_norm(norm),
        )  # fmt: skip
        self.norm = make_norm(norm, c_out)
        self.act = make_act(act, c_out)


class ConvAutoencoder(Autoencoder):
    """code = W vec(down(x)), down = stride-2 conv-norm-act stages; x̂ = up(W' code), up their
    transposed-conv mirror image ending in a linear convᵀ to ``in_channels``."""

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 28,
        code_size: int = 32,
        *,
        widths: Sequence[int] = (32, 64),
        norm: str = "bn",
        act: str = "relu",
    ) -> None:
        super().__init__()
        _check_sizes(in_channels, image_size, code_size)
        widths = tuple(widths)
        if not widths or any(w < 1 for w in widths):
            raise ConfigError(
                f"model.widths must be one or more positive widths, got {list(widths)}"
            )
        if image_size < 2 ** len(widths):
            raise ConfigError(
                f"model.widths={list(widths)} halves the image {len(widths)} times: image_size "
                f"must be at least {2 ** len(widths)}, got {image_size}"
            )
        # A 3x3 conv of stride 2 and padding 1 maps size s to ceil(s / 2): 28 -> 14 -> 7,
        # 32 -> 16 -> 8; any size works, odd ones too.
        sizes = [image_size]
        for _ in widths:
            sizes.append((sizes[-1] + 1) // 2)
        channels = (in_channels, *widths)
        side, last = sizes[-1], widths[-1]
        self.encoder = nn.Sequential(
            *(
                ConvNormAct(c_in, c_out, 3, stride=2, norm=norm, act=act)
                for c_in, c_out in pairwise(channels)
            ),
            nn.Flatten(),  # (N, last, side, side) -> (N, last·side²)
            nn.Linear(last * side * side, code_size),
        )
        # convᵀ (k 3, stride 2, padding 1) maps s to 2s − 1 + output_padding: the padding that
        # gives back each size the encoder halved.
        pads = [big - 2 * small + 1 for big, small in pairwise(sizes)]
        # stage i of the encoder took widths[i - 1] channels at sizes[i] to widths[i] at
        # sizes[i + 1]; its mirror image goes back, deepest first
        up = [
            UpConvNormAct(widths[i], widths[i - 1], pads[i], norm=norm, act=act)
            for i in range(len(widths) - 1, 0, -1)
        ]
        self.decoder = nn.Sequential(
            nn.Linear(code_size, last * side * side),
            nn.Unflatten(1, (last, side, side)),
            make_act(act, last),
            *up,
            # linear output: the standardised image has no fixed range
            nn.ConvTranspose2d(
                widths[0], in_channels, 3, stride=2, padding=1, output_padding=pads[0]
            ),
        )
