"""The one interface every dataset shares.

A DataModule yields ``(x, y)`` with ``x`` float in [0, 1], shape (N, C, H, W) at the configured
``image_size`` and ``in_channels``, and ``y`` class indices in ``[0, num_classes)``. Augmentation and
standardisation run on the training device after the batch is transferred (Lightning's
``on_after_batch_transfer``), so in-memory datasets never pay per-sample Python for them. Training
batches go through the :class:`~ablab.data.augment.BatchAugment` as ``(x, y)``: a mixing op (mixup,
CutMix) returns ``y`` as (N, num_classes) class probabilities.

Three seeds: ``seed`` draws the splits, ``order_seed`` the training-set shuffling order and the
augmentation its own (``seeds.augmentation`` in the config).

``imbalance_ratio`` ρ > 1 makes the training split long-tailed as in CIFAR-10-LT (Cui et al. 2019,
"Class-Balanced Loss Based on Effective Number of Samples"): class c keeps
n_c = ⌊n_max · ρ^(−c/(C−1))⌋ of its examples, drawn with ``seed``; validation and test keep their
natural class balance, so per-class metrics measure what the imbalance cost.

``train_eval`` adds a second validation loader over the *clean* training set: the training
examples in their stored order, through the transfer every validation batch takes
(standardisation only: no augmentation, no shuffling, not the training sampler). Scored with the
model in eval mode, it is the training side of a train-validation gap; training metrics, logged
with augmentation and dropout on, understate it.

Test runs the test loader and, after it, the validation loaders again (``{"test", "val",
"train_eval"}``): the tested weights (an ablab run tests its best checkpoint) are then scored on
validation too, so a final validation/test pair or gap never mixes two sets of weights.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from sklearn.model_selection import train_test_split
from torch import Tensor, nn
from torch.utils.data import (
    Dataset,
    Subset,
    TensorDataset,
)

from ablab.data.augment import BatchAugment
from ablab.data.module import InMemory, SplitDataModule, take
from ablab.data.noise import Corruption
from ablab.errors import ConfigError, unknown_choice

#: ``normalize`` options; ``true`` means ``channel`` and ``false`` means ``none``.
NORMALIZE = ("channel", "per_pixel_mean", "none")


class ImageDataModule(SplitDataModule):
    """Splits, loaders, device-side augmentation and standardisation common to all image data.

    In-memory subclasses implement :meth:`load`; file-backed ones override :meth:`build_splits`.
    """

    #: Human-readable dataset name for error messages.
    name: str = "dataset"
    components: ClassVar[dict[str, str]] = {"augmentation": "augmentation"}

    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: int,
        image_size: int,
        batch_size: int = 64,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        seed: int = 0,
        order_seed: int | None = None,
        num_workers: int = 0,
        normalize: bool | Literal["channel", "per_pixel_mean", "none"] = True,
        augmentation: BatchAugment | nn.Module | None = None,
        imbalance_ratio: float = 1.0,
        train_eval: bool = False,
        train_eval_limit: int | None = None,
        noise: str | None = None,
        noise_level: float = 0.0,
    ) -> None:
        """``order_seed`` (default: ``seed``) shuffles the training set; ``augmentation`` is a
        :class:`BatchAugment`, or any image-only module, which is then wrapped in one;
        ``imbalance_ratio`` ≥ 1 subsamples the training split to a long tail (1: as it is);
        ``normalize`` is ``channel`` (true: per-channel mean and std of the training split),
        ``per_pixel_mean`` (the training split's mean image subtracted, no division; He et al.
        2016) or ``none`` (false). ``train_eval`` makes :meth:`val_dataloader` also return the
        clean training loader (:meth:`clean_train_dataloader`), of at most ``train_eval_limit``
        examples (``None``: all). ``noise`` (``gaussian``, ``mask``; ``None``: none) at
        ``noise_level`` is the corruption a denoising task applies (:attr:`corruption`, see
        :mod:`ablab.data.noise`); batches themselves stay clean."""
        super().__init__(
            batch_size=batch_size,
            seed=seed,
            order_seed=order_seed,
            num_workers=num_workers,
            train_eval=train_eval,
            train_eval_limit=train_eval_limit,
        )
        if num_classes < 2:
            raise ConfigError(f"data.num_classes must be at least 2, got {num_classes}")
        if in_channels not in (1, 3):
            raise ConfigError(f"data.in_channels must be 1 or 3, got {in_channels}")
        if image_size < 1:
            raise ConfigError(f"data.image_size must be positive, got {image_size}")
        for key, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0.0 < frac < 1.0:
                raise ConfigError(f"data.{key} must be in (0, 1), got {frac}")
        if not 1.0 <= imbalance_ratio < math.inf:
            raise ConfigError(
                f"data.imbalance_ratio must be a finite number >= 1 (the training split's "
                f"head-to-tail class size ratio; 1 keeps it as it is), got {imbalance_ratio}"
            )
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.image_size = image_size
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        if isinstance(normalize, bool):
            normalize = "channel" if normalize else "none"
        if normalize not in NORMALIZE:
            raise unknown_choice("data.normalize", normalize, NORMALIZE)
        self.normalize = normalize
        self.imbalance_ratio = imbalance_ratio
        if not isinstance(augmentation, BatchAugment):
            ops = {} if augmentation is None else {type(augmentation).__name__: augmentation}
            augmentation = BatchAugment(
                ops, seed=seed, in_channels=in_channels, image_size=image_size
            )
        self.augmentation = augmentation
        try:
            #: What a denoising task applies to the pixels; the batches are never corrupted here.
            self.corruption = Corruption(noise, noise_level)
        except ConfigError as err:
            shown = "null" if noise is None else noise
            raise ConfigError(f"data.noise={shown} data.noise_level={noise_level}: {err}") from None
        self.class_names: list[str] = [str(i) for i in range(num_classes)]
        self.mean = torch.zeros(in_channels)
        self.std = torch.ones(in_channels)
        #: Examples per class in the training split as trained on, after :meth:`setup`.
        self.train_class_counts: list[int] | None = None

    # -- what subclasses provide -------------------------------------------------------------
    def load(self) -> dict[str, tuple[Tensor, Tensor]]:
        """Return raw splits: ``{"train": (x, y), "test": (x, y)}`` or ``{"all": (x, y)}``.

        ``x`` is (N, C, H, W), uint8 in [0, 255] or float in [0, 1]; ``y`` integer labels.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement load() or build_splits()")

    def source_classes(self) -> Sequence[str]:
        """All class names the source provides (``num_classes`` selects the first ones)."""
        return [str(i) for i in range(self.num_classes)]

    # -- Lightning hooks ----------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.splits is None:
            splits = self.build_splits()
            splits["train"], labels = self.long_tail(splits["train"])
            if labels is not None:
                self.train_class_counts = torch.bincount(
                    labels, minlength=self.num_classes
                ).tolist()
            self.splits = splits
            if self.normalize == "channel":
                self.mean, self.std = self.channel_stats(self.splits["train"])
            elif self.normalize == "per_pixel_mean":
                self.mean = self.pixel_mean(self.splits["train"])  # (C, H, W); std stays 1

    def long_tail(self, train: Dataset) -> tuple[Dataset, Tensor | None]:
        """The training split subsampled to the long-tail profile (untouched for ρ = 1), and its
        labels. A class with fewer examples than its profile count keeps them all.

        Every datamodule's training split passes here, in memory or file-backed: the one place
        that sees its labels, after validation (and test) were split off at natural balance.
        """
        labels = dataset_targets(train, decode=False)
        if self.imbalance_ratio == 1.0:
            return train, labels
        if labels is None:
            raise ConfigError(
                f"data.imbalance_ratio={self.imbalance_ratio} needs the training labels, which "
                f"{self.name}'s training split does not keep; use data.imbalance_ratio=1"
            )
        have = torch.bincount(labels, minlength=self.num_classes).tolist()
        profile = long_tail_counts(max(have), self.num_classes, self.imbalance_ratio)
        counts = [min(n, m) for n, m in zip(profile, have, strict=True)]
        keep = long_tail_subset(labels, counts, self.seed)
        return take(train, keep), labels[keep]

    def build_splits(self) -> dict[str, Dataset]:
        """Held-in-memory splits: classes selected, images converted, train/val/test split."""
        classes = list(self.source_classes())
        self.check_num_classes(len(classes))
        self.class_names = classes[: self.num_classes]
        raw = {split: self.prepare_images(x, y) for split, (x, y) in self.load().items()}
        if "all" in raw:
            x, y = raw.pop("all")
            raw["train"], raw["test"] = self.stratified_split(x, y, self.test_fraction)
        if "val" not in raw:
            raw["train"], raw["val"] = self.stratified_split(*raw["train"], self.val_fraction)
        return {split: InMemory(x, y) for split, (x, y) in raw.items()}

    def on_after_batch_transfer(
        self, batch: tuple[Tensor, Tensor], dataloader_idx: int
    ) -> tuple[Tensor, Tensor]:
        x, y = batch
        trainer = self.trainer
        if trainer is not None and trainer.training:  # validation and test are never augmented
            x, y = self.augmentation(x, y)
        return self.standardize(x), y

    def state_dict(self) -> dict[str, Any]:
        """Saved in Lightning checkpoints: the augmentation's batch counter, so a resumed run
        continues the sequence of augmentation draws instead of repeating it."""
        return {"augmentation": self.augmentation.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.augmentation.load_state_dict(state_dict["augmentation"])

    # -- helpers ------------------------------------------------------------------------------
    def standardize(self, x: Tensor) -> Tensor:
        """(x − mean) / std per channel, or x − the mean image, with train-split statistics."""
        if self.normalize == "none":
            return x
        if self.normalize == "per_pixel_mean":
            return x - self.mean.to(x.device, x.dtype)
        mean = self.mean.to(x.device, x.dtype).view(1, -1, 1, 1)
        std = self.std.to(x.device, x.dtype).view(1, -1, 1, 1)
        return (x - mean) / std

    def unstandardize(self, x: Tensor) -> Tensor:
        """The inverse of :meth:`standardize`: pixels x · std + mean, or x + the mean image."""
        if self.normalize == "none":
            return x
        if self.normalize == "per_pixel_mean":
            return x + self.mean.to(x.device, x.dtype)
        mean = self.mean.to(x.device, x.dtype).view(1, -1, 1, 1)
        std = self.std.to(x.device, x.dtype).view(1, -1, 1, 1)
        return x * std + mean

    def check_num_classes(self, available: int) -> None:
        if self.num_classes > available:
            raise ConfigError(
                f"data.num_classes={self.num_classes} but {self.name} has {available} classes; "
                f"use at most {available}"
            )

    def prepare_images(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Keep the first ``num_classes`` classes; float [0, 1]; match channels and size."""
        y = torch.as_tensor(y, dtype=torch.long)
        keep = y < self.num_classes
        x, y = torch.as_tensor(x)[keep], y[keep]
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        x = match_channels(x, self.in_channels)
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(
                x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True
            ).clamp_(0.0, 1.0)
        return x.contiguous(), y

    def stratified_split(
        self, x: Tensor, y: Tensor, fraction: float
    ) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
        """Split off ``fraction`` of the samples with class proportions kept, seeded."""
        index = torch.arange(len(y)).numpy()
        try:
            keep, held = train_test_split(
                index, test_size=fraction, stratify=y.numpy(), random_state=self.seed
            )
        except ValueError as err:  # too few samples of some class for a stratified split
            raise ConfigError(f"cannot split {self.name} with fraction {fraction}: {err}") from None
        keep, held = torch.as_tensor(keep), torch.as_tensor(held)
        return (x[keep], y[keep]), (x[held], y[held])

    @staticmethod
    def channel_stats(dataset: Dataset, max_decoded: int = 1000) -> tuple[Tensor, Tensor]:
        """Per-channel mean and std of a split (of ``max_decoded`` evenly spaced file images)."""
        if isinstance(dataset, TensorDataset):
            x = dataset.tensors[0]
        else:  # file-backed: decoding every image just for statistics would dominate start-up
            step = max(1, math.ceil(len(dataset) / max_decoded))
            x = torch.stack([dataset[i][0] for i in range(0, len(dataset), step)])
        return x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3)).clamp_min(1e-6)

    @staticmethod
    def pixel_mean(dataset: Dataset, max_decoded: int = 1000) -> Tensor:
        """The (C, H, W) mean image of a split (of ``max_decoded`` evenly spaced file images)."""
        if isinstance(dataset, TensorDataset):
            return dataset.tensors[0].mean(dim=0)
        step = max(1, math.ceil(len(dataset) / max_decoded))
        return torch.stack([dataset[i][0] for i in range(0, len(dataset), step)]).mean(dim=0)

    # -- what the core asks (see DataModule) -----------------------------------------------
    def example_input(self) -> Tensor:
        """Two images of the size and channels the networks receive (after augmentation)."""
        return torch.zeros(2, self.in_channels, self.image_size, self.image_size)

    def run_params(self) -> dict[str, Any]:
        """The training split's class counts as trained on (see ``imbalance_ratio``)."""
        counts = self.train_class_counts
        return {} if counts is None else {"data.train_class_counts": counts}

    def run_artifacts(self) -> dict[str, str]:
        return {"config/augmentation.txt": "\n".join(self.augmentation.describe()) + "\n"}


def long_tail_counts(n_max: int, num_classes: int, ratio: float) -> list[int]:
    """n_c = max(1, ⌊n_max · ρ^(−c/(C−1))⌋) for c = 0..C−1: class 0 keeps n_max, class C−1
    n_max / ρ (Cui et al. 2019's CIFAR-10-LT profile; n_max = 5000, ρ = 100 gives 12,406)."""
    return [
        max(1, math.floor(n_max * ratio ** (-c / (num_classes - 1)))) for c in range(num_classes)
    ]


def long_tail_subset(labels: Tensor, counts: Sequence[int], seed: int) -> Tensor:
    """Indices of ``counts[c]`` examples of each class c, drawn uniformly without replacement
    from a generator seeded with ``seed``, in their original order."""
    generator = torch.Generator().manual_seed(seed)
    keep = []
    for c, n in enumerate(counts):
        members = torch.nonzero(labels == c).flatten()
        keep.append(members[torch.randperm(len(members), generator=generator)[:n]])
    return torch.cat(keep).sort().values


def dataset_targets(dataset: Dataset, decode: bool = True) -> Tensor | None:
    """All class labels of ``dataset``: from memory (TensorDataset), from the ``targets`` a
    dataset keeps (torchvision's ImageFolder, MNIST, CIFAR; through index subsets), else by
    reading every example — or ``None`` with ``decode=False``, where that would cost decoding."""
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[1]
    if isinstance(dataset, Subset):
        labels = dataset_targets(dataset.dataset, decode)
        return None if labels is None else labels[torch.as_tensor(dataset.indices)]
    if hasattr(dataset, "targets"):
        return torch.as_tensor(dataset.targets)
    if not decode:
        return None
    return torch.as_tensor([int(dataset[i][1]) for i in range(len(dataset))])


def match_channels(x: Tensor, channels: int) -> Tensor:
    """Convert (N, C, H, W) images between grayscale and RGB (ITU-R 601 luma for RGB -> gray)."""
    have = x.shape[1]
    if have == channels:
        return x
    if have == 1 and channels == 3:
        return x.expand(-1, 3, -1, -1)
    if have == 3 and channels == 1:
        weights = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype).view(1, 3, 1, 1)
        return (x * weights).sum(dim=1, keepdim=True)
    raise ConfigError(f"cannot convert {have}-channel images to {channels} channels")
