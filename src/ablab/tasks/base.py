"""What every task tells the core, so that the core asks nothing else of it.

A task is a LightningModule around networks built elsewhere. It declares:

- ``networks``: the constructor arguments that are networks, each built from its own config
  group (``{"net": "model"}`` for most tasks; a GAN would take ``{"generator": "generator",
  "discriminator": "discriminator"}``). The core builds, initialises, traces (params and MACs,
  on :meth:`Task.example_inputs`) and injects each one;
- ``components``: other constructor arguments built from a config group (``{"loss": "loss"}``);
- ``monitor`` and ``mode`` (constructor arguments, so they sit in ``conf/task/<task>.yaml``):
  the validation metric that says which epoch is best. The checkpoint callback, early stopping
  and the value returned to sweepers (``<monitor>_best``) follow it from there (a study's
  quantities still name their metric and mode themselves);
- its own metrics (torchmetrics) and artifacts, logged from its hooks. Validation may run
  several named loaders (a data module's ``val_dataloader`` returning ``{"val": ...,
  "train_eval": ...}``); :meth:`Task.validation_sets` names the one a ``dataloader_idx`` is, and
  the task decides what it scores on each. Test may run several too (an image data module's
  ``test_dataloader`` returns ``{"test": ..., "val": ..., "train_eval": ...}``, so that the
  tested weights are scored on validation as well): :meth:`Task.test_sets` names them, and
  :func:`tested_stage` is the namespace of each one's metrics (``test``, ``tested_val``...).

Everything a task needs from the data it checks in :meth:`Task.check`, which the core calls
before any MLflow run exists, so a mismatch is one line and no run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import Any, ClassVar, Literal

import pytorch_lightning as pl
import torch
from torch import nn
from torch.optim import Optimizer

from ablab.data.base import dataset_targets
from ablab.data.module import TRAIN_EVAL
from ablab.errors import ConfigError

OptimizerFactory = Callable[[Iterable[nn.Parameter]], Optimizer]
MODES = ("min", "max")
#: Namespace prefix of a non-test loader scored in the test stage: ``tested_val/acc`` is the
#: tested weights' accuracy on the validation set, beside their ``test/acc``.
TESTED = "tested_"


def bind_class_counts(loss: Any, datamodule: Any, num_classes: int) -> Any:
    """A loss built from the training split's class counts (a partial taking ``class_counts``:
    ``balanced_cross_entropy``, ``balanced_focal``) given them, as trained on (after
    ``data.imbalance_ratio``); any other loss as it is."""
    if not isinstance(loss, partial):
        return loss
    counts = getattr(datamodule, "train_class_counts", None)
    if counts is None:  # labels that cost decoding: read them once
        targets = dataset_targets(datamodule.splits["train"])
        counts = torch.bincount(targets, minlength=num_classes).tolist()
    return loss(class_counts=torch.as_tensor(counts))


def tested_stage(loader: str) -> str:
    """The metric namespace of test loader ``loader``: ``test``, else ``tested_<loader>``."""
    return "test" if loader == "test" else f"{TESTED}{loader}"


class Task(pl.LightningModule):
    """A training objective around injected networks, with one monitored validation metric.

    ``optimizer`` is a partial taking parameter groups (:meth:`parameter_groups`), ``scheduler``
    a Lightning lr-scheduler dict whose ``scheduler`` entry is a partial taking the optimizer
    (or ``None``); both come from their config groups, for every task.
    """

    #: constructor argument -> config group of each network the task takes
    networks: ClassVar[dict[str, str]] = {"net": "model"}
    #: constructor argument -> config group of every other component built for it
    components: ClassVar[dict[str, str]] = {}

    def __init__(
        self,
        optimizer: OptimizerFactory,
        scheduler: dict[str, Any] | None,
        *,
        monitor: str,
        mode: Literal["min", "max"],
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ConfigError(f"task.mode={mode} is not one of: {', '.join(MODES)}")
        self.monitor, self.mode = monitor, mode
        self.optimizer_factory = optimizer
        self.scheduler_config = scheduler

    def example_inputs(self, datamodule: pl.LightningDataModule) -> dict[str, Any]:
        """network name -> one example input batch, for tracing: by default the data's own
        example (a batch of images, of sequences...). A task whose networks take something else
        (a GAN's generator takes noise) says so here."""
        example = datamodule.example_input()
        return {name: example for name in self.networks}

    def check(self, datamodule: pl.LightningDataModule) -> None:
        """Bind and validate whatever depends on the data (class counts, label format) before
        the run exists; raise :class:`ConfigError`. ``datamodule`` is set up for ``fit``."""

    def check_callbacks(self, callbacks: Mapping[str, pl.Callback]) -> None:
        """Refuse, as :class:`ConfigError`, a configured callback (by its ``callbacks.<name>``)
        the task cannot serve, before the run exists: one that calls the task on data batches
        when the task's networks do not take them."""

    def dry_output_shape(self, net: nn.Module, example: torch.Tensor) -> tuple[int, ...]:
        """The shape of ``net(example)`` from one forward in eval mode without gradients
        (batch-norm statistics untouched, the net's mode restored), for a :meth:`check` that
        needs to know what the net gives before the run exists. A net that cannot take the
        example fails in one line; its own :class:`ConfigError` (a U-Net's size rule) as it is."""
        training = net.training
        net.eval()
        try:
            with torch.no_grad():
                return tuple(net(example).shape)
        except ConfigError:
            raise
        except (RuntimeError, ValueError) as err:  # built for other channels or sizes
            reason = " ".join(str(err).split())
            raise ConfigError(
                f"model {type(net).__name__} cannot take the data's example input "
                f"{tuple(example.shape)}: {reason}"
            ) from None
        finally:
            net.train(training)

    def validation_metric_names(self) -> set[str] | None:
        """Names this task logs in validation (``None``: not known in advance); the core refuses
        a monitored metric that is not among them before training (:meth:`check_monitors`)."""
        return None

    def training_metric_names(self) -> set[str] | None:
        """Epoch-level names this task logs in training (``None``: not known in advance)."""
        return None

    def check_monitors(
        self, monitors: dict[str, str | None], training: dict[str, str | None] | None = None
    ) -> None:
        """Refuse, before training, a metric that something monitors (config key -> metric name)
        and this task does not log in validation, or, for the ``training`` monitors (read at a
        training epoch's end), in training: Lightning would fail after the run exists."""
        stages = [
            (
                "validation",
                self.validation_metric_names(),
                {"task.monitor": self.monitor, **monitors},
            ),
            ("training", self.training_metric_names(), training or {}),
        ]
        for stage, names, wanted in stages:
            for key, metric in wanted.items():
                if names is not None and metric is not None and metric not in names:
                    raise ConfigError(
                        f"{key}={metric} is not a {stage} metric of {type(self).__name__}; it "
                        f"logs: {', '.join(sorted(names))}"
                    )

    def validation_sets(self) -> list[str]:
        """The name of each validation loader, in ``dataloader_idx`` order: the keys when the
        loaders come as a dict (Lightning keeps the dict, and numbers its loaders in key order),
        else ``["val"]``. A task namespaces each loader's metrics with its name."""
        loaders = self.trainer.val_dataloaders
        return list(loaders) if isinstance(loaders, Mapping) else ["val"]

    def test_sets(self) -> list[str]:
        """The name of each test loader, in ``dataloader_idx`` order, as :meth:`validation_sets`
        (``["test"]`` for a single loader)."""
        loaders = self.trainer.test_dataloaders
        return list(loaders) if isinstance(loaders, Mapping) else ["test"]

    def parameter_groups(self) -> list[dict[str, Any]]:
        """What the optimizer gets: every trainable parameter, in one group."""
        return [{"params": [p for p in self.parameters() if p.requires_grad], "name": "all"}]

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


class StagedTask(Task):
    """A task that scores every loader the same way: one step per batch, one log per epoch.

    For each stage it scores (``train``, ``val``, ``test``, ``train_eval``, ``tested_val``,
    ``tested_train_eval``) it keeps a batch-size-weighted ``<stage>_loss`` (a ``MeanMetric``) and
    the collections :meth:`epoch_metrics` names, updated in :meth:`_shared_step` and logged once
    per epoch by :meth:`_log_epoch`; validation and test loaders are named as the data module
    names them (:meth:`Task.validation_sets`, :meth:`Task.test_sets`). The classifier and the
    sequence task are ones; a task with hooks of its own derives from :class:`Task` directly.
    """

    def _shared_step(self, batch: Any, stage: str) -> Any:
        """Score one batch of ``stage``: update that stage's loss and metrics; return the loss."""
        raise NotImplementedError(f"{type(self).__name__} must implement _shared_step()")

    def epoch_metrics(self, stage: str) -> list[Any]:
        """The metric collections of ``stage`` logged at its epoch's end: the first one on the
        progress bar (beside ``<stage>/loss``), the others only to the logger."""
        return [getattr(self, f"{stage}_metrics")]

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        loss = self._shared_step(batch, "train")
        # Only on the steps Lightning passes to the logger (every trainer.log_every_n_steps):
        # each self.log call costs Lightning's bookkeeping, whether or not the value is written.
        if self.trainer._logger_connector.should_update_logs:
            self.log("train/loss_step", loss, on_step=True, on_epoch=False, prog_bar=True)
        return loss

    def on_validation_epoch_start(self) -> None:
        # which loader each dataloader_idx is: "val", and "train_eval" when the data adds it
        self._validation_sets = self.validation_sets()
        unknown = set(self._validation_sets) - {"val", TRAIN_EVAL}
        if unknown:
            raise ValueError(
                f"{type(self).__name__} scores the validation loaders 'val' and '{TRAIN_EVAL}', "
                f"not {', '.join(sorted(unknown))}"
            )

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._shared_step(batch, self._validation_sets[dataloader_idx])

    def on_test_epoch_start(self) -> None:
        # which loader each dataloader_idx is: "test", and "val", "train_eval" when the data adds
        # them; each is scored in its own namespace (test/, tested_val/, tested_train_eval/)
        sets = self.test_sets()
        unknown = set(sets) - {"test", "val", TRAIN_EVAL}
        if unknown:
            raise ValueError(
                f"{type(self).__name__} scores the test loaders 'test', 'val' and '{TRAIN_EVAL}', "
                f"not {', '.join(sorted(unknown))}"
            )
        self._test_stages = [tested_stage(name) for name in sets]

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._shared_step(batch, self._test_stages[dataloader_idx])

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        for stage in self._validation_sets:
            self._log_epoch(stage)

    def on_test_epoch_end(self) -> None:
        for stage in self._test_stages:
            self._log_epoch(stage)

    def _log_epoch(self, stage: str) -> None:
        """Log the stage's epoch values and start the next epoch afresh.

        Metrics are updated at every step and logged here once (``<stage>/loss``: the
        batch-size-weighted mean, and every collection of :meth:`epoch_metrics`). torchmetrics
        reduces each over every DDP rank at ``compute()``, every rank taking part. Lightning
        would log a metric that has a value per class (``recall/<class>``) only as scalars, and
        a value logged at every step costs its bookkeeping at every step.
        """
        collections = self.epoch_metrics(stage)
        loss = getattr(self, f"{stage}_loss")
        shown = {f"{stage}/loss": loss.compute(), **collections[0].compute()}
        self.log_dict(shown, prog_bar=True)
        for metrics in collections[1:]:
            self.log_dict(metrics.compute())
        for metric in (loss, *collections):
            metric.reset()
