"""``ablab eval``: a checkpoint tested with its run's config, logged where it says, in real
processes on a real store; a run's status is never changed by evaluating it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from ablab.errors import ConfigError
from ablab.training.evaluate import evaluate
from ablab.training.lifecycle import train
from conftest import REPO, tracking_uri
from jobs import only_run

TRAIN = ["trainer=smoke", "trainer.system_metrics_interval=null", "logger.log_model=false"]


def ablab_eval(root: Path, *arguments: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "ABLAB_ROOT": str(root), "MLFLOW_DISABLE_TELEMETRY": "true"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([sys.executable, "-m", "ablab.cli", "eval", *arguments], cwd=root,
                          env=env, capture_output=True, text=True, timeout=600)  # fmt: skip


def all_runs(client: MlflowClient) -> list:
    ids = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(ids, "", run_view_type=3)


@pytest.mark.slow
def test_eval_logs_into_the_run_keeps_its_status_or_makes_a_tagged_new_run(
    compose_cfg, root: Path
) -> None:
    with compose_cfg(*TRAIN) as cfg:
        train(cfg)
    client = MlflowClient(tracking_uri(root))
    trained = only_run(client)
    run_id, tested = trained.info.run_id, trained.data.metrics["test/acc"]
    (best,) = root.glob("**/checkpoints/epoch*.ckpt")

    done = ablab_eval(root, f"ckpt_path={best}")  # the command, in its own process
    assert done.returncode == 0, done.stderr[-3000:]
    run = only_run(client)  # logged into the checkpoint's own run
    assert run.info.status == "FINISHED" and run.data.tags["evaluated_checkpoint"] == str(best)
    # the same weights on the same test split: the value training logged, once more
    assert [m.value for m in client.get_metric_history(run_id, "test/acc")] == [tested, tested]

    # a run a failure ended stays what it is: evaluating it must not make it one reports count
    client.set_terminated(run_id, "KILLED")
    killed = client.get_run(run_id).info
    evaluate([f"ckpt_path={run_id}"])  # a run id: its best checkpoint
    after = client.get_run(run_id).info
    assert (after.status, after.end_time) == ("KILLED", killed.end_time)

    evaluate([f"ckpt_path={run_id}", "new_run=true"])
    (new,) = [r for r in all_runs(client) if r.info.run_id != run_id]
    assert new.info.status == "FINISHED"
    assert new.data.tags["evaluates"] == run_id and new.data.tags["ablab.kind"] == "eval"
    assert new.data.params["model.act"] == trained.data.params["model.act"]
    assert new.data.metrics["test/acc"] == tested
    assert client.get_run(run_id).info.status == "KILLED"

    for arguments, says in [
        ([f"ckpt_path={root}/missing.ckpt"], "no such checkpoint file"),
        (["ckpt_path=0123abcd"], "neither a checkpoint file nor a run"),
        ([f"ckpt_path={run_id}", "data=cifar10"], "not group choices"),
        ([f"ckpt_path={run_id}", "new_run=maybe"], "expected true or false"),
        ([], "needs ckpt_path="),
    ]:
        with pytest.raises(ConfigError, match=says):
            evaluate(arguments)
    assert len(all_runs(client)) == 2  # no run from any refusal
    refused = ablab_eval(root, "ckpt_path=0123abcd")  # and the command says so in one line
    assert refused.returncode == 2 and refused.stderr.strip().count("\n") == 0, refused.stderr
