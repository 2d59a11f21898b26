"""DataModules behind one interface (see ``module``): images (``base``), sequences (``sequence``),
images with class masks (``masks``), batched augmentation, a batch preview."""

from ablab.data.augment import BatchAugment
from ablab.data.base import ImageDataModule
from ablab.data.digits import DigitsDataModule
from ablab.data.folder import ImageFolderDataModule
from ablab.data.mask_folder import MaskFolderDataModule
from ablab.data.sequence import AddingProblem, ImageRows, RecallProblem
from ablab.data.shapes import ShapesDataModule
from ablab.data.synthetic import SyntheticDataModule
from ablab.data.vision import VisionDataModule

__all__ = [
    "AddingProblem",
    "BatchAugment",
    "DigitsDataModule",
    "ImageDataModule",
    "ImageFolderDataModule",
    "ImageRows",
    "MaskFolderDataModule",
    "RecallProblem",
    "ShapesDataModule",
    "SyntheticDataModule",
    "VisionDataModule",
]
