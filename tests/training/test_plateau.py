"""The "to plateau" budget (``callbacks=plateau``): training stops once the epoch training loss
has not improved by a relative ``min_rel_improvement`` for ``patience`` epochs, ``max_epochs``
being the cap, and the run's ``stopped`` tag says which of the two ended it."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from mlflow import MlflowClient
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ablab.errors import ConfigError
from ablab.training.callbacks import Plateau, StopReason
from ablab.training.lifecycle import train
from conftest import tracking_uri
from jobs import only_run


class Scripted(pl.LightningModule):
    """Logs ``train/loss`` = ``values[epoch]`` at each training epoch's end."""

    def __init__(self, values: list[float]) -> None:
        super().__init__()
        self.values, self.w = values, nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):
        return (self.w * batch[0]).sum()

    def on_train_epoch_end(self) -> None:
        self.log("train/loss", self.values[self.current_epoch])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def stop(values: list[float], **plateau) -> dict[str, str]:
    """The tags :class:`StopReason` sets for a fit whose training loss is ``values``."""
    reason = StopReason()
    trainer = pl.Trainer(max_epochs=len(values), logger=False, enable_checkpointing=False,
                         callbacks=[Plateau(**plateau), reason], enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu")  # fmt: skip
    trainer.fit(Scripted(values), DataLoader(TensorDataset(torch.ones(2, 1))))
    return reason.tags


@pytest.mark.parametrize(
    ("values", "stopped"),
    [
        # 0.95 and 0.91 are no 10% below the best, 1.0: the second of them ends it
        ([1.0, 0.95, 0.91, 0.5, 0.4], "plateau at epoch 2"),
        # 0.89 < 0.9 · 1.0; 0.85 > 0.9 · 0.89 (wait 1); 0.80 < 0.801 (best again); 0.79 (wait 1)
        ([1.0, 0.89, 0.85, 0.80, 0.79], "max_epochs at epoch 4"),
    ],
)
def test_an_improvement_is_relative_to_the_best_so_far(values: list[float], stopped: str) -> None:
    tags = stop(values, min_rel_improvement=0.1, patience=2)
    assert tags["stopped"] == stopped
    assert (tags["stopped.kind"], tags["stopped_epoch"]) == tuple(stopped.split(" at epoch "))


def test_zero_counts_any_improvement() -> None:
    assert stop([1.0, 0.999, 0.998, 0.998], min_rel_improvement=0.0, patience=1)["stopped"] == (
        "plateau at epoch 3"
    )


#: A whole-epoch training loss that cannot improve (lr 0: only the summation order changes).
FLAT = [
    "trainer=smoke",
    "trainer.limit_train_batches=null",
    "trainer.system_metrics_interval=null",
    "trainer.threads=1",
    "logger.log_model=false",
    "optimizer.lr=0.0",
    "callbacks=plateau",
    "callbacks.plateau.patience=2",
    "callbacks.model_checkpoint=null",
    "+trainer.enable_checkpointing=false",
    "callbacks.batch_preview=null",
]


@pytest.mark.parametrize(
    ("max_epochs", "stopped"), [(10, "plateau at epoch 2"), (2, "max_epochs at epoch 1")]
)
def test_a_run_to_plateau_says_whether_the_plateau_or_the_cap_ended_it(
    compose_cfg, root: Path, max_epochs: int, stopped: str
) -> None:
    with compose_cfg(*FLAT, f"trainer.max_epochs={max_epochs}") as cfg:
        train(cfg)
    client = MlflowClient(tracking_uri(root))
    run = only_run(client)
    assert run.data.tags["stopped"] == stopped
    trained = len(client.get_metric_history(run.info.run_id, "train/loss"))
    assert trained == int(run.data.tags["stopped_epoch"]) + 1
    # no checkpointing: the weights in memory, those of the epoch it stopped at, are tested
    assert run.data.tags["tested_weights"] == f"last epoch ({trained - 1})"
    val = client.get_metric_history(run.info.run_id, "val/acc")
    assert run.data.metrics["tested_val/acc"] == max(val, key=lambda m: m.step).value


@pytest.mark.parametrize(
    ("override", "says"),
    [
        ("callbacks.plateau.patience=0", "callbacks.plateau.patience=0: expected int >= 1"),
        (
            "callbacks.plateau.min_rel_improvement=-0.01",
            "callbacks.plateau.min_rel_improvement=-0.01: expected float >= 0",
        ),
        ("callbacks.plateau.monitor=train/los", "train/los is not a training metric"),
    ],
)
def test_a_bad_plateau_is_refused_in_one_line_before_the_run(
    compose_cfg, root: Path, override: str, says: str
) -> None:
    overrides = ("callbacks=plateau", "trainer=smoke", override)
    with compose_cfg(*overrides) as cfg, pytest.raises(ConfigError) as refused:
        train(cfg)
    assert says in str(refused.value) and "\n" not in str(refused.value)
    assert not (root / "mlflow.db").exists()
    with pytest.raises(ConfigError, match=r"patience=0: must be an integer >= 1"):
        Plateau(patience=0)  # built in Python, without a config: the same refusal
