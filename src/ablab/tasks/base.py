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
from torch import nn
from torch.optim import Optimizer

from ablab.errors import ConfigError

OptimizerFactory = Callable[[Iterable[nn.Parameter]], Optimizer]
MODES = ("min", "max")
#: Namespace prefix of a non-test loader scored in the test stage: ``tested_val/acc`` is the
#: tested weights' accuracy on the validation set, beside their ``test/acc``.
TESTED = "tested_"


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
