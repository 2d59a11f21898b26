"""Fit y = sin(x) + ε, x ~ U(−π, π), ε ~ N(0, noise²), with an MLP; scored by MSE and MAE."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics import MeanAbsoluteError, MeanSquaredError, MetricCollection

from ablab.data.module import DataModule
from ablab.tasks.base import OptimizerFactory, Task


class SineDataModule(DataModule):
    """``n`` seeded samples of (x, sin x + ε), split 60/20/20 into train/val/test."""

    def __init__(self, n: int = 512, noise: float = 0.05, batch_size: int = 64, seed: int = 0):
        super().__init__()
        self.n, self.noise, self.batch_size, self.seed = n, noise, batch_size, seed
        self.splits: dict[str, TensorDataset] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        g = torch.Generator().manual_seed(self.seed)
        x = (torch.rand(self.n, 1, generator=g) * 2 - 1) * math.pi
        y = torch.sin(x) + self.noise * torch.randn(self.n, 1, generator=g)
        cut = [int(self.n * 0.6), int(self.n * 0.8)]
        for name, part in zip(
            ("train", "val", "test"), torch.tensor_split(torch.arange(self.n), cut), strict=True
        ):
            self.splits[name] = TensorDataset(x[part], y[part])

    def example_input(self) -> Tensor:
        return self.splits["train"].tensors[0][:2]

    def _loader(self, split: str, shuffle: bool = False) -> DataLoader:
        world = self.trainer.world_size if self.trainer is not None else 1
        g = torch.Generator().manual_seed(self.seed)
        return DataLoader(  # keywords: Lightning re-creates it with a DistributedSampler
            self.splits[split], batch_size=self.rank_batch_size(world), shuffle=shuffle, generator=g
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")


class MLP(nn.Module):
    """x → [Linear → tanh] per hidden width → Linear."""

    def __init__(
        self, in_features: int = 1, hidden: Sequence[int] = (32, 32), out_features: int = 1
    ):
        super().__init__()
        layers: list[nn.Module] = []
        for width in tuple(hidden):
            layers += [nn.Linear(in_features, width), nn.Tanh()]
            in_features = width
        self.layers = nn.Sequential(*layers, nn.Linear(in_features, out_features))

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class SineRegression(Task):
    """prediction = net(x); loss = MSE(prediction, y); logs ``<stage>/mse`` and ``<stage>/mae``."""

    def __init__(
        self,
        net: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: dict[str, Any] | None,
        monitor: str = "val/mse",
        mode: Literal["min", "max"] = "min",
    ) -> None:
        super().__init__(optimizer, scheduler, monitor=monitor, mode=mode)
        self.net = net
        metrics = MetricCollection({"mse": MeanSquaredError(), "mae": MeanAbsoluteError()})
        self.train_metrics = metrics.clone(prefix="train/")
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")

    def validation_metric_names(self) -> set[str]:
        return {"val/loss", *self.val_metrics.keys()}

    def _step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        x, y = batch
        prediction = self.net(x)
        loss = nn.functional.mse_loss(prediction, y)
        metrics: MetricCollection = getattr(self, f"{stage}_metrics")
        metrics.update(prediction.detach(), y)
        self.log(
            f"{stage}/loss", loss, on_step=False, on_epoch=True, batch_size=len(y), sync_dist=True
        )
        self.log_dict(metrics, on_step=False, on_epoch=True)
        return loss

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "test")
