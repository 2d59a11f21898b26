"""ablab on a real one-node SLURM cluster (tests/slurm.py): plain jobs, a requeue, and a Hydra
multirun through the submitit launcher (conf/hydra/launcher/slurm.yaml) as MLflow parent and
child runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from conftest import run_module, tracking_uri
from slurm import SlurmCluster, slurm_cluster

__all__ = ["slurm_cluster"]  # the fixture, imported so pytest finds it here

# One xdist worker holds the session's cluster and runs every test that uses it.
pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.xdist_group("slurm")]


def test_cluster_runs_a_job(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    out = tmp_path / "hello.txt"
    job = slurm_cluster.sbatch(f"--output={tmp_path}/%j.out", f"--wrap=echo $SLURM_JOB_ID > {out}")
    state = slurm_cluster.wait_job(job, timeout=60)
    assert state["JobState"] == "COMPLETED", state
    assert out.read_text().strip() == job


def test_requeue_reruns_the_job(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    record = tmp_path / "restarts.txt"
    script = tmp_path / "job.sh"
    # The first attempt sleeps until it is requeued; the rerun records its count and ends.
    script.write_text(
        "#!/bin/bash\n"
        f'echo "${{SLURM_RESTART_COUNT:-0}}" >> {record}\n'
        'if [ "${SLURM_RESTART_COUNT:-0}" = 0 ]; then sleep 120; fi\n'
    )
    job = slurm_cluster.sbatch(f"--output={tmp_path}/%j.out", "--requeue", str(script))
    slurm_cluster.wait_for(lambda: record.exists() and record.read_text(), 60, "the job to start")
    slurm_cluster.requeue(job)
    state = slurm_cluster.wait_job(job, timeout=90)
    assert state["JobState"] == "COMPLETED", state
    assert state["Restarts"] == "1"
    assert record.read_text().split() == ["0", "1"]


def test_submitit_sweep_on_the_cluster(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    args = [
        "ablab.train",
        "-m",
        "hydra/launcher=slurm",
        "hydra.launcher.partition=debug",
        # A CPU-only cluster has no GPU GRES: any --gpus-per-node request is unsatisfiable.
        "hydra.launcher.gpus_per_node=null",
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.mem_gb=2",
        "hydra.launcher.timeout_min=10",
        "trainer=smoke",
        "callbacks.batch_preview=null",
        "callbacks.progress_bar=null",
        "logger.log_model=false",
        "seed=0,1",
        f"paths.log_dir={tmp_path}/outputs",
        f"logger.tracking_uri={tracking_uri(tmp_path)}",
    ]
    proc = run_module(args, tmp_path, timeout=600)
    submitit_logs = "\n".join(
        f"--- {p}\n{p.read_text(errors='replace')[-1500:]}"
        for p in sorted((tmp_path / "outputs").glob("multiruns/*/*/.submitit/*/*.err"))
    )
    assert proc.returncode == 0, proc.stderr[-3000:] + submitit_logs

    client = MlflowClient(tracking_uri(tmp_path))
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    [parent] = [r for r in runs if r.data.tags.get("sweep") == "parent"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 2
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert {c.info.status for c in children} == {"FINISHED"}
    assert sorted(c.data.tags["factor.seed"] for c in children) == ["0", "1"]
    assert all(c.data.params["seed"] == c.data.tags["factor.seed"] for c in children)
    assert parent.info.status == "FINISHED"
    # Each child ran as a task of one SLURM job array, which the controller saw complete.
    folders = (tmp_path / "outputs").glob("multiruns/*/*/.submitit/*_*")
    tasks = sorted(p.name for p in folders if p.is_dir())  # <array job>_<task>
    assert len(tasks) == 2 and len({t.split("_")[0] for t in tasks}) == 1, tasks
    assert {slurm_cluster.job_state(t)["JobState"] for t in tasks} == {"COMPLETED"}
