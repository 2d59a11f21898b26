"""End to end: a real run on digits into a temporary MLflow store, and how runs end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient
from mlflow.entities import Run

from ablab.data import DigitsDataModule
from ablab.training.callbacks import NonFiniteLossError
from ablab.training.lifecycle import train
from conftest import REPO, run_module, tracking_uri
from injected import SAFETY_TIMEOUT_S, pause_at, release, wait_paused


def only_run(root: Path) -> Run:
    client = MlflowClient(tracking_uri(root))
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return runs[0]


def artifact_paths(client: MlflowClient, run_id: str, path: str | None = None) -> list[str]:
    out = []
    for item in client.list_artifacts(run_id, path):
        out += artifact_paths(client, run_id, item.path) if item.is_dir else [item.path]
    return out


def test_data_train_eval_logs_the_clean_training_scores_beside_validation(compose_cfg, root):
    """One override: every validation also scores the (here, at most 100) clean training
    examples, logged at validation's step; the limit is among the run's params."""
    overrides = ("trainer=smoke", "trainer.max_epochs=2", "data.train_eval=true",
                 "data.train_eval_limit=100")  # fmt: skip
    with compose_cfg(*overrides) as cfg:
        train(cfg)
    run = only_run(root)
    assert run.info.status == "FINISHED"
    scores = {k for k in run.data.metrics if k.startswith("train_eval/")}
    assert scores == {"train_eval/acc", "train_eval/acc_top5", "train_eval/loss"}
    assert (run.data.params["data.train_eval"], run.data.params["data.train_eval_limit"]) == (
        "True",
        "100",
    )
    client = MlflowClient(tracking_uri(root))
    history = {k: client.get_metric_history(run.info.run_id, k) for k in ("val/acc", *scores)}
    steps = {k: [m.step for m in h] for k, h in history.items()}
    assert all(s == steps["val/acc"] and len(s) == 2 for s in steps.values()), steps
    assert all(0.0 <= m.value <= 1.0 for m in history["train_eval/acc"])


def test_run_is_tracked_with_params_metrics_config_and_checkpoint(compose_cfg, root) -> None:
    with compose_cfg("trainer=smoke", "trainer.max_epochs=2") as cfg:
        metrics = train(cfg)
    assert 0.0 <= metrics["test/acc"] <= 1.0
    run = only_run(root)
    client = MlflowClient(tracking_uri(root))
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "lenet5-digits-s0"
    # params: the flattened resolved config, minus volatile paths
    params = run.data.params
    assert params["model.act"] == "sigmoid"
    assert params["data._target_"] == "ablab.data.DigitsDataModule"
    assert params["model.num_classes"] == "10"
    assert params["complexity.params"] == "61706"
    assert params["complexity.macs"] == "416520"  # traced at the data's 1x28x28
    assert not any(k.startswith("paths.") for k in params)
    # metrics, namespaced; test metric comes from the best checkpoint
    for key in (
        "train/loss",
        "train/acc",
        "val/loss",
        "val/acc",
        "val/acc_best",
        "test/acc",
        "test/acc_top5",
    ):
        assert key in run.data.metrics, key
    assert run.data.metrics["test/acc"] == pytest.approx(metrics["test/acc"])
    assert len(client.get_metric_history(run.info.run_id, "val/acc")) == 2
    assert not any(k.startswith("train_eval/") for k in run.data.metrics)  # off by default
    # tags
    tags = run.data.tags
    assert (tags["model"], tags["data"], tags["experiment"]) == ("lenet5", "digits", "default")
    assert tags["host"] and len(tags["git_commit"]) == 40
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # UI view
    # artifacts: resolved config, overrides, command, batch preview, best checkpoint
    paths = artifact_paths(client, run.info.run_id)
    for expected in (
        "config/config.yaml",
        "config/overrides.yaml",
        "config/command.txt",
        "samples/train_batch.png",
    ):
        assert expected in paths, paths
    assert any(p.endswith(".ckpt") for p in paths), paths
    local = client.download_artifacts(run.info.run_id, "config/config.yaml", str(root))
    logged = yaml.safe_load(Path(local).read_text())
    assert logged["model"]["act"] == "sigmoid" and logged["data"]["image_size"] == 28
    overrides = yaml.safe_load(
        Path(
            client.download_artifacts(run.info.run_id, "config/overrides.yaml", str(root))
        ).read_text()
    )
    assert overrides == ["trainer=smoke", "trainer.max_epochs=2"]
    # artifacts live under the explicit artifact root, not ./mlruns
    assert run.info.artifact_uri.startswith(str(root / "mlartifacts"))
    assert not (root / "mlruns").exists()


def test_long_tailed_run_logs_class_counts_and_per_class_metrics(compose_cfg, root) -> None:
    with compose_cfg("trainer=smoke", "data.imbalance_ratio=10") as cfg:
        metrics = train(cfg)
    natural, tailed = DigitsDataModule(seed=0), DigitsDataModule(seed=0, imbalance_ratio=10)
    natural.setup(), tailed.setup()
    counts = tailed.train_class_counts
    assert counts[9] == max(natural.train_class_counts) // 10  # the long tail trained on ...
    run = only_run(root)
    assert run.data.params["data.train_class_counts"] == str(counts)  # ... is in the run
    assert run.data.params["data.imbalance_ratio"] == "10"
    per_class = [f"{stage}/recall/{c}" for stage in ("val", "test") for c in range(10)]
    for key in ("val/f1_macro", "val/recall_macro", "test/f1_macro", "test/recall_macro",
                *per_class):  # fmt: skip
        assert 0.0 <= run.data.metrics[key] <= 1.0, key
    assert run.data.metrics["test/recall/9"] == pytest.approx(metrics["test/recall/9"])
    assert not any(k.startswith("train/") and "recall" in k for k in run.data.metrics)


def test_crash_ends_failed_with_reason(compose_cfg, root) -> None:
    crash = "+callbacks.crash={_target_: tests.injected.RaiseAtStep, step: 1}"
    with compose_cfg("trainer=smoke", crash) as cfg, pytest.raises(RuntimeError):
        train(cfg)
    run = only_run(root)
    assert run.info.status == "FAILED"
    assert run.data.tags["failure"] == "exception"
    assert run.data.tags["error"] == "injected failure at step 1"
    client = MlflowClient(tracking_uri(root))
    assert "error/traceback.txt" in artifact_paths(client, run.info.run_id)
    # what was logged before the crash is kept: params and the first step's loss
    assert "model.act" in run.data.params
    assert len(client.get_metric_history(run.info.run_id, "train/loss_step")) == 1


def test_long_param_values_are_logged_whole(compose_cfg, root) -> None:
    long = "x" * 300  # Lightning's own log_hyperparams would cut this at 250 characters
    with compose_cfg("trainer=smoke", f"optimized_metric={long}") as cfg:
        train(cfg)
    assert only_run(root).data.params["optimized_metric"] == long


def test_nonfinite_loss_stops_the_run(compose_cfg, root) -> None:
    overrides = [
        "trainer=smoke",
        "trainer.limit_train_batches=20",
        "model.act=relu",
        "optimizer=sgd",
        "optimizer.lr=1e12",
        "scheduler=none",
    ]
    with compose_cfg(*overrides) as cfg, pytest.raises(NonFiniteLossError):
        train(cfg)
    run = only_run(root)
    assert run.info.status == "FAILED"
    assert run.data.tags["failure"] == "nonfinite_loss"
    assert "non-finite training loss" in run.data.tags["error"]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_killed_run_ends_killed_and_keeps_what_was_logged(sig, root) -> None:
    # 5 steps an epoch: step 10 starts the third epoch, so two have been validated and
    # checkpointed when the run pauses there and gets the signal.
    cmd = [sys.executable, "-m", "ablab.train", "trainer=smoke", "trainer.max_epochs=1000",
           "trainer.limit_train_batches=5", "scheduler=none", pause_at(10, root)]  # fmt: skip
    env = {
        "ABLAB_ROOT": str(root),
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
    }
    log = root / "train.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_paused(root, proc, log)
        proc.send_signal(sig)
        release(root)  # SIGINT has already stopped it; SIGTERM stops at the end of this step
        proc.wait(timeout=SAFETY_TIMEOUT_S)
    finally:
        proc.kill()
    run = only_run(root)
    client = MlflowClient(tracking_uri(root))
    assert proc.returncode != 0
    assert run.info.status == "KILLED", (run.data.tags, log.read_text()[-3000:])
    assert run.data.tags["killed_by"] == sig.name
    assert len(client.get_metric_history(run.info.run_id, "val/acc")) == 2
    assert any(p.endswith(".ckpt") for p in artifact_paths(client, run.info.run_id))


@pytest.mark.slow
def test_multirun_sweep_tracks_one_run_per_job(root) -> None:
    args = ["ablab.train", "-m", "trainer=smoke", "seed=0,1"]
    proc = run_module(args, root, timeout=SAFETY_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(tracking_uri(root))
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    [parent] = [r for r in runs if r.data.tags.get("sweep") == "parent"]
    jobs = [r for r in runs if r is not parent]
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in jobs)
    assert sorted(r.data.params["seed"] for r in jobs) == ["0", "1"]
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert {r.info.run_name for r in jobs} == {"lenet5-digits-s0", "lenet5-digits-s1"}
