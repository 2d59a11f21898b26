"""Images with class masks on disk, in the Oxford-IIIT Pet layout (Parkhi et al. 2012, "Cats and
Dogs"; what torchvision's ``OxfordIIITPet`` downloads into ``<root>/oxford-iiit-pet``)::

    root/images/<name>.jpg                 the images (.jpg, .jpeg or .png)
    root/annotations/trimaps/<name>.png    one mask per image, a class value per pixel
    root/annotations/trainval.txt          optional: the official split, one image name first
    root/annotations/test.txt              on each line (other columns and # lines ignored)

With both lists the split is theirs; else every image in ``images/`` is split, seeded, with
``test_fraction`` held out for test. Validation is ``val_fraction`` of the training part, seeded.

Mask values minus ``mask_offset`` are the classes: the Pet trimaps hold 1 = pet, 2 = background,
3 = border, so the default offset 1 gives classes 0 pet, 1 background, 2 border
(``num_classes`` 3). To leave the uncertain border out of training and scoring, keep two classes
and ignore the third value: ``data.num_classes=2 data.class_names=[pet,background]
task.ignore_index=2``.

Pairs are decoded lazily, one per ``__getitem__`` in the DataLoader workers, every epoch: the Pet
set's 7,349 images are 0.8 GB of JPEG, and decoding them all at setup would cost minutes before
the first step. Images are converted to ``in_channels``, resized to ``image_size`` x
``image_size`` (bilinear, antialiased; the aspect ratio is not kept) and scaled to [0, 1]; masks
are resized with nearest-neighbour sampling, so every pixel keeps a value the mask had. As all
segmentation data (:mod:`ablab.data.masks`): standardised on the device, no augmentation.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from ablab.data.masks import MaskDataModule
from ablab.errors import ConfigError

IMAGES = Path("images")
MASKS = Path("annotations") / "trimaps"
LISTS = {"trainval": Path("annotations") / "trainval.txt", "test": Path("annotations") / "test.txt"}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
LAYOUT = "root/images/<name>.jpg with root/annotations/trimaps/<name>.png (Oxford-IIIT Pet)"


class MaskPairs(Dataset):
    """(image, mask) pairs read from files: image float (C, S, S) in [0, 1], mask long (S, S)."""

    def __init__(
        self, pairs: Sequence[tuple[Path, Path]], in_channels: int, size: int, offset: int
    ) -> None:
        self.pairs, self.in_channels = list(pairs), in_channels
        self.size, self.offset = size, offset

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image_path, mask_path = self.pairs[index]
        return self.image(image_path), self.mask(mask_path)

    def image(self, path: Path) -> Tensor:
        """Decoded (grey or RGB: some Pet JPEGs are CMYK or grey), resized, in [0, 1]."""
        with Image.open(path) as image:
            pixels = TF.pil_to_tensor(image.convert("L" if self.in_channels == 1 else "RGB"))
        pixels = TF.resize(pixels, [self.size, self.size], antialias=True)
        return pixels.float().div_(255.0)

    def mask(self, path: Path) -> Tensor:
        """The class of each pixel: the stored value − offset, resized nearest-neighbour."""
        with Image.open(path) as mask:
            values = torch.from_numpy(np.array(mask, dtype=np.int64))
        if values.dim() == 3:  # an RGB-saved mask: its channels are equal, keep one
            values = values[..., 0]
        values = TF.resize(
            values[None], [self.size, self.size], interpolation=InterpolationMode.NEAREST
        )[0]
        return values - self.offset


class MaskFolderDataModule(MaskDataModule):
    """Image and mask files in the Oxford-IIIT Pet layout, decoded and resized per item."""

    name = "mask_folder"

    def __init__(
        self,
        *,
        root: str,
        num_classes: int = 3,
        class_names: Sequence[str] = ("pet", "background", "border"),
        mask_offset: int = 1,
        in_channels: int = 3,
        image_size: int = 64,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        **kw: Any,
    ) -> None:
        """``class_names``: one per class, in class-index order; ``mask_offset``: subtracted
        from the stored mask values; ``test_fraction``: held out when the root has no split
        lists; ``val_fraction``: of the training part."""
        super().__init__(
            num_classes=num_classes, in_channels=in_channels, image_size=image_size, **kw
        )
        class_names = [str(c) for c in class_names]
        if len(class_names) != num_classes:
            raise ConfigError(
                f"data.class_names has {len(class_names)} names ({', '.join(class_names)}) but "
                f"data.num_classes={num_classes}; give one name per class"
            )
        for key, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0.0 < frac < 1.0:
                raise ConfigError(f"data.{key} must be in (0, 1), got {frac}")
        self.root, self.class_names, self.mask_offset = Path(root), class_names, mask_offset
        self.val_fraction, self.test_fraction = val_fraction, test_fraction

    def prepare_data(self) -> None:
        for folder in (self.root, self.root / IMAGES, self.root / MASKS):
            if not folder.is_dir():
                raise ConfigError(
                    f"mask folder {folder} does not exist; set data.root to a folder with {LAYOUT}"
                )

    def build_splits(self) -> dict[str, Dataset]:
        self.prepare_data()
        images = {
            p.stem: p
            for p in sorted((self.root / IMAGES).iterdir())
            if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
        }
        if not images:
            raise ConfigError(f"mask folder {self.root / IMAGES} has no images; expected {LAYOUT}")
        lists = {split: self.root / path for split, path in LISTS.items()}
        if all(path.is_file() for path in lists.values()):  # the official split
            named = {split: self.read_list(path, images) for split, path in lists.items()}
            trainval, test = named["trainval"], named["test"]
        else:
            trainval, test = self.split(sorted(images), self.test_fraction, offset=0)
        train, val = self.split(trainval, self.val_fraction, offset=1)
        return {
            split: MaskPairs(
                [self.pair(images, name) for name in names],
                self.in_channels,
                self.image_size,
                self.mask_offset,
            )
            for split, names in (("train", train), ("val", val), ("test", test))
        }

    def read_list(self, path: Path, images: dict[str, Path]) -> list[str]:
        """The image names of a split list: each line's first column (``#`` lines skipped)."""
        names = [
            line.split()[0]
            for line in path.read_text().splitlines()
            if line.strip() and not line.startswith("#")
        ]
        missing = [name for name in names if name not in images]
        if missing:
            raise ConfigError(
                f"{path} names {len(missing)} images not in {self.root / IMAGES} (first: "
                f"{missing[0]}); expected {LAYOUT}"
            )
        if not names:
            raise ConfigError(f"split list {path} names no images")
        return names

    def split(self, names: list[str], fraction: float, offset: int) -> tuple[list[str], list[str]]:
        """``names`` minus a held-out ``fraction`` (at least one), drawn with ``seed`` (+ offset:
        test and validation draws differ), each part in its original order."""
        held = max(1, round(len(names) * fraction))
        if held >= len(names):
            raise ConfigError(
                f"cannot hold out {fraction} of {len(names)} images in {self.root} and keep any "
                "for training"
            )
        generator = torch.Generator().manual_seed(self.seed + offset)
        order = torch.randperm(len(names), generator=generator)
        out = set(order[:held].tolist())
        kept = [n for i, n in enumerate(names) if i not in out]
        return kept, [n for i, n in enumerate(names) if i in out]

    def pair(self, images: dict[str, Path], name: str) -> tuple[Path, Path]:
        mask = self.root / MASKS / f"{name}.png"
        if not mask.is_file():
            raise ConfigError(f"image {images[name]} has no mask {mask}; expected {LAYOUT}")
        return images[name], mask

    @cached_property
    def train_class_counts(self) -> list[int]:
        """Pixels of each class in the training split at ``image_size`` (class-count losses):
        every training mask decoded once, when a loss asks."""
        self.setup()
        dataset: MaskPairs = self.splits["train"]
        counts = torch.zeros(self.num_classes, dtype=torch.long)
        for _, mask_path in dataset.pairs:
            values = dataset.mask(mask_path).flatten()
            counts += torch.bincount(values[(values >= 0) & (values < self.num_classes)],
                                     minlength=self.num_classes)  # fmt: skip
        return counts.tolist()
