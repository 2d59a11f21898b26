"""What every DataModule tells the core: the groups it is built with, an example input for
tracing the networks, and what it adds to the run (params, artifacts). The core asks nothing
else, so a sequence, noise or tabular DataModule plugs in beside the image ones."""

from __future__ import annotations

from typing import Any, ClassVar

import pytorch_lightning as pl

from ablab.errors import ConfigError

#: Name of the validation loader over the clean training set (a data module's ``train_eval``):
#: its metrics are logged as ``train_eval/<metric>``, beside ``train/…`` and ``val/…``.
TRAIN_EVAL = "train_eval"


class DataModule(pl.LightningDataModule):
    """A LightningDataModule whose ``batch_size`` is the global batch over all processes."""

    #: constructor argument -> config group of each component the core builds for it
    components: ClassVar[dict[str, str]] = {}
    batch_size: int

    def example_input(self) -> Any:
        """One input batch as the networks receive it (after any device-side transform); the
        core traces every network on it (parameters, MACs). Called after ``setup("fit")``."""
        raise NotImplementedError(f"{type(self).__name__} must implement example_input()")

    def run_params(self) -> dict[str, Any]:
        """Numbers measured on the data that the run logs as params (nested dicts flatten)."""
        return {}

    def run_artifacts(self) -> dict[str, str]:
        """artifact path -> text logged with the run's config (e.g. the augmentation pipeline)."""
        return {}

    def rank_batch_size(self, world_size: int) -> int:
        """``batch_size`` is the global batch: each of ``world_size`` processes loads its share."""
        if self.batch_size % world_size:
            raise ConfigError(
                f"data.batch_size={self.batch_size} is the global batch and must split evenly over "
                f"{world_size} processes; use a multiple of {world_size}"
            )
        return self.batch_size // world_size
