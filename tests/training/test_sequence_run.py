"""A recurrent net on a sequence task through the real entry point: tracked, profiled, resumable.

``python -m ablab.train task=sequence data=adding model=lstm`` with nothing else: the data picks
its loss (MSE) and the task its monitored metric (``val/mse``, lower is better); the run logs the
bar a model must beat (``data.mean_predictor_mse``), the input-gradient profile and its plot, and
after ``kill -9`` a rerun continues the same MLflow run from ``last.ckpt``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient

from conftest import tracking_uri
from jobs import finish, killed_then_resumed, only_run, pause_at, start

SEQUENCE_RUN = [
    "task=sequence",
    "data=adding",
    "model=lstm",
    "data.length=12",
    "data.n_train=320",  # 5 steps an epoch
    "data.n_val=64",
    "data.n_test=64",
    "model.hidden_size=16",
    "trainer=smoke",
    "trainer.max_epochs=3",
    "trainer.limit_train_batches=null",
    "trainer.limit_val_batches=null",
    "trainer.limit_test_batches=null",
    "trainer.system_metrics_interval=null",
    "callbacks.time_gradients.every_n_steps=5",
]


def test_lstm_on_the_adding_problem_is_tracked_profiled_and_resumes_after_kill_9(
    root: Path,
) -> None:
    # epoch 2: last.ckpt is from step 5
    client, run = killed_then_resumed(root, pause_at(7, root), SEQUENCE_RUN)
    params, metrics = run.data.params, run.data.metrics
    assert params["loss._target_"] == "torch.nn.MSELoss"
    assert (params["task.monitor"], params["task.mode"]) == ("val/mse", "min")
    assert float(params["data.mean_predictor_mse"]) == pytest.approx(1 / 6, abs=0.06)
    # an LSTM of 16 units on 2 features: 4 gates x (2 + 16 + 2 biases) x 16, and the 16 -> 1 head
    assert int(params["complexity.params"]) == 4 * 16 * (2 + 16 + 2) + 17
    history = [m.value for m in client.get_metric_history(run.info.run_id, "val/mse")]
    assert len(history) == 3 and metrics["val/mse_best"] == pytest.approx(min(history))
    assert {"test/mse", "test/mae", "tested_val/mse"} <= set(metrics)
    # the profile: at step 0 and every 5 steps (the second attempt from its resumed step on)
    steps = {m.step for m in client.get_metric_history(run.info.run_id, "grad_x/first")}
    assert {0, 5, 10, 15} <= steps
    assert metrics["grad_x/first"] > 0 and metrics["grad_x/last"] > 0
    local = client.download_artifacts(run.info.run_id, "diagnostics/grad_x.json", str(root))
    profiles = json.loads(Path(local).read_text())
    assert all(len(p) == 12 for p in profiles["profiles"])  # one value per time step
    # the probe and the profiles live in the checkpoint: the resumed attempt kept step 0's
    assert profiles["steps"][:4] == [0, 5, 10, 15]
    first = client.get_metric_history(run.info.run_id, "grad_x/first")
    assert [m.step for m in first].count(0) == 1
    assert "diagnostics/grad_x.png" in [a.path for a in client.list_artifacts(run.info.run_id,
                                                                              "diagnostics")]  # fmt: skip


def test_image_runs_log_no_time_profile(root: Path) -> None:
    code, out = finish(start(root))  # the default LeNet on digits, default callbacks
    assert code == 0, out[-3000:]
    run = only_run(MlflowClient(tracking_uri(root)))
    assert not any(k.startswith("grad_x/") for k in run.data.metrics)
