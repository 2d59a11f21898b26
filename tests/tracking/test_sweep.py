"""Multiruns as MLflow parent and child runs: factors, failures, reruns."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from ablab.tracking.sweep import swept_keys
from conftest import run_module, tracking_uri

FAST = ["trainer=smoke", "callbacks.batch_preview=null", "callbacks.model_checkpoint=null",
        "logger.log_model=false", "callbacks.progress_bar=null"]  # fmt: skip


def runs_of(root):
    client = MlflowClient(tracking_uri(root))
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    parents = [r for r in runs if r.data.tags.get("sweep") == "parent"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return client, parents, children


def test_swept_keys() -> None:
    overrides = ["trainer=smoke", "model.act=relu,tanh", "seed=range(3)", "+x=choice(1,2)"]
    assert swept_keys(overrides) == ["model.act", "seed", "+x"]


@pytest.mark.slow
def test_parallel_2x2_sweep_is_one_parent_with_four_tagged_children(root) -> None:
    args = [
        "ablab.train",
        "-m",
        "hydra/launcher=local_parallel",
        *FAST,
        "model.act=relu,tanh",
        "seed=0,1",
    ]
    proc = run_module(args, root, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client, [parent], children = runs_of(root)
    assert len(children) == 4
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    factors = sorted(
        (c.data.tags["factor.model.act"], c.data.tags["factor.seed"]) for c in children
    )
    assert factors == [("relu", "0"), ("relu", "1"), ("tanh", "0"), ("tanh", "1")]
    assert all(c.data.params["model.act"] == c.data.tags["factor.model.act"] for c in children)
    assert sorted(c.data.tags["sweep_job"] for c in children) == ["0", "1", "2", "3"]
    assert {c.info.status for c in children} == {"FINISHED"}
    assert parent.info.status == "FINISHED"
    assert parent.data.params["factors"] == "model.act,seed"
    metrics = client.get_run(parent.info.run_id).data.metrics
    assert (metrics["jobs_total"], metrics["jobs_finished"], metrics["jobs_failed"]) == (4, 4, 0)


@pytest.mark.slow
def test_a_failing_job_does_not_stop_the_sweep_and_can_be_rerun(root) -> None:
    # lr 1e12 makes the loss non-finite at the first steps: that job fails, the other goes on.
    args = ["ablab.train", "-m", *FAST, "trainer.limit_train_batches=20", "model.act=relu",
            "optimizer=sgd", "scheduler=none", "optimizer.lr=0.01,1e12"]  # fmt: skip
    proc = run_module(args, root, timeout=600)
    assert proc.returncode == 1
    assert "1 of 2 sweep jobs did not finish" in proc.stderr, proc.stderr[-1500:]
    _, [parent], children = runs_of(root)
    status = {c.data.params["optimizer.lr"]: c for c in children}
    assert status["0.01"].info.status == "FINISHED"
    assert status["1000000000000.0"].info.status == "FAILED"
    assert status["1000000000000.0"].data.tags["failure"] == "nonfinite_loss"
    assert parent.info.status == "FAILED" and parent.data.tags["jobs_failed"] == "1"
    [sweep_dir] = {c.data.tags["sweep_dir"] for c in children}
    script = f"{sweep_dir}/rerun_failed.sh"
    lines = [line for line in Path(script).read_text().splitlines() if "-m ablab.train" in line]
    assert len(lines) == 1 and "optimizer.lr=1000000000000.0" in lines[0]
    records = [json.loads(p.read_text()) for p in sorted(Path(sweep_dir).glob("*/job_status.json"))]
    assert sorted(r["status"] for r in records) == ["FAILED", "FINISHED"]
    # From another folder, with neither MLFLOW_TRACKING_URI nor ABLAB_ROOT: the script pins the
    # sweep's store, root and the job's own folder, so the job continues its own child run.
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("ABLAB_ROOT", "MLFLOW_TRACKING_URI")}
    rerun = subprocess.run(["sh", script], cwd=elsewhere, capture_output=True, text=True,
                           timeout=300, env=env)  # fmt: skip
    assert rerun.returncode != 0  # the same job fails the same way, in the same child run
    assert not (elsewhere / "mlflow.db").exists() and not (elsewhere / "outputs").exists()
    _, _, again = runs_of(root)
    assert len(again) == 2
    assert {c.data.tags["mlflow.parentRunId"] for c in again} == {parent.info.run_id}
    [rerun_child] = [c for c in again if c.data.tags["sweep_job"] == "1"]
    assert rerun_child.info.run_id == status["1000000000000.0"].info.run_id
    assert rerun_child.info.status == "FAILED" and rerun_child.data.tags["attempt"] == "2"
    assert rerun_child.data.tags["factor.optimizer.lr"] == "1000000000000.0"


@pytest.mark.slow
def test_optuna_search_maximises_the_best_validation_accuracy(root) -> None:
    fast = [o for o in FAST if not o.startswith("callbacks.model_checkpoint")]
    args = ["ablab.train", "-m", "hparams_search=optuna", "hydra.sweeper.n_trials=3", *fast]
    proc = run_module(args, root, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _, [parent], children = runs_of(root)
    assert len(children) == 3 and {c.info.status for c in children} == {"FINISHED"}
    assert parent.data.params["factors"] == "optimizer.lr,optimizer.weight_decay,data.batch_size"
    for child in children:  # each trial is tagged with the values it tried
        for key in ("optimizer.lr", "optimizer.weight_decay", "data.batch_size"):
            assert child.data.tags[f"factor.{key}"] == child.data.params[key]
    (results,) = (root / "outputs" / "multiruns").glob("*/*/optimization_results.yaml")
    best = yaml.safe_load(results.read_text())
    # one epoch: the best validation accuracy is the logged one; the sweeper picked the top trial
    accuracy = {c.info.run_id: c.data.metrics["val/acc"] for c in children}
    assert best["best_value"] == pytest.approx(max(accuracy.values()))
    tops = [c for c in children if accuracy[c.info.run_id] == max(accuracy.values())]
    lrs = [float(c.data.params["optimizer.lr"]) for c in tops]  # ties: the sweeper keeps one
    assert any(best["best_params"]["optimizer.lr"] == pytest.approx(lr) for lr in lrs)
