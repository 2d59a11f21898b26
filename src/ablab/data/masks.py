"""What every segmentation data module shares: images with one class index per pixel.

A mask data module yields ``(x, mask)`` with ``x`` float (N, C, H, W) in [0, 1] before the
transfer and ``mask`` long (N, H, W), and declares ``target = "mask"`` (what the segmentation task
checks), ``num_classes``, ``class_names``, ``in_channels`` and ``image_size``. After the transfer
to the device the images are standardised with the training split's per-channel mean and std
(``normalize``); the mask is never touched.

There is no augmentation component: an augmentation of a segmentation batch must move the mask
with the image (a flip, a crop), which the image data's batch augmentations do not, so none is
applied — every epoch sees the same images.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from ablab.data.base import ImageDataModule
from ablab.data.module import SplitDataModule
from ablab.errors import ConfigError, unknown_choice

#: ``normalize`` options; ``true`` means ``channel`` and ``false`` means ``none``.
NORMALIZE = ("channel", "none")


class MaskDataModule(SplitDataModule):
    """Splits of (image, mask) pairs; images standardised on the device, masks as they are."""

    #: What a target is: one class index per pixel (the segmentation task checks it).
    target: ClassVar[str] = "mask"
    #: Human-readable dataset name for error messages.
    name: str = "masks"

    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: int,
        image_size: int,
        normalize: bool | str = True,
        **kw: Any,
    ) -> None:
        """``normalize``: ``channel`` (true: standardise with the training split's per-channel
        mean and std) or ``none`` (false)."""
        super().__init__(**kw)
        if num_classes < 2:
            raise ConfigError(f"data.num_classes must be at least 2, got {num_classes}")
        if in_channels not in (1, 3):
            raise ConfigError(f"data.in_channels must be 1 or 3, got {in_channels}")
        if image_size < 1:
            raise ConfigError(f"data.image_size must be positive, got {image_size}")
        if isinstance(normalize, bool):
            normalize = "channel" if normalize else "none"
        if normalize not in NORMALIZE:
            raise unknown_choice("data.normalize", normalize, NORMALIZE)
        self.num_classes, self.in_channels, self.image_size = num_classes, in_channels, image_size
        self.normalize = normalize
        self.class_names: list[str] = [str(c) for c in range(num_classes)]
        self.mean, self.std = torch.zeros(in_channels), torch.ones(in_channels)

    def setup(self, stage: str | None = None) -> None:
        if self.splits is not None:
            return
        super().setup(stage)
        if self.normalize == "channel":  # file-backed splits: from evenly spaced decoded images
            self.mean, self.std = ImageDataModule.channel_stats(self.splits["train"])

    def on_after_batch_transfer(
        self, batch: tuple[Tensor, Tensor], dataloader_idx: int
    ) -> tuple[Tensor, Tensor]:
        """(x − mean) / std per channel with training-split statistics; the mask as it is."""
        x, mask = batch
        if self.normalize == "none":
            return x, mask
        mean = self.mean.to(x.device, x.dtype).view(1, -1, 1, 1)
        std = self.std.to(x.device, x.dtype).view(1, -1, 1, 1)
        return (x - mean) / std, mask

    def example_input(self) -> Tensor:
        return torch.zeros(2, self.in_channels, self.image_size, self.image_size)
