"""What every DataModule tells the core: the groups it is built with, an example input for
tracing the networks, and what it adds to the run (params, artifacts). The core asks nothing
else, so a sequence, noise or tabular DataModule plugs in beside the image ones.

:class:`SplitDataModule` is what every data module with train / validation / test splits shares,
whatever an example is (an image, a sequence): the seeded training order, the clean training
loader (``train_eval``) and the test stage's loaders.
"""

from __future__ import annotations

from typing import Any, ClassVar

import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, Subset, TensorDataset

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
        """Numbers measured on the data that the run logs as params (nested dicts flatten); each
        key must be among the measured prefixes of ``ablab.training.job.MEASURED``, so a resumed
        run does not read it as a changed config."""
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


class SplitDataModule(DataModule):
    """Train / validation / test splits (``splits``, built once by :meth:`build_splits`) and the
    loaders every task runs over them.

    ``seed`` draws the splits, ``order_seed`` (default: ``seed``) the training order.
    ``train_eval`` makes :meth:`val_dataloader` also return the clean training loader
    (:meth:`clean_train_dataloader`), of at most ``train_eval_limit`` examples (``None``: all).
    """

    def __init__(
        self,
        *,
        batch_size: int = 64,
        seed: int = 0,
        order_seed: int | None = None,
        num_workers: int = 0,
        train_eval: bool = False,
        train_eval_limit: int | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ConfigError(f"data.batch_size must be positive, got {batch_size}")
        if train_eval_limit is not None and train_eval_limit < 1:
            raise ConfigError(
                f"data.train_eval_limit must be a positive number of training examples or null "
                f"(all of them), got {train_eval_limit}"
            )
        self.batch_size = batch_size
        self.seed = seed
        self.order_seed = seed if order_seed is None else order_seed
        self.num_workers = num_workers
        self.train_eval, self.train_eval_limit = train_eval, train_eval_limit
        self.splits: dict[str, Dataset] | None = None

    def build_splits(self) -> dict[str, Dataset]:
        """``{"train": ..., "val": ..., "test": ...}``, built once, in :meth:`setup`."""
        raise NotImplementedError(f"{type(self).__name__} must implement build_splits()")

    def setup(self, stage: str | None = None) -> None:
        if self.splits is None:
            self.splits = self.build_splits()

    def train_dataloader(self) -> DataLoader:
        # The order of epoch e is a permutation drawn from seed order_seed + e (torch's
        # DistributedSampler; Lightning calls its set_epoch each epoch): a job resumed at epoch e
        # sees the order an uninterrupted one would, and a second loader (the batch preview)
        # leaves the order alone. With several processes each rank takes its share of it.
        self.setup()
        trainer = self.trainer
        sampler = DistributedSampler(
            self.splits["train"],
            num_replicas=trainer.world_size if trainer is not None else 1,
            rank=trainer.global_rank if trainer is not None else 0,
            shuffle=True,
            seed=self.order_seed,
        )
        return self._loader("train", shuffle=False, sampler=sampler)

    def val_dataloader(self) -> DataLoader | dict[str, DataLoader]:
        """The validation loader; with ``train_eval``, ``{"val": it, "train_eval": the clean
        training loader}``: Lightning runs both in its validation loop (model in eval mode, no
        gradients, the same weights), and the task namespaces each one's metrics by its key."""
        val = self._loader("val", shuffle=False)
        if not self.train_eval:
            return val  # one loader, as before: nothing extra to run or name
        return {"val": val, TRAIN_EVAL: self.clean_train_dataloader()}

    def clean_train_dataloader(self) -> DataLoader:
        """The training split as validation sees it: every example (or a fixed subset of
        ``train_eval_limit``) in stored order, batches augmented never (only training batches
        are, in :meth:`on_after_batch_transfer`) and standardised like validation's.

        The subset is a uniform draw without replacement seeded with ``seed`` (the split seed),
        kept in stored order, so every epoch and every variant of a study scores the same
        examples. Under DDP Lightning gives each rank its share (a non-shuffling sampler), as it
        does for the validation loader.
        """
        self.setup()
        train = self.splits["train"]
        limit = self.train_eval_limit
        if limit is not None and limit < len(train):
            generator = torch.Generator().manual_seed(self.seed)
            keep = torch.randperm(len(train), generator=generator)[:limit].sort().values
            train = (
                take(train, keep)
                if isinstance(train, TensorDataset | Subset)
                else Subset(train, keep.tolist())
            )
        return self._loader(train, shuffle=False)

    def test_dataloader(self) -> dict[str, DataLoader]:
        """``{"test": the test loader, "val": the validation loader}``, and ``"train_eval"`` with
        ``train_eval``: Lightning tests the same weights on each, in that order
        (``dataloader_idx`` 0, 1, 2), and the task namespaces each one's metrics (``test/…``,
        ``tested_val/…``). ``trainer.limit_test_batches`` applies to each of them."""
        val = self.val_dataloader()
        return {
            "test": self._loader("test", shuffle=False),
            **(val if isinstance(val, dict) else {"val": val}),
        }

    def _loader(self, split: str | Dataset, shuffle: bool, sampler: Sampler | None = None):
        """A loader over split ``split`` (a name in :attr:`splits`, or a dataset drawn from one)."""
        if self.splits is None:
            self.setup()
        dataset = self.splits[split] if isinstance(split, str) else split
        world_size = self.trainer.world_size if self.trainer is not None else 1
        return DataLoader(
            dataset,
            batch_size=self.rank_batch_size(world_size),
            shuffle=shuffle,
            sampler=sampler,
            # Every new iterator draws its workers' base seed from this generator; without one
            # it would come from the global generator, which dropout shares: a resumed job,
            # creating loaders at other moments, would then draw different dropout masks.
            generator=torch.Generator().manual_seed(self.order_seed),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            # In memory, a batch is one indexing per tensor (InMemory), already collated.
            collate_fn=as_batch if isinstance(dataset, InMemory) else None,
        )


class InMemory(TensorDataset):
    """A ``TensorDataset`` that hands the loader whole batches: ``dataset[[i, j, ...]]`` is one
    index per tensor instead of one ``__getitem__`` per sample and a stack (0.45 -> 0.20 ms per
    batch of 64 digits; the loader's collate is then :func:`as_batch`)."""

    def __getitems__(self, indices: list[int]) -> tuple[Tensor, ...]:
        index = torch.as_tensor(indices)
        return tuple(t[index] for t in self.tensors)


def as_batch(batch: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """The collate of a loader over :class:`InMemory`: the batch is already one."""
    return batch


def take(dataset: TensorDataset | Subset, index: Tensor) -> TensorDataset | Subset:
    """The examples at ``index``: still in memory for a TensorDataset; for a Subset, a subset of
    the same underlying dataset (not a subset of a subset)."""
    if isinstance(dataset, TensorDataset):
        return InMemory(*(t[index] for t in dataset.tensors))
    return Subset(dataset.dataset, [dataset.indices[i] for i in index.tolist()])
