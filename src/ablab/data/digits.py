"""scikit-learn's bundled handwritten digits (UCI ML hand-written digits, Alpaydin & Kaynak 1998).

1,797 real 8x8 grayscale images in 10 classes, shipped inside scikit-learn: no download, no network.
Upsampled to ``image_size`` so 28/32 px models train on it unchanged.
"""

from __future__ import annotations

import torch
from sklearn.datasets import load_digits
from torch import Tensor

from ablab.data.base import ImageDataModule


class DigitsDataModule(ImageDataModule):
    """8x8 digits (pixel values 0..16) scaled to [0, 1] and resized; stratified seeded splits."""

    name = "digits"

    def __init__(self, *, image_size: int = 28, in_channels: int = 1, num_classes: int = 10, **kw):
        super().__init__(
            num_classes=num_classes, in_channels=in_channels, image_size=image_size, **kw
        )

    def source_classes(self) -> list[str]:
        return [str(i) for i in range(10)]

    def load(self) -> dict[str, tuple[Tensor, Tensor]]:
        bunch = load_digits()
        x = torch.from_numpy(bunch.images).float().div_(16.0).unsqueeze(1)  # (N, 1, 8, 8)
        return {"all": (x, torch.from_numpy(bunch.target))}
