"""Metrics reach the store in batches: held in memory, written at the points that make them
durable, and carried in checkpoints, so a killed run, once resumed, has every value once.

Real sqlite stores through the real logger; the "kill" is a logger dropped with values held,
exactly what a SIGKILL leaves (the process-level kill and resume are in test_resume.py).
"""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
from mlflow import MlflowClient
from torch.utils.data import DataLoader, TensorDataset

from ablab.tracking import mlflow_logger
from ablab.training.callbacks import FlushMetrics
from ablab.training.job import recorded_steps
from conftest import tracking_uri


def logger_on(root: Path, run_id: str | None = None, **kw):
    return mlflow_logger(
        experiment_name="batches", tracking_uri=tracking_uri(root), run_id=run_id, **kw
    )


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


def test_values_are_held_until_flushed_then_written_with_their_steps_and_times(root) -> None:
    logger = logger_on(root)
    client = MlflowClient(tracking_uri(root))
    for step in range(5):
        logger.log_metrics({"train/loss_step": float(step), "bad name!": 1.0}, step=step)
    run_id = logger.run_id
    assert history(client, run_id, "train/loss_step") == []  # nothing written yet
    stamps = [row[2] for row in logger.held() if row[0] == "train/loss_step"]
    logger.flush()
    assert history(client, run_id, "train/loss_step") == [(s, float(s)) for s in range(5)]
    assert [m.timestamp for m in client.get_metric_history(run_id, "train/loss_step")] == stamps
    assert history(client, run_id, "bad name") == [(s, 1.0) for s in range(5)]  # as Lightning
    assert logger.held() == []


def test_the_oldest_value_reaching_flush_every_s_writes_them(root) -> None:
    logger = logger_on(root, flush_every_s=0.0)
    logger.log_metrics({"val/acc": 0.5}, step=3)
    client = MlflowClient(tracking_uri(root))
    assert history(client, logger.run_id, "val/acc") == [(3, 0.5)]


def test_finalize_writes_what_is_held(root) -> None:
    logger = logger_on(root)
    logger.log_metrics({"test/acc": 0.9}, step=10)
    logger.finalize("success")
    run = MlflowClient(tracking_uri(root)).get_run(logger.run_id)
    assert run.data.metrics["test/acc"] == 0.9 and run.info.status == "FINISHED"


def test_values_held_at_a_checkpoint_survive_a_kill_and_are_written_once(root) -> None:
    """Steps 0-3 written; 4-7 held when the checkpoint is taken; 8-9 held after it; then the
    process dies. The resumed job holds the checkpoint's values again (those the store has are
    dropped), replays steps 8-9, and the run ends with 0-9 exactly once."""
    first = logger_on(root)
    for step in range(4):
        first.log_metrics({"train/loss_step": float(step)}, step=step)
    first.flush()
    for step in range(4, 8):
        first.log_metrics({"train/loss_step": float(step)}, step=step)
    checkpoint = FlushMetrics(first).state_dict()
    for step in range(8, 10):
        first.log_metrics({"train/loss_step": float(step)}, step=step)
    run_id = first.run_id
    del first  # killed: held values are gone

    client = MlflowClient(tracking_uri(root))
    assert history(client, run_id, "train/loss_step") == [(s, float(s)) for s in range(4)]
    resumed = logger_on(root, run_id=run_id)
    resumed.skip_recorded(recorded_steps(client, run_id))
    FlushMetrics(resumed).load_state_dict(checkpoint)
    for step in range(8, 10):  # trained again from the checkpoint
        resumed.log_metrics({"train/loss_step": float(step)}, step=step)
    resumed.flush()
    assert history(client, run_id, "train/loss_step") == [(s, float(s)) for s in range(10)]


def test_a_checkpoint_value_the_store_already_has_is_not_written_twice(root) -> None:
    first = logger_on(root)
    first.log_metrics({"val/acc": 0.5}, step=4)
    checkpoint = FlushMetrics(first).state_dict()  # held at the checkpoint...
    first.flush()  # ...and written before the kill
    client = MlflowClient(tracking_uri(root))
    resumed = logger_on(root, run_id=first.run_id)
    resumed.skip_recorded(recorded_steps(client, first.run_id))
    FlushMetrics(resumed).load_state_dict(checkpoint)
    resumed.flush()
    assert history(client, first.run_id, "val/acc") == [(4, 0.5)]


class EpochEndValue(pl.LightningModule):
    """One weight; logs ``train/epoch_value`` = the epoch number in ``on_train_epoch_end``."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):
        return (self.w - batch[0]).pow(2).mean()

    def on_train_epoch_end(self) -> None:
        self.log("train/epoch_value", float(self.current_epoch))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.ones(4, 1)), batch_size=2)


class StoreAtEpochStart(pl.Callback):
    """What the store holds of ``key`` as each training epoch starts, before FlushMetrics'
    own epoch-start hook runs (it comes after this one in the callback list)."""

    def __init__(self, client: MlflowClient, key: str) -> None:
        self.client, self.key, self.seen = client, key, []

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.seen.append(history(self.client, trainer.logger.run_id, self.key))


def test_an_epochs_end_values_are_written_at_its_end_not_at_the_next_start(root) -> None:
    """Lightning logs end-of-epoch values after every on_train_epoch_end hook; they are written
    then (one store write closing the epoch), so the next epoch's first step pays nothing."""
    logger = logger_on(root)
    client = MlflowClient(tracking_uri(root))
    probe = StoreAtEpochStart(client, "train/epoch_value")
    trainer = pl.Trainer(
        max_epochs=3, logger=logger, callbacks=[probe, FlushMetrics(logger)],
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        log_every_n_steps=1,
    )  # fmt: skip
    trainer.fit(EpochEndValue())
    assert [[v for _, v in seen] for seen in probe.seen] == [[], [0.0], [0.0, 1.0]]
    assert logger.held() == []
