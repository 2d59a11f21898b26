"""LightningModules: the training objective around injected networks (see ``base.Task``)."""

from ablab.tasks.base import StagedTask, Task
from ablab.tasks.classifier import ClassifierModule
from ablab.tasks.sequence import SequenceModule

__all__ = ["ClassifierModule", "SequenceModule", "StagedTask", "Task"]
