"""LightningModules: the training objective around injected networks (see ``base.Task``)."""

from ablab.tasks.base import StagedTask, Task
from ablab.tasks.classifier import ClassifierModule
from ablab.tasks.reconstruction import ReconstructionModule
from ablab.tasks.segmentation import SegmentationModule
from ablab.tasks.sequence import SequenceModule

__all__ = [
    "ClassifierModule",
    "ReconstructionModule",
    "SegmentationModule",
    "SequenceModule",
    "StagedTask",
    "Task",
]
