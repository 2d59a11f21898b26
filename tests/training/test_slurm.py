"""ablab on a real one-node SLURM cluster (tests/slurm.py): plain jobs, a requeue, and a Hydra
multirun through the submitit launcher (conf/hydra/launcher/slurm.yaml) as MLflow parent and
child runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from conftest import REPO, tracking_uri
from injected import SAFETY_TIMEOUT_S, pause_at, release
from slurm import SlurmCluster, slurm_cluster

__all__ = ["slurm_cluster"]  # the fixture, imported so pytest finds it here

# One xdist worker holds the session's cluster and runs every test that uses it.
pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.xdist_group("slurm")]


def test_cluster_runs_a_job(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    out = tmp_path / "hello.txt"
    job = slurm_cluster.sbatch(f"--output={tmp_path}/%j.out", f"--wrap=echo $SLURM_JOB_ID > {out}")
    state = slurm_cluster.wait_job(job, timeout=SAFETY_TIMEOUT_S)
    assert state["JobState"] == "COMPLETED", state
    assert out.read_text().strip() == job


def test_requeue_reruns_the_job(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    record = tmp_path / "restarts.txt"
    script = tmp_path / "job.sh"
    # The first attempt sleeps until it is requeued (far longer than any wait for that); the
    # rerun records its count and ends.
    script.write_text(
        "#!/bin/bash\n"
        f'echo "${{SLURM_RESTART_COUNT:-0}}" >> {record}\n'
        f'if [ "${{SLURM_RESTART_COUNT:-0}}" = 0 ]; then sleep {2 * SAFETY_TIMEOUT_S:.0f}; fi\n'
    )
    job = slurm_cluster.sbatch(f"--output={tmp_path}/%j.out", "--requeue", str(script))
    slurm_cluster.wait_for(
        lambda: record.exists() and record.read_text(), SAFETY_TIMEOUT_S, "the job to start"
    )
    slurm_cluster.requeue(job)
    state = slurm_cluster.wait_job(job, timeout=SAFETY_TIMEOUT_S)
    assert state["JobState"] == "COMPLETED", state
    assert state["Restarts"] == "1"
    assert record.read_text().split() == ["0", "1"]


def test_submitit_sweep_with_a_requeued_job_resumes_it_in_its_run(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    """A 2-job sweep as a SLURM array; one job is requeued mid-training (SIGTERM, as a cluster
    reclaiming the node would), saves last.ckpt, and its rerun finishes in the same MLflow run."""
    pause = pause_at(7, tmp_path)
    args = [
        "ablab.train",
        "-m",
        "hydra/launcher=slurm",
        "hydra.launcher.partition=debug",
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.mem_gb=2",
        "hydra.launcher.timeout_min=10",
        "trainer=smoke",
        "trainer.max_epochs=3",
        "trainer.limit_train_batches=5",
        "callbacks.batch_preview=null",
        "callbacks.progress_bar=null",
        "logger.log_model=false",
        pause,
        "seed=0,1",
        f"paths.log_dir={tmp_path}/outputs",
        f"logger.tracking_uri={tracking_uri(tmp_path)}",
    ]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    sweep = subprocess.Popen(
        [sys.executable, "-m", *args], cwd=tmp_path, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    paused = tmp_path / "paused"

    def job_paused() -> str:
        if sweep.poll() is not None:  # the sweep ended without a job pausing: fail now
            raise AssertionError(f"sweep exited {sweep.returncode}:\n{sweep.stderr.read()[-3000:]}")
        return paused.exists() and paused.read_text()

    try:
        job = slurm_cluster.wait_for(job_paused, SAFETY_TIMEOUT_S, "a job to pause")
        slurm_cluster.requeue(job)  # SIGTERM now, then SIGKILL after KillWait (5 s)
        release(tmp_path)  # the paused step ends; training stops after it
        _, stderr = sweep.communicate(timeout=SAFETY_TIMEOUT_S)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    submitit_logs = "\n".join(
        f"--- {p}\n{p.read_text(errors='replace')[-1500:]}"
        for p in sorted((tmp_path / "outputs").glob("multiruns/*/*/.submitit/*/*.err"))
    )
    assert sweep.returncode == 0, stderr[-3000:] + submitit_logs
    assert slurm_cluster.job_state(job)["Restarts"] == "1"

    client = MlflowClient(tracking_uri(tmp_path))
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    [parent] = [r for r in runs if r.data.tags.get("sweep") == "parent"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 2  # the requeued job continued its run rather than starting one
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert {c.info.status for c in children} == {"FINISHED"}
    assert sorted(c.data.tags["factor.seed"] for c in children) == ["0", "1"]
    assert parent.info.status == "FINISHED"
    [requeued] = [c for c in children if c.data.tags.get("attempt") == "2"]
    assert requeued.data.tags["slurm_job_id"].replace("_", "") != ""
    assert "preempted" not in requeued.data.tags  # cleared when the rerun picked the run up
    for child in children:  # both: every step once, none missing (3 epochs x 5 steps)
        history = client.get_metric_history(child.info.run_id, "train/loss_step")
        assert sorted(m.step for m in history) == list(range(15))
    # The first attempt stopped at a batch boundary and saved last.ckpt before SLURM's SIGKILL.
    log = "\n".join(
        p.read_text(errors="replace")
        for p in (tmp_path / "outputs").glob("multiruns/*/*/.submitit/*/*.err")
    )
    assert "ablab: preempted by SIGTERM" in log, log[-3000:]
    # Each child ran as a task of one SLURM job array, which the controller saw complete.
    folders = (tmp_path / "outputs").glob("multiruns/*/*/.submitit/*_*")
    tasks = sorted(p.name for p in folders if p.is_dir())  # <array job>_<task>
    assert len(tasks) == 2 and len({t.split("_")[0] for t in tasks}) == 1, tasks
    assert {slurm_cluster.job_state(t)["JobState"] for t in tasks} == {"COMPLETED"}
