"""LightningModules: the training objective around an injected network."""

from ablab.tasks.classifier import ClassifierModule

__all__ = ["ClassifierModule"]
