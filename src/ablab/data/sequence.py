"""Sequence data for many-to-one tasks: one target per sequence, a class or a real value.

A sequence data module yields ``(x, y)`` with ``x`` float (N, T, F) — batch first, ``T`` =
``length`` time steps of ``input_size`` features — and ``y`` class indices (``target: class``) or
float values (``target: value``). Besides the splits and loaders every data module shares
(:class:`~ablab.data.module.SplitDataModule`) it declares what the task and the network need to
know: ``input_size`` (F), ``num_outputs`` (the class count, or 1 for a value) and ``target``. The
config states them (the model reads ``${data.input_size}``); the module checks them against what
it produces, so a wrong one is one line before anything is built.

- :class:`AddingProblem` (Hochreiter & Schmidhuber 1997, experiment 4; in the form of Le et al.
  2015, "A Simple Way to Initialize Recurrent Networks of Rectified Linear Units"): the sum of the
  two values marked in a sequence of length T, one mark in each half. The dependency spans up to T
  steps; predicting the mean (1) scores MSE = Var(u₁ + u₂) = 2/12 ≈ 0.167, the bar to beat.
- :class:`RecallProblem` (``data=copy``): the many-to-one form of the copy-memory task (Hochreiter
  & Schmidhuber 1997; Arjovsky et al. 2016): one of K symbols is shown at t = 0, T − 2 steps of
  random distractor symbols follow (blanks with ``distractors=false``), and a query flag at
  t = T − 1 asks for the first one. Chance is 1/K. Without distractors there are only K distinct
  sequences, so validation and test repeat the training set: they measure memorisation only.
- :class:`ImageRows` (``data=digits_rows``, ``data=mnist_rows``): any image data module read row by
  row (Le et al. 2015's pixel MNIST, one row per step): T = image height, F = channels × width.

The procedural problems draw the test split first, then validation, then training, from one
generator seeded with ``seed``: the held-out sets do not change with ``n_train``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ablab.data.base import ImageDataModule
from ablab.data.module import DataModule, InMemory, SplitDataModule
from ablab.errors import ConfigError

TARGETS = ("class", "value")
SPLIT_ORDER = ("test", "val", "train")


class SequenceDataModule(SplitDataModule):
    """Seeded procedural sequences of ``length`` steps: ``n_train`` / ``n_val`` / ``n_test``
    examples drawn by :meth:`generate`; ``input_size``, ``num_outputs`` and ``target`` are what
    the subclass produces (checked)."""

    #: Human-readable problem name for error messages.
    name: str = "sequence"
    #: class or value targets
    target_kind: ClassVar[str]

    def __init__(
        self,
        *,
        length: int,
        input_size: int,
        num_outputs: int,
        target: Literal["class", "value"],
        n_train: int = 5000,
        n_val: int = 1000,
        n_test: int = 1000,
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        if length < 2:
            raise ConfigError(f"data.length must be at least 2 time steps, got {length}")
        for key, n in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
            if n < 1:
                raise ConfigError(f"data.{key} must be a positive number of sequences, got {n}")
        self.length = length
        self.sizes = {"train": n_train, "val": n_val, "test": n_test}
        self.input_size, self.num_outputs, self.target = input_size, num_outputs, target
        declared = {"input_size": input_size, "num_outputs": num_outputs, "target": target}
        check_declared(declared, self.shape(), f"the {self.name} problem has")

    def shape(self) -> dict[str, Any]:
        """``input_size``, ``num_outputs`` and ``target`` of what :meth:`generate` yields."""
        raise NotImplementedError

    def generate(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``n`` sequences (n, T, F) and their targets, drawn from ``generator``."""
        raise NotImplementedError

    def build_splits(self) -> dict[str, Dataset]:
        generator = torch.Generator().manual_seed(self.seed)
        drawn = {split: self.generate(self.sizes[split], generator) for split in SPLIT_ORDER}
        return {split: InMemory(x, y) for split, (x, y) in drawn.items()}

    def example_input(self) -> Tensor:
        return torch.zeros(2, self.length, self.input_size)

    def run_params(self) -> dict[str, Any]:
        """What the held-out data measures: for value targets, the test MSE of predicting the
        training targets' mean (the bar a model must beat)."""
        self.setup()
        if self.target != "value":
            return {}
        mean = self.splits["train"].tensors[1].mean()
        bar = (self.splits["test"].tensors[1] - mean).pow(2).mean().item()
        return {"data.mean_predictor_mse": round(bar, 6)}


class AddingProblem(SequenceDataModule):
    """x_t = (u_t, m_t): u_t ~ U(0, 1) and m_t = 1 at two steps, one drawn uniformly from each
    half of the sequence, 0 elsewhere; y = Σ_t u_t m_t (Le et al. 2015's form of Hochreiter &
    Schmidhuber 1997's adding problem). Var(y) = 1/6: predicting the mean scores MSE ≈ 0.167."""

    name = "adding"

    def __init__(self, *, length: int = 50, input_size: int = 2, num_outputs: int = 1,
                 target: Literal["class", "value"] = "value", **kw: Any) -> None:  # fmt: skip
        super().__init__(length=length, input_size=input_size, num_outputs=num_outputs,
                         target=target, **kw)  # fmt: skip

    def shape(self) -> dict[str, Any]:
        return {"input_size": 2, "num_outputs": 1, "target": "value"}

    def generate(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        t, half = self.length, self.length // 2
        values = torch.rand(n, t, generator=generator)
        first = torch.randint(0, half, (n,), generator=generator)
        second = torch.randint(half, t, (n,), generator=generator)
        marks = torch.zeros(n, t)
        rows = torch.arange(n)
        marks[rows, first] = 1.0
        marks[rows, second] = 1.0
        return torch.stack([values, marks], dim=2), (values * marks).sum(dim=1)


class RecallProblem(SequenceDataModule):
    """x_0 = one-hot(s) for a symbol s ~ U{0..K−1}; x_1 … x_{T−2} one-hot random distractor
    symbols (zeros with ``distractors=false``); x_{T−1} = the query flag (feature K); y = s. The
    network must carry s across T − 1 steps of input; chance accuracy is 1/K."""

    name = "copy"

    def __init__(self, *, num_classes: int = 8, length: int = 50, input_size: int = 9,
                 num_outputs: int = 8, target: Literal["class", "value"] = "class",
                 distractors: bool = True, **kw: Any) -> None:  # fmt: skip
        if num_classes < 2:
            raise ConfigError(f"data.num_classes must be at least 2 symbols, got {num_classes}")
        self.num_classes, self.distractors = num_classes, distractors
        super().__init__(length=length, input_size=input_size, num_outputs=num_outputs,
                         target=target, **kw)  # fmt: skip

    def shape(self) -> dict[str, Any]:
        k = self.num_classes
        return {"input_size": k + 1, "num_outputs": k, "target": "class"}

    def generate(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        k = self.num_classes
        symbols = torch.randint(0, k, (n,), generator=generator)
        x = torch.zeros(n, self.length, k + 1)
        x[torch.arange(n), 0, symbols] = 1.0
        if self.distractors:  # every middle step shows a symbol too: only position tells s
            middle = torch.randint(0, k, (n, self.length - 2), generator=generator)
            x[:, 1:-1, :k] = torch.nn.functional.one_hot(middle, k).float()
        x[:, -1, k] = 1.0
        return x, symbols


class ImageRows(DataModule):
    """An image data module whose images are read row by row: (N, C, H, W) → (N, H, C·W), after
    the image module's own transfer (augmentation in training, standardisation). Splits, seeds,
    loaders, ``train_eval`` and the test stage's loaders are the image module's.

    ``images`` is the image data module's constructor (a partial: ``_partial_: true``), given the
    ``augmentation`` the core builds for it and ``train_eval`` / ``train_eval_limit`` (the clean
    training loader, as for any data: ``data.train_eval=true``). ``in_channels``, ``image_size``, ``input_size``
    (= in_channels × image_size), ``num_outputs`` (the class count) and ``target`` are declared in
    the config, for the model and the augmentation group, and checked against the images.
    """

    components: ClassVar[dict[str, str]] = {"augmentation": "augmentation"}

    def __init__(
        self,
        *,
        images: Callable[..., ImageDataModule],
        in_channels: int,
        image_size: int,
        input_size: int,
        num_outputs: int,
        target: Literal["class", "value"] = "class",
        train_eval: bool = False,
        train_eval_limit: int | None = None,
        augmentation: Any = None,
    ) -> None:
        super().__init__()
        self.images = images(
            augmentation=augmentation, train_eval=train_eval, train_eval_limit=train_eval_limit
        )
        if self.images.corruption.active:  # only task=reconstruction reads it: refuse, not ignore
            raise ConfigError(
                f"data.images.noise={self.images.corruption.kind}: rows are read clean (the noise "
                "is task=reconstruction's); set data.images.noise=null"
            )
        width = self.images.in_channels * self.images.image_size
        declared = {
            "in_channels": in_channels,
            "image_size": image_size,
            "input_size": input_size,
            "num_outputs": num_outputs,
            "target": target,
        }
        produced = {
            "in_channels": self.images.in_channels,
            "image_size": self.images.image_size,
            "input_size": width,
            "num_outputs": self.images.num_classes,
            "target": "class",
        }
        check_declared(declared, produced, f"rows of {self.images.name} images have")
        self.input_size, self.num_outputs, self.target = input_size, num_outputs, target
        self.in_channels, self.image_size = in_channels, image_size
        self.length, self.num_classes = image_size, self.images.num_classes

    @property
    def batch_size(self) -> int:  # the image module's: it loads the batches
        return self.images.batch_size

    @property
    def augmentation(self) -> Any:
        return self.images.augmentation

    @property
    def train_class_counts(self) -> list[int] | None:
        return self.images.train_class_counts

    @property
    def splits(self) -> dict[str, Dataset] | None:
        return self.images.splits

    def _bound(self) -> ImageDataModule:
        """The image module, attached to this module's trainer (rank, world size, stage)."""
        self.images.trainer = self.trainer
        return self.images

    def prepare_data(self) -> None:
        self.images.prepare_data()

    def setup(self, stage: str | None = None) -> None:
        self._bound().setup(stage)

    def train_dataloader(self) -> DataLoader:
        return self._bound().train_dataloader()

    def val_dataloader(self) -> DataLoader | dict[str, DataLoader]:
        return self._bound().val_dataloader()

    def test_dataloader(self) -> dict[str, DataLoader]:
        return self._bound().test_dataloader()

    def on_after_batch_transfer(self, batch: tuple[Tensor, Tensor], dataloader_idx: int) -> Any:
        x, y = self._bound().on_after_batch_transfer(batch, dataloader_idx)
        return as_rows(x), y

    def state_dict(self) -> dict[str, Any]:
        return self.images.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.images.load_state_dict(state_dict)

    def example_input(self) -> Tensor:
        return as_rows(self.images.example_input())

    def run_params(self) -> dict[str, Any]:
        return self.images.run_params()

    def run_artifacts(self) -> dict[str, str]:
        return self.images.run_artifacts()


def check_declared(declared: dict[str, Any], produced: dict[str, Any], source: str) -> None:
    """The shape a config declares (``data.input_size``...) against what the data produces: the
    first mismatch is one line naming the key and the value to set."""
    for key, value in declared.items():
        if value != produced[key]:
            raise ConfigError(
                f"data.{key}={value} but {source} {key} {produced[key]}; "
                f"set data.{key}={produced[key]}"
            )


def as_rows(x: Tensor) -> Tensor:
    """(N, C, H, W) images as sequences of their rows: (N, H, C·W), row t = every channel's row t."""
    n, c, h, w = x.shape
    return x.permute(0, 2, 1, 3).reshape(n, h, c * w)
