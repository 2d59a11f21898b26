"""Build every component from the composed config, then fit, test on the best checkpoint, report.

All building and validation happens before the MLflow run is created, so bad input leaves no
half-written run behind.
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass
from functools import partial
from typing import Any

import pytorch_lightning as pl
import torch
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from mlflow.entities import Param
from omegaconf import DictConfig
from pytorch_lightning.loggers import MLFlowLogger
from rich.console import Console
from torch import nn

from ablab.complexity import Complexity, measure
from ablab.config import resolved
from ablab.data import ImageDataModule
from ablab.errors import ConfigError
from ablab.init import initialize
from ablab.tracking import flatten_params, tracked_run
from ablab.training.losses import dataset_targets

# Lightning 2.6 calls a torch pytree API that torch 2.14 deprecates; nothing for users to act on.
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")


@dataclass
class Run:
    """The parts of one training run."""

    datamodule: ImageDataModule
    task: pl.LightningModule
    trainer: pl.Trainer
    logger: MLFlowLogger
    complexity: Complexity


def build(cfg: DictConfig) -> Run:
    """Instantiate data, model, init, task, callbacks, logger and trainer; raise ConfigError."""
    pl.seed_everything(cfg.seed, workers=True)
    try:
        datamodule = instantiate(cfg.data, augmentation=instantiate(cfg.augmentation))
        datamodule.prepare_data()
        datamodule.setup("fit")  # loads and splits once (cached): data errors surface here
        # Weights draw from their own stream, so variants can share data order and augmentation.
        torch.manual_seed(cfg.seeds.init)
        net = initialize(instantiate(cfg.model), **cfg.init)
        # Traced at the data's input size: a model that cannot take that size fails here.
        size = (cfg.data.in_channels, cfg.data.image_size, cfg.data.image_size)
        complexity = measure(net, size)
        scheduler = instantiate(cfg.scheduler, _convert_="all") if cfg.scheduler else None
        loss = instantiate(cfg.loss)
        if isinstance(loss, partial):  # losses that need the training set's class counts
            targets = dataset_targets(datamodule.splits["train"])
            loss = loss(class_counts=torch.bincount(targets, minlength=cfg.data.num_classes))
        # mixup/CutMix hand the loss (N, C) class probabilities: a loss that needs indices fails here
        check_loss(loss, cfg.data.num_classes, soft=datamodule.augmentation.mix is not None)
        task = instantiate(
            cfg.task, net=net, optimizer=instantiate(cfg.optimizer), scheduler=scheduler, loss=loss
        )
        try:  # dry run: a bad optimizer or scheduler value fails here, not after the run starts
            task.configure_optimizers()
        except (ValueError, TypeError) as err:
            raise ConfigError(f"optimizer/scheduler rejected the config: {err}") from err
        callbacks = [instantiate(c) for c in cfg.callbacks.values() if c is not None]
        logger = instantiate(cfg.logger)
        trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=logger)
    except ConfigError:
        raise
    except Exception as err:
        raise as_config_error(err) from err
    return Run(datamodule, task, trainer, logger, complexity)


def check_loss(loss: nn.Module, num_classes: int, soft: bool = False) -> None:
    """Evaluate the loss once on dummy logits (and, with ``soft``, on class-probability targets),
    so a bad loss value fails before the run starts."""
    try:
        loss(torch.zeros(2, num_classes), torch.zeros(2, dtype=torch.long))
        if soft:
            loss(torch.zeros(2, num_classes), torch.full((2, num_classes), 1.0 / num_classes))
    except (ValueError, RuntimeError) as err:
        raise ConfigError(f"loss rejected the config: {err}") from err


def as_config_error(err: BaseException) -> ConfigError:
    """The ConfigError in ``err``'s cause chain, else ``err`` itself on one line."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, ConfigError):
            return seen
        seen = seen.__cause__ or seen.__context__
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return ConfigError(" ".join(lines) or type(err).__name__)


def log_run_config(run: Run, cfg: DictConfig) -> None:
    """Params (flattened resolved config), config/override/command artifacts, size and dir tags."""
    logger, client = run.logger, run.logger.experiment
    config = resolved(cfg)
    params = flatten_params(config)
    params |= {"complexity.params": run.complexity.params, "complexity.macs": run.complexity.macs}
    # Through the client, not logger.log_hyperparams: Lightning cuts every value at 250 characters.
    entries = [Param(key, str(value)) for key, value in params.items()]
    for start in range(0, len(entries), 100):  # MLflow takes at most 100 params per batch
        client.log_batch(logger.run_id, params=entries[start : start + 100])
    client.log_text(logger.run_id, yaml.safe_dump(config, sort_keys=False), "config/config.yaml")
    augmentation = "\n".join(run.datamodule.augmentation.describe()) + "\n"
    client.log_text(logger.run_id, augmentation, "config/augmentation.txt")
    hydra_cfg = HydraConfig.get()
    overrides = list(hydra_cfg.overrides.task)
    client.log_text(logger.run_id, yaml.safe_dump(overrides), "config/overrides.yaml")
    client.log_text(logger.run_id, " ".join(sys.argv), "config/command.txt")
    client.set_tag(logger.run_id, "hydra_output_dir", hydra_cfg.runtime.output_dir)


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit, then test on the best checkpoint; return the test metrics."""
    run = build(cfg)
    trainer = run.trainer
    with tracked_run(run.logger) as outcome:
        log_run_config(run, cfg)
        trainer.fit(run.task, datamodule=run.datamodule)
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        results = trainer.test(run.task, datamodule=run.datamodule, ckpt_path=best or None)
    metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}
    report(metrics, run.logger, cfg.logger.tracking_uri, outcome.status, best)
    return metrics


def report(
    metrics: dict[str, Any], logger: MLFlowLogger, uri: str, status: str, checkpoint: str
) -> None:
    """The last lines of a run: test metrics, where the run is and how to open it."""
    console = Console(soft_wrap=True)  # long paths and URLs stay on one line
    shown = "  ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()))
    console.print(f"[bold]test[/bold] {shown}", highlight=False)
    if checkpoint:
        console.print(f"best checkpoint: {checkpoint}", highlight=False)
    experiment = logger.experiment.get_experiment(logger.experiment_id).name
    console.print(
        f"MLflow run {logger.run_id} ({status}) in experiment '{experiment}' "
        f"[id {logger.experiment_id}] at {uri}",
        highlight=False,
    )
    console.print(
        f"open it: mlflow ui --backend-store-uri {uri}  (or: make ui), then "
        f"http://127.0.0.1:5000/#/experiments/{logger.experiment_id}/runs/{logger.run_id}",
        highlight=False,
    )
