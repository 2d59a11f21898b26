"""The core trains a task it has never heard of, and every fault path holds for it.

``tests/toy`` is a user's own task, outside ``src/`` and ``conf/``: y = sin(x) regression with an
MLP, monitored on ``val/mse`` (lower is better), plugged in through ``hydra.searchpath``. It goes
through the real entry point: its own monitored metric and checkpoints, an MLflow run, resume
after ``kill -9``, a sweep and an Optuna search. Also here: the defects where the value returned
to a sweeper depended on the checkpoint callback (``fast_dev_run``, ``ddp_spawn``), and a run
with nothing tracked (``logger=null``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from mlflow import MlflowClient

from conftest import REPO, tracking_uri
from jobs import SHORT_RUN, finish, killed_then_resumed, pause_at, start

TOY = [
    f"hydra.searchpath=[file://{REPO}/tests/toy/conf]",
    "task=sine",
    "data=sine",
    "model=mlp",
    "augmentation=null",  # image-only groups the toy has no use for
    "loss=null",
    "trainer=smoke",
    "trainer.max_epochs=3",
    "trainer.limit_train_batches=null",  # 307 training samples / 64: 5 steps an epoch
    "trainer.limit_val_batches=null",
    "trainer.system_metrics_interval=null",
]
#: The MLP's parameters: (1·32 + 32) + (32·32 + 32) + (32·1 + 1).
MLP_PARAMS = 64 + 1056 + 33

pytestmark = pytest.mark.slow


def children(client: MlflowClient) -> list:
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], "")
    return [r for r in runs if "mlflow.parentRunId" in r.data.tags]


def test_a_task_outside_the_core_trains_checkpoints_and_resumes_after_kill_9(root: Path) -> None:
    # epoch 2: last.ckpt is from step 5
    client, run = killed_then_resumed(root, pause_at(7, root), TOY)
    params, metrics = run.data.params, run.data.metrics
    assert params["task.monitor"] == "val/mse" and params["task.mode"] == "min"
    assert params["callbacks.model_checkpoint.monitor"] == "val/mse"
    # traced on the data module's own example input: a (2, 1) batch of x, not an image size
    assert int(params["complexity.params"]) == MLP_PARAMS
    assert int(params["complexity.macs"]) == 32 + 32 * 32 + 32
    history = [m.value for m in client.get_metric_history(run.info.run_id, "val/mse")]
    assert len(history) == 3 and metrics["val/mse_best"] == pytest.approx(min(history))
    assert {"test/mse", "test/mae"} <= set(metrics)
    (best,) = (root / "outputs" / "runs").glob("*/checkpoints/epoch*.ckpt")
    state = torch.load(best, weights_only=True)
    (checkpointing,) = [v for k, v in state["callbacks"].items() if "ModelCheckpoint" in k]
    # the checkpoint kept is the lowest val/mse, as the task asked
    assert checkpointing["best_model_score"].item() == pytest.approx(min(history))
    assert state["epoch"] == history.index(min(history))


def test_a_task_outside_the_core_sweeps_and_is_searched_by_optuna(root: Path) -> None:
    one_epoch = ["-m", *TOY, "trainer.max_epochs=1"]  # -m first: argparse takes options first
    code, out = finish(start(root, "seed=0,1", base=one_epoch))
    assert code == 0, out[-3000:]
    client = MlflowClient(tracking_uri(root))
    swept = children(client)
    assert sorted(r.data.params["seed"] for r in swept) == ["0", "1"]
    assert all(r.info.status == "FINISHED" and "val/mse_best" in r.data.metrics for r in swept)

    code, out = finish(start(root, "hparams_search=optuna", "hydra.sweeper.n_trials=3",
                             base=one_epoch))  # fmt: skip
    assert code == 0, out[-3000:]
    trials = [r for r in children(client) if r.info.run_id not in {s.info.run_id for s in swept}]
    assert len(trials) == 3 and all(r.info.status == "FINISHED" for r in trials)
    (results,) = (root / "outputs" / "multiruns").glob("*/*/optimization_results.yaml")
    found = yaml.safe_load(results.read_text())
    # minimised, because the task's mode is min: the best trial is the lowest val/mse_best
    assert found["best_value"] == pytest.approx(min(r.data.metrics["val/mse_best"] for r in trials))


def test_optuna_goes_on_past_trials_without_checkpoints_fast_dev_run(root: Path) -> None:
    """Lightning turns checkpointing off under fast_dev_run; the score must not need it."""
    code, out = finish(start(root, "hparams_search=optuna", "hydra.sweeper.n_trials=2",
                             "++trainer.fast_dev_run=true", base=["-m", *SHORT_RUN]))  # fmt: skip
    assert code == 0, out[-3000:]
    assert "is not a metric of this run" not in out
    (results,) = (root / "outputs" / "multiruns").glob("*/*/optimization_results.yaml")
    assert 0.0 <= yaml.safe_load(results.read_text())["best_value"] <= 1.0  # a val/acc_best
    assert len(list(results.parent.glob("*/.hydra"))) == 2  # both trials ran


def test_optuna_scores_ddp_spawn_trials(root: Path) -> None:
    """A ddp_spawn worker's checkpoint callback keeps its best score in the worker process."""
    code, out = finish(start(root, "hparams_search=optuna", "hydra.sweeper.n_trials=1",
                             "trainer=ddp_cpu", "trainer.strategy=ddp_spawn", "trainer.max_epochs=1",
                             base=["-m", *SHORT_RUN]))  # fmt: skip
    assert code == 0, out[-3000:]
    client = MlflowClient(tracking_uri(root))
    (trial,) = children(client)
    assert trial.info.status == "FINISHED"
    (results,) = (root / "outputs" / "multiruns").glob("*/*/optimization_results.yaml")
    best = trial.data.metrics["val/acc_best"]
    assert yaml.safe_load(results.read_text())["best_value"] == pytest.approx(best)


def test_logger_null_trains_without_tracking(root: Path) -> None:
    code, out = finish(start(root, "logger=null"))
    assert code == 0, out[-3000:]
    assert "nothing was tracked (logger=null)" in out
    assert not (root / "mlflow.db").exists() and not (root / "mlartifacts").exists()
    (folder,) = (root / "outputs" / "runs").iterdir()
    assert (folder / "checkpoints" / "last.ckpt").exists()
    code, out = finish(start(root, "logger=null", "seed=0,1", base=["-m", *SHORT_RUN]))
    assert code == 2 and "use logger=null for single runs" in out
