"""Many-to-one sequence tasks: one prediction per sequence, a class or a real value.

The network (a recurrent net, or any module taking (N, T, F)) is injected, the loss comes from the
``loss`` group, and the data says what a target is (``data.target``): class indices, scored by
accuracy, or values, scored by mean squared and mean absolute error and R² = 1 − Σ(ŷ − y)² /
Σ(y − ȳ)² (torchmetrics): R² > 0 is a model that beats predicting the stage's mean target, the
bar of a regression problem (the adding problem's MSE ≈ 0.167). Every stage is
logged as ``<stage>/<metric>`` with its batch-size-weighted ``<stage>/loss``, as for the
classifier: ``train``, ``val``, ``test``, and with ``data.train_eval`` the clean training set in
eval mode (``train_eval/…``) and the tested weights on validation (``tested_val/…``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import torch
from pytorch_lightning.utilities.warnings import PossibleUserWarning
from torch import Tensor, nn
from torchmetrics import (
    MeanAbsoluteError,
    MeanMetric,
    MeanSquaredError,
    Metric,
    MetricCollection,
    R2Score,
)
from torchmetrics.classification import MulticlassAccuracy

from ablab.data.module import TRAIN_EVAL
from ablab.errors import ConfigError, unknown_choice
from ablab.tasks.base import OptimizerFactory, StagedTask, bind_class_counts, tested_stage

# Epoch values are computed by torchmetrics over every DDP rank (see the classifier).
warnings.filterwarnings(
    "ignore",
    message=r"It is recommended to use `self\.log\('(tested_)?(train|train_eval|val|test)/"
    r"(loss|acc|mse|mae|r2)'",
    category=PossibleUserWarning,
)

#: target kind -> the metrics each stage scores, given the number of outputs
METRICS: dict[str, Callable[[int], dict[str, Metric]]] = {
    "class": lambda n: {"acc": MulticlassAccuracy(n, average="micro")},
    "value": lambda n: {"mse": MeanSquaredError(), "mae": MeanAbsoluteError(), "r2": R2Score()},
}
#: Losses that fit a value; a class target takes any other (cross-entropy, focal...).
VALUE_LOSSES = (nn.MSELoss, nn.L1Loss, nn.SmoothL1Loss, nn.HuberLoss)
STAGES = (
    "train",
    "val",
    "test",
    TRAIN_EVAL,
    tested_stage("val"),
    tested_stage(TRAIN_EVAL),
)


class SequenceModule(StagedTask):
    """ŷ = net(x) for x (N, T, F); loss = loss_fn(ŷ, y); metrics logged as ``<stage>/<name>``.

    Class targets: ŷ are (N, num_outputs) logits and every stage scores ``acc`` (top-1).
    Value targets: ŷ is (N,) for ``num_outputs`` = 1 (the net's (N, 1) squeezed), and every stage
    scores ``mse`` = mean (ŷ − y)², ``mae`` = mean |ŷ − y| and ``r2`` = 1 − Σ(ŷ − y)² / Σ(y − ȳ)²
    over the stage's whole epoch (ȳ its mean target: 0 is the mean predictor's score). The monitored metric follows the
    target (``conf/task/sequence.yaml``: ``val/acc`` max, ``val/mse`` min).
    """

    components: ClassVar[dict[str, str]] = {"loss": "loss"}

    def __init__(
        self,
        net: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: dict[str, Any] | None,
        loss: nn.Module,
        target: Literal["class", "value"] | None,
        num_outputs: int | None,
        monitor: str = "val/acc",
        mode: Literal["min", "max"] = "max",
    ) -> None:
        super().__init__(optimizer, scheduler, monitor=monitor, mode=mode)
        self.save_hyperparameters(ignore=["net", "loss", "optimizer", "scheduler"], logger=False)
        if target is None or num_outputs is None:  # the data declares no sequence targets
            raise ConfigError(
                "task=sequence needs sequence data (data=adding|copy|digits_rows|mnist_rows), "
                "which declares data.target and data.num_outputs"
            )
        if target not in METRICS:
            raise unknown_choice("task.target", target, METRICS)
        if num_outputs < 1 or (target == "class" and num_outputs < 2):
            raise ConfigError(
                f"task.num_outputs={num_outputs}: a class target needs at least 2 outputs, a "
                "value target at least 1"
            )
        self.net, self.loss_fn = net, loss
        self.target, self.num_outputs = target, num_outputs
        for stage in STAGES:
            metrics = MetricCollection(METRICS[target](num_outputs), prefix=f"{stage}/")
            setattr(self, f"{stage}_metrics", metrics)
            setattr(self, f"{stage}_loss", MeanMetric())

    def check(self, datamodule: Any) -> None:
        """The data must be sequences with this target kind, and the loss must fit it: a value
        target takes a regression loss (``loss=mse``), a class target any other."""
        kind = getattr(datamodule, "target", None)
        if kind is None:
            raise ConfigError(
                f"task=sequence needs sequence data (data=adding|copy|digits_rows|mnist_rows); "
                f"{type(datamodule).__name__} yields no sequence targets"
            )
        if kind != self.target:
            raise ConfigError(
                f"task.target={self.target} but the data's targets are of kind {kind}"
            )
        if kind == "class":  # a class-count loss (balanced_cross_entropy) gets the counts
            self.loss_fn = bind_class_counts(self.loss_fn, datamodule, self.num_outputs)
        fits_values = isinstance(self.loss_fn, VALUE_LOSSES)
        if fits_values != (kind == "value"):
            wanted = "a regression loss: loss=mse" if kind == "value" else "loss=cross_entropy"
            raise ConfigError(
                f"loss {type(self.loss_fn).__name__} does not fit the data's {kind} targets; "
                f"use {wanted}"
            )
        out = torch.zeros(2, self.num_outputs) if kind == "class" else torch.zeros(2)
        target = torch.zeros(2, dtype=torch.long) if kind == "class" else torch.zeros(2)
        try:  # once on dummy outputs, so a loss that cannot take them fails before the run
            self.loss_fn(out, target)
        except (ValueError, RuntimeError, TypeError) as err:
            raise ConfigError(f"loss rejected the config: {err}") from err

    def validation_metric_names(self) -> set[str]:
        return {"val/loss", *self.val_metrics.keys()}

    def training_metric_names(self) -> set[str]:
        return {"train/loss", *self.train_metrics.keys()}

    def forward(self, x: Tensor) -> Tensor:
        out = self.net(x)
        # A single value per sequence: (N, 1) -> (N,), the targets' shape.
        return out.squeeze(-1) if self.target == "value" and self.num_outputs == 1 else out

    def _shared_step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        x, y = batch
        out = self(x)
        loss = self.loss_fn(out, y)
        # mixup/CutMix on image rows hand over class probabilities: metrics score the arg-max
        target = y.argmax(1) if self.target == "class" and y.dim() == 2 else y
        getattr(self, f"{stage}_metrics").update(out.detach(), target)
        getattr(self, f"{stage}_loss").update(loss.detach(), len(y))
        return loss
