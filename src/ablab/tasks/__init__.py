"""LightningModules: the training objective around injected networks (see ``base.Task``)."""

from ablab.tasks.base import Task
from ablab.tasks.classifier import ClassifierModule

__all__ = ["ClassifierModule", "Task"]
