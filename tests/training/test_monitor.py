"""The task's monitored metric, from one place: its best value (what sweepers optimise), the
checks on it, ``group=null``, and runs logged before the task declared a monitor."""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from mlflow import MlflowClient
from mlflow.entities import Param
from pytorch_lightning.loggers import Logger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ablab.config import composed, null_groups, resolved
from ablab.errors import ConfigError
from ablab.tracking import flatten_params
from ablab.training.callbacks import MonitorBest
from ablab.training.job import JobState, previous_attempt
from ablab.training.lifecycle import train
from ablab.training.run import build, is_tracked
from conftest import tracking_uri
from jobs import SHORT_RUN


class Recorder(Logger):
    """Every (metric, step) a run logs."""

    def __init__(self) -> None:
        super().__init__()
        self.logged: list[tuple[str, float, int]] = []

    name, version = "recorder", "0"

    def log_metrics(self, metrics, step=None) -> None:
        self.logged += [(k, float(v), step) for k, v in metrics.items()]

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass


class Scripted(pl.LightningModule):
    """Logs ``val/x`` = ``values[epoch]`` at each validation."""

    def __init__(self, values: list[float]) -> None:
        super().__init__()
        self.values, self.w = values, nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):
        return (self.w * batch[0]).sum()

    def validation_step(self, batch, batch_idx) -> None:
        self.log("val/x", self.values[self.current_epoch])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def fit(values: list[float], mode: str, callback: MonitorBest | None = None):
    recorder, callback = Recorder(), callback or MonitorBest("val/x", mode)
    loader = DataLoader(TensorDataset(torch.ones(4, 1)), batch_size=2)
    trainer = pl.Trainer(max_epochs=len(values), logger=recorder, callbacks=[callback],
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu")  # fmt: skip
    trainer.fit(Scripted(values), loader, loader)
    return trainer, callback, recorder.logged


@pytest.mark.parametrize(("mode", "best"), [("max", 0.7), ("min", 0.2)])
def test_the_best_skips_nan_and_is_logged_beside_its_metric(mode: str, best: float) -> None:
    trainer, callback, logged = fit([0.5, 0.7, math.nan, 0.2], mode)
    assert callback.score == pytest.approx(best)
    assert float(trainer.callback_metrics["val/x_best"]) == pytest.approx(best)
    steps = {name: [s for n, _, s in logged if n == name] for name in ("val/x", "val/x_best")}
    assert steps["val/x_best"] == steps["val/x"]  # same steps: curves line up


def test_a_metric_never_finite_scores_the_worst_value() -> None:
    assert fit([math.nan, math.inf], "min")[1].score == math.inf
    assert fit([math.nan, math.nan], "max")[1].score == -math.inf


def test_the_best_continues_from_a_checkpoint_state() -> None:
    callback = MonitorBest("val/x", "max")
    callback.load_state_dict(fit([0.9], "max")[1].state_dict())
    assert fit([0.3, 0.4], "max", callback)[1].score == pytest.approx(0.9)


def test_group_null_drops_only_groups_a_run_can_do_without() -> None:
    assert null_groups(["logger=null", "data.root=null", "+x=null", "augmentation=null"]) == [
        "~logger", "data.root=null", "+x=null", "~augmentation"]  # fmt: skip
    with pytest.raises(ConfigError, match="every run needs a model; groups that can be null"):
        null_groups(["model=null"])
    # a debug config that tags the logger leaves a logger node behind, with nothing to build
    with composed(["debug=fdr", "logger=null"]) as cfg:
        assert cfg.get("logger") is not None and not is_tracked(cfg)


@pytest.mark.parametrize(
    "override",
    ["task.monitor=val/recall", "callbacks.model_checkpoint.monitor=val/nope", "scheduler=plateau"],
)
def test_a_monitor_the_task_does_not_log_is_refused_before_the_run(
    compose_cfg, root: Path, override: str
) -> None:
    key, _, metric = override.partition("=")
    key, metric = ("scheduler.monitor", "val/x") if key == "scheduler" else (key, metric)
    extra = ["scheduler.monitor=val/x"] if override == "scheduler=plateau" else []
    refused = pytest.raises(ConfigError, match=rf"{key}={metric} is not a validation metric")
    with compose_cfg(*SHORT_RUN, override, *extra) as cfg, refused:
        build(cfg)
    assert not (root / "mlflow.db").exists()


def test_a_run_logged_before_the_task_declared_a_monitor_is_still_the_same_config(
    compose_cfg, root: Path
) -> None:
    client = MlflowClient(tracking_uri(root))
    with compose_cfg(*SHORT_RUN) as cfg:
        params = flatten_params(resolved(cfg))
    run = client.create_run(client.create_experiment("old"))
    older = {k: v for k, v in params.items() if k not in ("task.monitor", "task.mode")}
    client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in older.items()])
    JobState(run.info.run_id, run.info.experiment_id, tracking_uri(root)).save(root / "job")
    assert previous_attempt(root / "job", tracking_uri(root), params).state.run_id
    # the value it had without the key is the one compared
    with pytest.raises(ConfigError, match=r"task\.monitor: val/acc -> val/loss"):
        previous_attempt(root / "job", tracking_uri(root), {**params, "task.monitor": "val/loss"})


def test_logger_null_continues_its_own_checkpoints(compose_cfg) -> None:
    with compose_cfg(*SHORT_RUN, "logger=null", "trainer.max_epochs=1") as cfg:
        train(cfg)
        folder = Path(cfg.paths.output_dir)
        step = torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
        train(cfg)  # continues (nothing left to train), instead of setting them aside
    assert not (folder / "previous").exists()
    last = torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == step and last["ablab_job"]["run_id"] is None


def test_classifier_validation_names_are_what_it_logs() -> None:
    from ablab.tasks import ClassifierModule

    task = ClassifierModule(nn.Flatten(), partial(torch.optim.SGD, lr=0.0), None,
                            nn.CrossEntropyLoss(), num_classes=10)  # fmt: skip
    x, y = torch.randn(20, 10), torch.arange(20) % 10
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, accelerator="cpu")
    (logged,) = trainer.validate(task, DataLoader(TensorDataset(x, y), batch_size=10))
    assert set(logged) == task.validation_metric_names()
