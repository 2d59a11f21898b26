"""A folder of images, one sub-folder per class (e.g. cats vs dogs), via torchvision's ImageFolder.

Layouts: ``root/<class>/*.png`` (split here, stratified and seeded) or ``root/train/<class>/...``
with ``root/val`` and/or ``root/test`` beside it. Images are decoded in DataLoader workers and resized
to one size; batches then get the same device-side augmentation as in-memory data.
"""

from __future__ import annotations

from pathlib import Path

import torch
from sklearn.model_selection import train_test_split
from torch.utils.data import Dataset, Subset
from torchvision import datasets
from torchvision.transforms import v2

from ablab.data.base import ImageDataModule
from ablab.errors import ConfigError


class ImageFolderDataModule(ImageDataModule):
    """Decoded, converted to ``in_channels``, resized to ``image_size`` x ``image_size``, in [0, 1]."""

    name = "image_folder"

    def __init__(
        self,
        *,
        root: str,
        num_classes: int,
        in_channels: int = 3,
        image_size: int = 64,
        **kw,
    ) -> None:
        super().__init__(
            num_classes=num_classes, in_channels=in_channels, image_size=image_size, **kw
        )
        self.root = Path(root)

    def transform(self) -> v2.Compose:
        ops = [v2.ToImage()]
        if self.in_channels == 1:
            ops.append(v2.Grayscale(1))
        ops += [
            v2.Resize((self.image_size, self.image_size), antialias=True),
            v2.ToDtype(torch.float32, scale=True),
        ]
        return v2.Compose(ops)

    def _folder(self, path: Path) -> datasets.ImageFolder:
        try:
            return datasets.ImageFolder(str(path), transform=self.transform())
        except (FileNotFoundError, OSError) as err:
            raise ConfigError(f"image folder {path} is unusable: {err}") from None

    def prepare_data(self) -> None:
        if not self.root.is_dir():
            raise ConfigError(
                f"image folder {self.root} does not exist; set data.root to a folder with one "
                "sub-folder of images per class"
            )

    def build_splits(self) -> dict[str, Dataset]:
        self.prepare_data()
        nested = (self.root / "train").is_dir()
        train = self._folder(self.root / "train" if nested else self.root)
        held = {
            name: self._folder(self.root / name)
            for name in ("val", "test")
            if nested and (self.root / name).is_dir()
        }
        for name, folder in held.items():
            if folder.classes != train.classes:
                raise ConfigError(
                    f"{self.root / name} has classes {folder.classes}, train has {train.classes}"
                )
        if len(train.classes) != self.num_classes:
            raise ConfigError(
                f"image folder {self.root} has {len(train.classes)} classes "
                f"({', '.join(train.classes)}) but data.num_classes={self.num_classes}"
            )
        self.class_names = list(train.classes)
        index = list(range(len(train)))
        if "test" not in held and "val" in held:
            held["test"] = held["val"]  # a train/val layout (e.g. cats vs dogs): report on val
        if "test" not in held:
            index, test = self._split(train, index, self.test_fraction)
            held["test"] = Subset(train, test)
        if "val" not in held:
            index, val = self._split(train, index, self.val_fraction)
            held["val"] = Subset(train, val)
        return {"train": Subset(train, index), **held}

    def _split(self, folder: datasets.ImageFolder, index, fraction: float):
        index = list(index)
        labels = [folder.targets[i] for i in index]
        try:
            return train_test_split(
                index, test_size=fraction, stratify=labels, random_state=self.seed
            )
        except ValueError as err:
            raise ConfigError(f"cannot split {self.root} with fraction {fraction}: {err}") from None
