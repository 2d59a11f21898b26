"""MNIST, Fashion-MNIST, CIFAR-10 and CIFAR-100 through torchvision's own dataset classes.

The files are read by torchvision's real loaders (idx files for MNIST, pickled batches for CIFAR)
and held in memory as uint8 tensors. Nothing is downloaded unless ``download=true``; missing files
raise one clear error naming the folder and the flag.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor
from torchvision import datasets

from ablab.data.base import ImageDataModule
from ablab.errors import ConfigError, unknown_choice

#: name -> (torchvision class, folder torchvision expects under ``root``)
VISION_DATASETS: dict[str, tuple[type, str]] = {
    "mnist": (datasets.MNIST, "MNIST/raw"),
    "fashion_mnist": (datasets.FashionMNIST, "FashionMNIST/raw"),
    "cifar10": (datasets.CIFAR10, "cifar-10-batches-py"),
    "cifar100": (datasets.CIFAR100, "cifar-100-python"),
}


class VisionDataModule(ImageDataModule):
    """A torchvision classification dataset with its official train/test split, in memory."""

    def __init__(
        self,
        *,
        dataset: str,
        root: str,
        download: bool = False,
        verify_checksums: bool = True,
        num_classes: int,
        in_channels: int,
        image_size: int,
        **kw,
    ) -> None:
        if dataset not in VISION_DATASETS:
            raise unknown_choice("data.dataset", dataset, VISION_DATASETS)
        super().__init__(
            num_classes=num_classes, in_channels=in_channels, image_size=image_size, **kw
        )
        self.name = dataset
        self.root = str(root)
        self.download = download
        self.verify_checksums = verify_checksums
        self._source_classes: list[str] | None = None

    @property
    def folder(self) -> Path:
        return Path(self.root) / VISION_DATASETS[self.name][1]

    def _open(self, train: bool, download: bool = False):
        cls = VISION_DATASETS[self.name][0]
        if not self.verify_checksums and hasattr(cls, "train_list"):
            cls = without_checksums(cls)
        try:
            return cls(self.root, train=train, download=download)
        except RuntimeError as err:
            raise ConfigError(
                f"{self.name} files not found or corrupted under {self.folder} ({err}); "
                "put the files there or set data.download=true"
            ) from None
        except OSError as err:  # no network, unwritable root, ...
            raise ConfigError(
                f"could not download {self.name} into {self.root}: {err}; "
                f"put the files under {self.folder} and keep data.download=false"
            ) from None

    def prepare_data(self) -> None:
        """Download when asked (rank 0 only), else check the files are there."""
        for train in (True, False):
            self._open(train, download=self.download)

    def source_classes(self) -> list[str]:
        if self._source_classes is None:
            self._source_classes = list(self._open(train=True).classes)
        return self._source_classes

    def load(self) -> dict[str, tuple[Tensor, Tensor]]:
        out = {}
        for split, train in (("train", True), ("test", False)):
            ds = self._open(train)
            x = torch.as_tensor(ds.data)
            # MNIST keeps (N, H, W) uint8; CIFAR keeps (N, H, W, C) uint8.
            x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
            out[split] = (x, torch.as_tensor(ds.targets))
        return out


def without_checksums(cls: type) -> type:
    """CIFAR's loader with its MD5 checks off (files must still exist).

    torchvision insists on the official sums; re-packed or fabricated batch files in the same
    pickle format are then read by the very same code.
    """
    attrs = {
        "train_list": [[name, None] for name, _ in cls.train_list],
        "test_list": [[name, None] for name, _ in cls.test_list],
        "meta": {**cls.meta, "md5": None},
    }
    return type(cls.__name__, (cls,), attrs)
