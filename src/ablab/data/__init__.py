"""DataModules behind one interface (see ``base``), batched augmentation, a batch preview."""

from ablab.data.augment import BatchAugment
from ablab.data.base import ImageDataModule
from ablab.data.digits import DigitsDataModule
from ablab.data.folder import ImageFolderDataModule
from ablab.data.synthetic import SyntheticDataModule
from ablab.data.vision import VisionDataModule

__all__ = [
    "BatchAugment",
    "DigitsDataModule",
    "ImageDataModule",
    "ImageFolderDataModule",
    "SyntheticDataModule",
    "VisionDataModule",
]
