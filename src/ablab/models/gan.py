"""DCGAN's generator and discriminator (Radford, Metz & Chintala 2016, "Unsupervised representation
learning with deep convolutional generative adversarial networks"), optionally class-conditional
(Mirza & Osindero 2014, "Conditional generative adversarial nets").

DCGAN's architecture guidelines, each kept here:

- no pooling: strided convolutions down in D, strided transposed convolutions up in G (4x4
  kernels, stride 2, padding 1: each stage halves or doubles the map exactly);
- batch norm in both nets except G's output layer and D's input layer (``norm`` switches it,
  through the norm registry: ``norm="none"`` is the paper's ablation, ``ln``/``gn`` a critic
  without batch coupling for WGAN-GP);
- no fully connected hidden layers: G's first layer projects z onto an s0 x s0 map (a transposed
  conv of kernel s0 over a 1x1 input: the paper's matrix multiplication reshaped), D's last layer
  is an s0 x s0 conv to one score;
- ReLU in G with a tanh output (images in [−1, 1]); LeakyReLU with slope 0.2 in D.

Sizes: ``image_size`` = s0 · 2^k, the most halvings k that leave a map of s0 ≥ 4 pixels, with
k ≥ 2 (28 = 7·2², 32 = 4·2³, 64 = 4·2⁴). D's widths double from ``base_width`` at each halving,
G's mirror them: at 64 px with ``base_width`` 64 both are the 64-128-256-512 nets of the
paper's reference implementation (the paper's G starts at 1024).

Conditional (``num_classes`` > 0): G reads [z, onehot(y)]: its first layer is linear, so the
one-hot code through it is a learned label embedding added to the projected z. D reads x with
``num_classes`` one-hot label maps appended as input channels (CGAN's y beside the input, on
images). The score is a logit (or a critic value): the task's loss decides what it means.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ablab.errors import ConfigError
from ablab.layers import make_norm
from ablab.layers.norm import uses_norm

#: The smallest map the nets keep (DCGAN's 4x4).
MIN_SIDE = 4
#: Halvings at least: two stride-2 stages in each net.
MIN_STAGES = 2
#: D's LeakyReLU slope (Radford et al. 2016 §3).
LEAKY_SLOPE = 0.2


def dcgan_stages(image_size: int) -> tuple[int, int]:
    """(k, s0): the most halvings k of ``image_size`` that leave an integer side s0 ≥ 4; one line
    when k < 2 (the nets need two stride-2 stages)."""
    stages = 0
    while image_size % 2 ** (stages + 1) == 0 and image_size // 2 ** (stages + 1) >= MIN_SIDE:
        stages += 1
    if stages < MIN_STAGES:
        raise ConfigError(
            f"image_size={image_size} does not fit a DCGAN: it must be s·2^k with s >= "
            f"{MIN_SIDE} and k >= {MIN_STAGES} halvings (e.g. 28, 32, 48, 64)"
        )
    return stages, image_size // 2**stages


def _check_positive(**values: int) -> None:
    for key, value in values.items():
        if value < 1:
            raise ConfigError(f"{key} must be positive, got {value}")


def _check_classes(num_classes: int) -> None:
    if num_classes < 0 or num_classes == 1:
        raise ConfigError(f"num_classes={num_classes}: 0 (unconditional) or at least 2")


class Conditioned(nn.Module):
    """What G and D share: the label handling of a net conditional on ``num_classes`` classes."""

    num_classes: int

    def one_hot(self, y: Tensor | None, batch: int) -> Tensor | None:
        """onehot(y) as floats, or None for an unconditional net; a label mismatch raises."""
        if not self.num_classes:
            if y is not None:
                raise ValueError(f"{type(self).__name__} is unconditional but was given labels")
            return None
        if y is None or y.shape != (batch,):
            raise ValueError(
                f"{type(self).__name__} is conditional on {self.num_classes} classes: it needs "
                f"one label per sample, shape ({batch},)"
            )
        return F.one_hot(y, self.num_classes).float()


class DCGANGenerator(Conditioned):
    """x = tanh(convᵀ(up_{k−1}(… up_1(project([z, onehot(y)]))))), up = convᵀ(4, stride 2) → norm →
    ReLU; project = convᵀ(s0) of the 1x1 input → norm → ReLU."""

    def __init__(
        self,
        latent_size: int = 100,
        out_channels: int = 1,
        image_size: int = 28,
        base_width: int = 64,
        *,
        norm: str = "bn",
        num_classes: int = 0,
    ) -> None:
        super().__init__()
        _check_positive(latent_size=latent_size, out_channels=out_channels, base_width=base_width)
        _check_classes(num_classes)
        stages, side = dcgan_stages(image_size)
        self.latent_size, self.num_classes = latent_size, num_classes
        # the map at s0 is the widest; each doubling of the side halves the channels
        widths = [base_width * 2 ** (stages - 1 - i) for i in range(stages)]
        bias = not uses_norm(norm)
        self.project = nn.Sequential(
            nn.ConvTranspose2d(latent_size + num_classes, widths[0], side, bias=bias),
            make_norm(norm, widths[0]),
            nn.ReLU(),
        )
        self.stages = nn.Sequential(
            *(
                nn.Sequential(
                    nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=bias),
                    make_norm(norm, c_out),
                    nn.ReLU(),
                )
                for c_in, c_out in itertools.pairwise(widths)
            )
        )
        # no norm on the output layer (DCGAN: it made samples oscillate), tanh to [−1, 1]
        self.head = nn.Sequential(
            nn.ConvTranspose2d(widths[-1], out_channels, 4, stride=2, padding=1), nn.Tanh()
        )

    def forward(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        code = self.one_hot(y, len(z))
        if code is not None:
            z = torch.cat([z, code.to(z.dtype)], dim=1)
        # (N, latent [+ classes]) -> (N, latent [+ classes], 1, 1): the projection's 1x1 input
        return self.head(self.stages(self.project(z[:, :, None, None])))


class DCGANDiscriminator(Conditioned):
    """score = conv_{s0}(down_k(… down_1([x, onehot(y) maps]))), down = conv(4, stride 2) → norm →
    LeakyReLU(0.2), with no norm in the first; one score (a logit) per image."""

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 28,
        base_width: int = 64,
        *,
        norm: str = "bn",
        num_classes: int = 0,
    ) -> None:
        super().__init__()
        _check_positive(in_channels=in_channels, base_width=base_width)
        _check_classes(num_classes)
        stages, side = dcgan_stages(image_size)
        self.num_classes = num_classes
        widths = [base_width * 2**i for i in range(stages)]
        channels = [in_channels + num_classes, *widths]
        norms = ["none"] + [norm] * (stages - 1)  # DCGAN: no norm on D's input layer
        self.stages = nn.Sequential(
            *(
                nn.Sequential(
                    nn.Conv2d(c_in, c_out, 4, stride=2, padding=1, bias=not uses_norm(n)),
                    make_norm(n, c_out),
                    nn.LeakyReLU(LEAKY_SLOPE),
                )
                for c_in, c_out, n in zip(channels[:-1], channels[1:], norms, strict=True)
            )
        )
        self.head = nn.Conv2d(widths[-1], 1, side)

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        code = self.one_hot(y, len(x))
        if code is not None:
            # (N, classes) -> (N, classes, H, W): each label a constant map beside the image
            maps = code.to(x.dtype)[:, :, None, None].expand(-1, -1, *x.shape[-2:])
            x = torch.cat([x, maps], dim=1)
        return self.head(self.stages(x)).flatten()  # (N, 1, 1, 1) -> (N,)
