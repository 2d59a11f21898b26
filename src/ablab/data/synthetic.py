"""Seeded procedural images: one smooth random template per class plus noise and a random shift.

Cheap, deterministic data of any size, channel count and class balance; with ``imbalance`` < 1 the
class sizes fall off exponentially (class k has ``samples_per_class * imbalance ** (k / (K - 1))``
samples, the long-tailed profile of Cui et al. 2019), which the focal-loss study needs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ablab.data.base import ImageDataModule
from ablab.errors import ConfigError


class SyntheticDataModule(ImageDataModule):
    """x = sigmoid(shift(template[y]) + pixel_noise · ε), ε ~ N(0, 1), all from one seed."""

    name = "synthetic"

    def __init__(
        self,
        *,
        num_classes: int = 10,
        in_channels: int = 1,
        image_size: int = 28,
        samples_per_class: int = 200,
        pixel_noise: float = 0.5,
        imbalance: float = 1.0,
        max_shift: int = 2,
        template_size: int = 4,
        **kw,
    ) -> None:
        super().__init__(
            num_classes=num_classes, in_channels=in_channels, image_size=image_size, **kw
        )
        if not 0.0 < imbalance <= 1.0:
            raise ConfigError(
                f"data.imbalance must be in (0, 1] (rarest/commonest), got {imbalance}"
            )
        if pixel_noise < 0:
            raise ConfigError(f"data.pixel_noise must be non-negative, got {pixel_noise}")
        self.samples_per_class = samples_per_class
        self.pixel_noise = pixel_noise
        self.imbalance = imbalance
        self.max_shift = max_shift
        self.template_size = template_size

    def class_counts(self) -> list[int]:
        k = self.num_classes
        return [
            max(1, round(self.samples_per_class * self.imbalance ** (c / (k - 1))))
            for c in range(k)
        ]

    def source_classes(self) -> list[str]:
        return [f"class{c}" for c in range(self.num_classes)]

    def load(self) -> dict[str, tuple[Tensor, Tensor]]:
        g = torch.Generator().manual_seed(self.seed)
        k, c, s = self.num_classes, self.in_channels, self.image_size
        coarse = torch.randn(k, c, self.template_size, self.template_size, generator=g)
        templates = 2.0 * F.interpolate(coarse, size=(s, s), mode="bicubic", align_corners=False)
        y = torch.cat([torch.full((n,), cls) for cls, n in enumerate(self.class_counts())])
        x = templates[y]
        if self.max_shift > 0:
            shifts = torch.randint(-self.max_shift, self.max_shift + 1, (len(y), 2), generator=g)
            x = torch.stack(
                [img.roll(tuple(d.tolist()), dims=(1, 2)) for img, d in zip(x, shifts, strict=True)]
            )
        x = torch.sigmoid(x + self.pixel_noise * torch.randn(x.shape, generator=g))
        return {"all": (x, y)}
