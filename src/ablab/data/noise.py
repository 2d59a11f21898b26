"""Input corruption for denoising autoencoders, in pixel space [0, 1].

Vincent et al. 2008 ("Extracting and composing robust features with denoising autoencoders")
train an autoencoder to rebuild a clean x from a corrupted x̃ ~ q(x̃ | x). Two corruptions:

- ``gaussian``: x̃ = clamp(x + σ·ε, 0, 1), ε ~ N(0, 1) per pixel and channel, σ = ``level``
  (in pixel units: 0.3 is 30% of the intensity range);
- ``mask`` (their masking noise): each pixel zeroed independently with probability ``level``,
  the same mask over its channels (a pixel is lost, not one colour of it);
- ``none``: x̃ = x (level 0).

The data declares the corruption (``data.noise``, ``data.noise_level``); the task applies it, to
the batches it chooses, with a generator it seeds: fresh draws in training, draws fixed by the
batch in evaluation (:func:`noise_seed`), so every epoch and every variant of a study scores the
same noisy held-out images — as long as the variants share the batch size and the number of
processes: the draws are per batch, so a study that varies either scores other noisy images. Draws are made on the generator's device (the CPU) and moved to the
batch's: the same seed gives the same noise on a CPU and on a GPU.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from ablab.errors import ConfigError
from ablab.registry import Registry

#: The corruption-free kind: a data module without noise has it.
NONE = "none"


class Noise(NamedTuple):
    """One corruption: ``apply(x, level, generator)`` and the levels it accepts."""

    apply: Callable[[Tensor, float, torch.Generator], Tensor]
    accepts: Callable[[float], bool]
    #: the accepted levels, for the error message
    levels: str


NOISE: Registry[Noise] = Registry("noise")


def _gaussian(x: Tensor, level: float, generator: torch.Generator) -> Tensor:
    """clamp(x + level·ε, 0, 1), ε ~ N(0, 1) per element, drawn in float32 whatever x's
    precision (a bf16 run sees the fp32 run's noise, rounded)."""
    eps = torch.randn(x.shape, generator=generator, device=generator.device)
    return (x + level * eps.to(x.device, x.dtype)).clamp_(0.0, 1.0)


def _mask(x: Tensor, level: float, generator: torch.Generator) -> Tensor:
    """x · m, m_ij ~ Bernoulli(1 − level) per pixel, shared by the channels."""
    n, _, h, w = x.shape
    keep = torch.rand((n, 1, h, w), generator=generator, device=generator.device) >= level
    return x * keep.to(x.device, x.dtype)  # (N, 1, H, W) broadcast over channels


def _none(x: Tensor, level: float, generator: torch.Generator) -> Tensor:
    """x itself."""
    return x


NOISE.register(NONE)(Noise(_none, lambda level: level == 0, "of 0 (or set a noise)"))
NOISE.register("gaussian")(
    Noise(_gaussian, lambda level: 0 < level < math.inf, "> 0 (the pixel std)")
)
NOISE.register("mask")(
    Noise(_mask, lambda level: 0 < level < 1, "in (0, 1) (the fraction of pixels zeroed)")
)


class Corruption:
    """x̃ = q(x̃ | x) of kind ``kind`` at ``level``, on (N, C, H, W) pixels in [0, 1]."""

    def __init__(self, kind: str | None = NONE, level: float = 0.0) -> None:
        kind = NONE if kind is None else kind
        noise = NOISE[kind]  # unknown kind: one line naming the valid ones
        if not noise.accepts(level):
            raise ConfigError(f"noise '{kind}' takes a level {noise.levels}, got {level}")
        # Names, not functions: a data module or task holding it pickles (ddp_spawn).
        self.kind, self.level = kind, float(level)

    @property
    def active(self) -> bool:
        """Whether it changes anything (``kind`` is not ``none``)."""
        return self.kind != NONE

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """The corrupted copy of ``x``, drawn from ``generator`` (``x`` is left as it is)."""
        return NOISE[self.kind].apply(x, self.level, generator)

    def __repr__(self) -> str:
        return f"Corruption(kind={self.kind!r}, level={self.level})"


def noise_seed(seed: int, split: str, rank: int, index: int) -> int:
    """A 32-bit seed for batch ``index`` of split ``split`` on process ``rank``: SeedSequence mixes
    them, so nearby keys give unrelated streams (batch 1 is not batch 0 shifted)."""
    key = (seed, zlib.crc32(split.encode()), rank, index)
    return int(np.random.SeedSequence(key).generate_state(1)[0])


def seeded_generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed`` (see the module docstring on devices)."""
    return torch.Generator().manual_seed(seed)
