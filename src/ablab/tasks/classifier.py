"""Image classification: cross-entropy-style loss, top-1 / top-5 accuracy, best val accuracy."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

import pytorch_lightning as pl
from torch import Tensor, nn
from torch.optim import Optimizer
from torchmetrics import MaxMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from ablab.errors import ConfigError

OptimizerFactory = Callable[[Iterable[nn.Parameter]], Optimizer]


class ClassifierModule(pl.LightningModule):
    """logits = net(x); loss = loss_fn(logits, y); metrics logged as ``<stage>/<name>``.

    The network is built elsewhere and injected; ``optimizer`` is a partial taking the parameters,
    ``scheduler`` a Lightning lr-scheduler dict whose ``scheduler`` entry is a partial taking the
    optimizer (or ``None``).

    Weight decay (the optimizer's ``weight_decay``) applies to conv/linear weights only, not to
    biases or norm parameters, unless ``decay_norm_and_bias``; ``l1`` adds l1 · Σ|w| over those
    weights to the training loss. Training targets may be soft (N, C) probabilities (mixup,
    cutmix): metrics then score against their arg-max.

    Nets with auxiliary classifiers (GoogLeNet) expose ``forward_with_aux(x) -> (logits, [aux])``
    and ``aux_weight``; in training the loss is then loss(logits) + aux_weight · Σ loss(aux_i)
    (Szegedy et al. 2015, weight 0.3), and ``train/loss`` is that total.
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: dict[str, Any] | None,
        loss: nn.Module,
        num_classes: int,
        decay_norm_and_bias: bool = False,
        l1: float = 0.0,
    ) -> None:
        super().__init__()
        # Modules live in the state dict and factories are code, so only plain values go into the
        # checkpoint's hyper-parameters; ablab logs the full resolved config to MLflow.
        self.save_hyperparameters(ignore=["net", "loss", "optimizer", "scheduler"], logger=False)
        self.net = net
        self.loss_fn = loss
        self.optimizer_factory = optimizer
        self.scheduler_config = scheduler
        if l1 < 0:
            raise ConfigError(f"task.l1={l1} must be >= 0")
        self.decay_norm_and_bias, self.l1 = decay_norm_and_bias, l1
        metrics = {"acc": MulticlassAccuracy(num_classes, average="micro")}
        if num_classes > 5:
            metrics["acc_top5"] = MulticlassAccuracy(num_classes, top_k=5, average="micro")
        collection = MetricCollection(metrics)
        self.train_metrics = collection.clone(prefix="train/")
        self.val_metrics = collection.clone(prefix="val/")
        self.test_metrics = collection.clone(prefix="test/")
        self.val_acc_best = MaxMetric()

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
        metrics.update(logits.detach(), y.argmax(1) if y.dim() == 2 else y)
        self.log(
            f"{stage}/loss",
            loss,
            on_step=False,
            on_epoch=True,
            prog_bar=True,
            batch_size=len(y),
            sync_dist=True,  # under DDP: the mean over every rank's samples, not rank 0's
        )
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=stage != "train")
        return loss

    def on_train_start(self) -> None:
        # The sanity-check validation must not count as a "best" epoch.
        self.val_acc_best.reset()

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss = self._shared_step(batch, "train")
        self.log("train/loss_step", loss, on_step=True, on_epoch=False, batch_size=len(batch[1]))
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self.val_acc_best(self.val_metrics["acc"].compute())
        self.log("val/acc_best", self.val_acc_best.compute(), prog_bar=True)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "test")

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

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.parameter_groups())
        if not self.scheduler_config:
            return optimizer
        scheduler = dict(self.scheduler_config)
        make = scheduler["scheduler"]
        if isinstance(make, partial) and make.keywords.get("total_steps", 0) is None:
            make = partial(make, total_steps=self._total_steps())  # one-cycle spans the run
        scheduler["scheduler"] = make(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    def _total_steps(self) -> int:
        """Optimizer steps in the whole run; a placeholder when no trainer is attached yet (the
        dry run that validates the config before training)."""
        try:
            return max(1, int(self.trainer.estimated_stepping_batches))
        except RuntimeError:
            return 100
