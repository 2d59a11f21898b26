"""Sweeps under faults: a parent that cannot be created, two sweeps on one new store, a sweep
stopped by SIGTERM and the same command run again.

Real ``python -m ablab.train -m`` processes, real sqlite stores and real signals; the tests wait
on events (a job's ``paused`` file, process exit), never on wall-clock deadlines.
"""

from __future__ import annotations

import itertools
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from conftest import REPO, tracking_uri
from injected import SAFETY_TIMEOUT_S, wait_paused

# Epochs of 5 steps with a checkpoint at every epoch end (resume needs one).
FAST = ["trainer=smoke", "trainer.limit_train_batches=5", "callbacks.batch_preview=null",
        "logger.log_model=false", "callbacks.progress_bar=null",
        "trainer.system_metrics_interval=null"]  # fmt: skip
_sweeps = itertools.count()


def env_for(root: Path | None) -> dict[str, str]:
    """The test's environment without a store or root of its own (``root`` None: neither set)."""
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "src"), env.get("PYTHONPATH", "")])
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("ABLAB_ROOT", None)
    if root is not None:
        env["ABLAB_ROOT"] = str(root)
    return env


def sweep(root: Path, *overrides: str) -> subprocess.Popen:
    """The sweep's stderr goes to a file: a pipe nobody reads while a job is paused could fill."""
    log = root / f"sweep-{next(_sweeps)}.err"
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ablab.train", "-m", *FAST, *overrides],
            cwd=root,
            env=env_for(root),
            stdout=subprocess.DEVNULL,
            stderr=err,
            text=True,
        )
    proc.log = log
    return proc


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    proc.wait(timeout=SAFETY_TIMEOUT_S)
    return proc.returncode, proc.log.read_text(errors="replace")


def runs_of(root: Path):
    client = MlflowClient(tracking_uri(root))
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    parents = [r for r in runs if r.data.tags.get("sweep") == "parent"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return client, parents, children


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides",
    [
        ["logger.tracking_uri=http://127.0.0.1:1", "seed=0,1"],  # an unreachable server
        ["hydra/sweeper=study"],  # a study sweep without a study
    ],
    ids=["unreachable-server", "no-study"],
)
def test_a_sweep_that_cannot_create_its_parent_stops_before_any_job(
    tmp_path: Path, overrides: list[str]
) -> None:
    code, err = finish(sweep(tmp_path, *overrides))
    assert code == 2, err[-3000:]
    [line] = error_lines(err)  # one line, no traceback, no Hydra warning
    assert line.startswith("ablab: error: the sweep cannot start: "), line
    assert not (tmp_path / "outputs").exists()  # no sweep folder, no job folder
    assert not (tmp_path / "mlflow.db").exists() or runs_of(tmp_path)[1] == []  # no parent


@pytest.mark.slow
def test_two_sweeps_started_together_on_a_new_store_both_succeed(tmp_path: Path) -> None:
    # Both start before either has created the store: the first migrates it under a lock.
    procs = [sweep(tmp_path, f"model.act={act}", "seed=0,1") for act in ("relu", "tanh")]
    for proc in procs:
        code, err = finish(proc)
        assert code == 0, err[-3000:]
    _, parents, children = runs_of(tmp_path)
    assert len(parents) == 2 and {p.info.status for p in parents} == {"FINISHED"}
    assert len(children) == 4 and {c.info.status for c in children} == {"FINISHED"}
    for parent in parents:
        mine = [c for c in children if c.data.tags["mlflow.parentRunId"] == parent.info.run_id]
        assert sorted(c.data.tags["sweep_job"] for c in mine) == ["0", "1"]
        assert len({c.data.params["model.act"] for c in mine}) == 1  # one sweep each


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One sweep of two jobs, stopped by SIGTERM in job 1's second epoch, then the same command
    run again. Job 0 (1 epoch) finishes; job 1 (3 epochs) pauses at step 7, gets SIGTERM, saves
    ``last.ckpt`` and ends KILLED. What each phase left is kept for the tests below."""
    root = tmp_path_factory.mktemp("interrupted")
    pause = ("+callbacks.pause={_target_: tests.injected.PauseAtStep, step: 7, "
             f"paused: '{root}/paused', release: '{root}/release'}}")  # fmt: skip
    command = ["trainer.max_epochs=1,3", pause]
    proc = sweep(root, *command)
    wait_paused(root, proc, proc.log)
    proc.send_signal(signal.SIGTERM)
    (root / "release").touch()  # the step ends, the job saves last.ckpt and stops
    code, err = finish(proc)
    client, parents, children = runs_of(root)
    [sweep_dir] = (root / "outputs" / "multiruns").glob("*/*/")
    stopped = {
        "code": code,
        "stderr": err,
        "parents": parents,
        "children": children,
        "parent_metrics": client.get_run(parents[0].info.run_id).data.metrics if parents else {},
        "script": (sweep_dir / "rerun_failed.sh").read_text(),
    }
    code, err = finish(sweep(root, *command))  # the same command again
    client, parents, children = runs_of(root)
    again = {
        "code": code,
        "stderr": err,
        "parents": parents,
        "children": children,
        "parent_metrics": client.get_run(parents[0].info.run_id).data.metrics,
        "folders": sorted(p.name for p in (root / "outputs" / "multiruns").glob("*/*/")),
    }
    return {"root": root, "sweep_dir": sweep_dir, "stopped": stopped, "again": again}


@pytest.mark.slow
def test_sigterm_ends_the_parent_killed_and_writes_rerun_failed(interrupted) -> None:
    stopped, sweep_dir = interrupted["stopped"], interrupted["sweep_dir"]
    assert stopped["code"] == 128 + signal.SIGTERM, stopped["stderr"][-3000:]
    assert "ablab: sweep stopped by SIGTERM: 1 of 2 jobs did not finish" in stopped["stderr"]
    [parent] = stopped["parents"]
    assert parent.info.status == "KILLED" and parent.data.tags["killed_by"] == "SIGTERM"
    metrics = stopped["parent_metrics"]
    assert (metrics["jobs_total"], metrics["jobs_finished"], metrics["jobs_killed"]) == (2, 1, 1)
    status = {c.data.tags["sweep_job"]: c.info.status for c in stopped["children"]}
    assert status == {"0": "FINISHED", "1": "KILLED"}
    # one command, for job 1, pinned to the sweep's store, root and the job's own folder
    [line] = [ln for ln in stopped["script"].splitlines() if "-m ablab.train" in ln]
    args, root = shlex.split(line), interrupted["root"]  # as the shell passes them on
    assert f"logger.tracking_uri='{tracking_uri(root)}'" in args  # quoted for Hydra too
    assert f"paths.root_dir='{root}'" in args
    assert f"hydra.run.dir='{sweep_dir / '1'}'" in args
    assert "trainer.max_epochs=3" in args


@pytest.mark.slow
def test_the_same_command_continues_the_interrupted_sweep_under_its_parent(interrupted) -> None:
    stopped, again = interrupted["stopped"], interrupted["again"]
    assert again["code"] == 0, again["stderr"][-3000:]
    assert again["folders"] == [interrupted["sweep_dir"].name]  # the same sweep folder
    [parent] = again["parents"]  # no second parent
    assert parent.info.run_id == stopped["parents"][0].info.run_id
    assert parent.info.status == "FINISHED" and parent.data.tags["attempt"] == "2"
    assert "killed_by" not in parent.data.tags
    # the same two children: job 0 reported, job 1 resumed from its last.ckpt into its own run
    before = {c.data.tags["sweep_job"]: c.info.run_id for c in stopped["children"]}
    after = {c.data.tags["sweep_job"]: c for c in again["children"]}
    assert {job: c.info.run_id for job, c in after.items()} == before
    assert {c.info.status for c in after.values()} == {"FINISHED"}
    assert {c.data.tags["mlflow.parentRunId"] for c in after.values()} == {parent.info.run_id}
    assert after["1"].data.tags["attempt"] == "2"
    metrics = again["parent_metrics"]  # every job counted once
    assert (metrics["jobs_total"], metrics["jobs_finished"], metrics["jobs_killed"]) == (2, 2, 0)
