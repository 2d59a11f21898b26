"""Image classification: cross-entropy-style loss, top-1 / top-5 accuracy, best val accuracy.

Validation and test also score macro F1, macro recall and per-class recall: on class-imbalanced
data accuracy is dominated by the common classes, while macro recall, the balanced accuracy of
Brodersen et al. 2010 ("The balanced accuracy and its posterior distribution"), weighs every
class equally and the per-class recalls show what the rare classes lost.

With a clean training loader in validation (``data.train_eval=true``) the same network, in eval
mode (dropout off, batch norm on its running statistics) and on unaugmented training examples,
is scored as ``train_eval/acc`` and ``train_eval/loss``: the training side of a train-validation
gap, which ``train/acc`` (dropout and augmentation on, weights changing within the epoch) is not.

Test scores the tested weights on every test loader: the test set (``test/…``), and the
validation set and clean training set the data module adds (``tested_val/…``,
``tested_train_eval/…``), so a final validation/test pair or a train-validation gap comes from one
set of weights, whichever checkpoint was tested.
"""

from __future__ import annotations

import warnings
from functools import partial
from typing import Any, ClassVar, Literal

import torch
from pytorch_lightning.utilities.warnings import PossibleUserWarning
from torch import Tensor, nn
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score, MulticlassRecall
from torchmetrics.wrappers import ClasswiseWrapper

from ablab.data.base import ImageDataModule
from ablab.data.module import TRAIN_EVAL
from ablab.errors import ConfigError
from ablab.tasks.base import OptimizerFactory, StagedTask, bind_class_counts, tested_stage

# Epoch values are logged as values torchmetrics has already reduced over every DDP rank
# (compute() syncs the states), so Lightning's advice to reduce them again does not apply.
warnings.filterwarnings(
    "ignore",
    message=r"It is recommended to use `self\.log\('(tested_)?(train|train_eval|val|test)/"
    r"(loss|acc|acc_top5|f1_macro|recall_macro|recall/\d+)'",
    category=PossibleUserWarning,
)

#: The test stage's namespace for each validation loader (``tested_val``, ``tested_train_eval``).
TESTED_VAL, TESTED_TRAIN_EVAL = tested_stage("val"), tested_stage(TRAIN_EVAL)
#: Stages that also score per class (F1, macro and per-class recall): the held-out ones.
CLASS_SCORED = ("val", "test", TESTED_VAL)


class ClassifierModule(StagedTask):
    """logits = net(x); loss = loss_fn(logits, y); metrics logged as ``<stage>/<name>``.

    Validation and test also log ``f1_macro`` (mean over classes of 2·P·R / (P + R)),
    ``recall_macro`` (mean per-class recall, i.e. balanced accuracy) and ``recall/<class>``
    (TP_c / (TP_c + FN_c)), and ``acc_top5`` with more than five classes; training skips them
    to keep steps cheap. A validation loader named ``train_eval`` (the clean training set) is
    scored like validation without the per-class scores: ``train_eval/loss`` (loss_fn alone, no
    auxiliary or l1 term, as ``val/loss``), ``train_eval/acc`` and ``acc_top5``. Test scores its
    loaders ``test``, ``val`` and ``train_eval`` as ``test/…``, ``tested_val/…`` (what ``val/…``
    logs) and ``tested_train_eval/…`` (what ``train_eval/…`` logs).

    The network is built elsewhere and injected (see :class:`~ablab.tasks.base.Task`); ``loss``
    comes from the ``loss`` group, and a loss that needs the training set's class counts (a
    partial taking ``class_counts``) gets them in :meth:`check`. The monitored metric is
    ``val/acc`` (max) unless ``monitor``/``mode`` say otherwise.

    Weight decay (the optimizer's ``weight_decay``) applies to conv/linear weights only, not to
    biases or norm parameters, unless ``decay_norm_and_bias``; ``l1`` adds l1 · Σ|w| over those
    weights to the training loss. Training targets may be soft (N, C) probabilities (mixup,
    cutmix): metrics then score against their arg-max.

    Nets with auxiliary classifiers (GoogLeNet) expose ``forward_with_aux(x) -> (logits, [aux])``
    and ``aux_weight``; in training the loss is then loss(logits) + aux_weight · Σ loss(aux_i)
    (Szegedy et al. 2015, weight 0.3), and ``train/loss`` is that total.
    """

    components: ClassVar[dict[str, str]] = {"loss": "loss"}

    def __init__(
        self,
        net: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: dict[str, Any] | None,
        loss: nn.Module,
        num_classes: int,
        decay_norm_and_bias: bool = False,
        l1: float = 0.0,
        monitor: str = "val/acc",
        mode: Literal["min", "max"] = "max",
    ) -> None:
        super().__init__(optimizer, scheduler, monitor=monitor, mode=mode)
        # Modules live in the state dict and factories are code, so only plain values go into the
        # checkpoint's hyper-parameters; ablab logs the full resolved config to MLflow.
        self.save_hyperparameters(ignore=["net", "loss", "optimizer", "scheduler"], logger=False)
        self.net = net
        self.loss_fn = loss
        self.num_classes = num_classes
        if l1 < 0:
            raise ConfigError(f"task.l1={l1} must be >= 0")
        self.decay_norm_and_bias, self.l1 = decay_norm_and_bias, l1
        # Training checks no arguments per step (the loss has checked the targets already).
        # train_eval: the clean training set, scored in validation (ablab.data.module.TRAIN_EVAL).
        stages = [("train", False)]
        stages += [(s, True) for s in ("val", "test", TRAIN_EVAL, TESTED_VAL, TESTED_TRAIN_EVAL)]
        for stage, validate in stages:
            accuracy = partial(MulticlassAccuracy, num_classes, average="micro")
            metrics = {"acc": accuracy(validate_args=validate)}
            if num_classes > 5 and stage != "train":  # top-5 of training batches: unused, 3%
                metrics["acc_top5"] = accuracy(top_k=5, validate_args=validate)
            setattr(self, f"{stage}_metrics", MetricCollection(metrics, prefix=f"{stage}/"))
            # The stage's mean loss, weighted by batch size (over every DDP rank at compute()).
            setattr(self, f"{stage}_loss", MeanMetric())
        per_class = MetricCollection(
            {
                "f1_macro": MulticlassF1Score(num_classes, average="macro"),
                "recall_macro": MulticlassRecall(num_classes, average="macro"),
                # recall/0, recall/1, ...: one value per class index
                "recall": ClasswiseWrapper(
                    MulticlassRecall(num_classes, average=None), prefix="recall/"
                ),
            },
            # The macro scores share their per-class TP/FP/FN counts. The wrapper keeps its own:
            # in a shared group only the group's first metric is updated, and the wrapped metric,
            # never updated itself after a reset, would warn at every epoch's compute.
            compute_groups=[["f1_macro", "recall_macro"], ["recall"]],
        )
        for stage in CLASS_SCORED:
            setattr(self, f"{stage}_class_metrics", per_class.clone(prefix=f"{stage}/"))

    def check(self, datamodule: ImageDataModule) -> None:
        """Give a class-count loss the training split's counts (as trained on, after
        ``data.imbalance_ratio``), then evaluate the loss once on dummy logits (and on
        class-probability targets when mixup/CutMix hand it those), so a bad loss fails here."""
        corruption = getattr(datamodule, "corruption", None)
        if corruption is not None and corruption.active:  # the classifier would ignore it
            raise ConfigError(
                f"data.noise={corruption.kind} is read by task=reconstruction only; "
                "task=classifier trains and scores clean images: set data.noise=null"
            )
        self.loss_fn = bind_class_counts(self.loss_fn, datamodule, self.num_classes)
        c = self.num_classes
        try:
            self.loss_fn(torch.zeros(2, c), torch.zeros(2, dtype=torch.long))
            if datamodule.augmentation.mix is not None:
                self.loss_fn(torch.zeros(2, c), torch.full((2, c), 1.0 / c))
        except (ValueError, RuntimeError) as err:
            raise ConfigError(f"loss rejected the config: {err}") from err

    def validation_metric_names(self) -> set[str]:
        names = {"val/loss", *self.val_metrics.keys(), "val/f1_macro", "val/recall_macro"}
        return names | {f"val/recall/{c}" for c in range(self.num_classes)}

    def training_metric_names(self) -> set[str]:
        names = {"train/loss", *self.train_metrics.keys()}
        if self.l1 > 0:
            names.add("train/l1_penalty")
        return names | ({"train/loss_aux"} if hasattr(self.net, "forward_with_aux") else set())

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def _shared_step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        x, y = batch
        if stage == "train" and hasattr(self.net, "forward_with_aux"):
            logits, aux = self.net.forward_with_aux(x)
            loss = self.loss_fn(logits, y)
            if aux:
                aux_loss = sum(self.loss_fn(a, y) for a in aux)
                self.log(
                    "train/loss_aux",
                    aux_loss,
                    on_step=False,
                    on_epoch=True,
                    batch_size=len(y),
                    sync_dist=True,
                )
                loss = loss + self.net.aux_weight * aux_loss
        else:
            logits = self(x)
            loss = self.loss_fn(logits, y)
        if stage == "train" and self.l1 > 0:
            penalty = sum(p.abs().sum() for p in self.decayed_parameters())
            self.log(
                "train/l1_penalty",
                penalty,
                on_step=False,
                on_epoch=True,
                batch_size=len(y),
                sync_dist=True,
            )
            loss = loss + self.l1 * penalty
        metrics: MetricCollection = getattr(self, f"{stage}_metrics")
        target = y.argmax(1) if y.dim() == 2 else y
        metrics.update(logits.detach(), target)
        getattr(self, f"{stage}_loss").update(loss.detach(), len(y))
        if stage in CLASS_SCORED:
            getattr(self, f"{stage}_class_metrics").update(logits.detach(), target)
        return loss

    def epoch_metrics(self, stage: str) -> list[MetricCollection]:
        """Accuracy (on the progress bar), and per-class scores on the held-out stages."""
        collections = [getattr(self, f"{stage}_metrics")]
        if stage in CLASS_SCORED:
            collections.append(getattr(self, f"{stage}_class_metrics"))
        return collections

    def decayed_parameters(self) -> list[nn.Parameter]:
        """Parameters under weight decay and l1: weights of ≥ 2 dims, i.e. not biases or norms."""
        return [p for p in self.net.parameters() if p.requires_grad and p.dim() > 1]

    def parameter_groups(self) -> list[dict[str, Any]]:
        """[decayed weights, everything else with weight_decay 0], or one group when norms and
        biases are decayed too (the optimizer's own ``weight_decay`` then applies to all)."""
        if self.decay_norm_and_bias:
            return [{"params": [p for p in self.parameters() if p.requires_grad], "name": "all"}]
        decayed = {id(p) for p in self.decayed_parameters()}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in decayed]
        # Named groups: the learning-rate monitor logs lr-<Optimizer>/weights etc.
        groups = [
            {"params": self.decayed_parameters(), "name": "weights"},
            {"params": rest, "weight_decay": 0.0, "name": "norm_and_bias"},
        ]
        return [g for g in groups if g["params"]]
