"""Resume: a job folder continues its own MLflow run, whatever stopped it.

The real entry point runs in a subprocess that the tests pause at a known step (``PauseAtStep``)
and then kill -9 or send SIGTERM; rerunning the same command must continue the same run, with
each metric step recorded once and, because data order, augmentation and RNG state are restored,
the same values as a run that was never interrupted.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from mlflow import MlflowClient

from ablab.config import job_key
from ablab.errors import ConfigError
from ablab.training.job import JOB_FILE
from ablab.training.lifecycle import train
from conftest import tracking_uri
from jobs import SHORT_RUN, finish, histories, only_run, pause_at, start, wait_for_pause

TRAIN = SHORT_RUN
# One worker runs the module, so the uninterrupted reference run is trained once.
pytestmark = pytest.mark.xdist_group("resume")


def test_job_key_names_the_folder_after_the_overrides() -> None:
    assert job_key([]) == "default"
    assert job_key(["seed=1", "model=resnet20"]) == job_key(["model=resnet20", "seed=1"])
    assert job_key(["model=resnet20", "seed=1"]) == "model=resnet20,seed=1"
    # where things are written does not change what the job computes
    assert job_key(["seed=1", "paths.log_dir=/tmp/x", "logger.tracking_uri=http://h"]) == "seed=1"
    assert job_key(["seed=1", "resume=false"]) == "seed=1"
    # path-unsafe or long keys become a stable hash
    unsafe = job_key(["data.root=/data/cifar"])
    assert unsafe.startswith("h") and "/" not in unsafe
    assert unsafe == job_key(["data.root=/data/cifar"]) != job_key(["data.root=/data/other"])
    assert job_key([f"x{i}=1" for i in range(40)]).startswith("h")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[tuple]]:
    """Per-step metrics of the same job never interrupted (same overrides but the pause)."""
    root = tmp_path_factory.mktemp("reference")
    code, out = finish(start(root))
    assert code == 0, out[-3000:]
    client = MlflowClient(tracking_uri(root))
    return histories(client, only_run(client).info.run_id)


@pytest.mark.slow
def test_kill_9_then_rerun_continues_the_same_run(root: Path, uninterrupted) -> None:
    # step 7 is in epoch 2: last.ckpt is from step 5, steps 5-6 are logged and then replayed
    pause = pause_at(7, root)
    proc = start(root, pause)
    wait_for_pause(root, proc)
    os.kill(proc.pid, signal.SIGKILL)
    assert finish(proc)[0] == -signal.SIGKILL
    client = MlflowClient(tracking_uri(root))
    killed = only_run(client)
    assert killed.info.status == "RUNNING"  # kill -9 leaves no chance to say otherwise
    steps_before = {s for s, _ in histories(client, killed.info.run_id)["train/loss_step"]}
    # Metrics reach the store in batches, at the latest at each epoch start (and what a
    # checkpoint covers is in the checkpoint too): steps 5-6 may have died in memory; the rerun
    # trains and logs them again.
    assert set(range(5)) <= steps_before <= set(range(7))

    code, out = finish(start(root, pause))
    assert code == 0, out[-3000:]
    run = only_run(client)
    job = json.loads(next((root / "outputs" / "runs").glob(f"*/{JOB_FILE}")).read_text())
    assert run.info.run_id == killed.info.run_id == job["run_id"]
    assert run.info.status == "FINISHED"
    assert run.data.tags["attempt"] == "2"
    resumed = histories(client, run.info.run_id)
    for key, points in resumed.items():
        steps = [s for s, _ in points]
        assert steps == sorted(set(steps)), f"{key}: a step recorded twice"
        assert steps == [s for s, _ in uninterrupted[key]], f"{key}: steps missing"
        # data order, dropout and augmentation draws continue exactly: same values
        assert [v for _, v in points] == pytest.approx([v for _, v in uninterrupted[key]])


@pytest.mark.slow
def test_sigterm_saves_last_ckpt_and_ends_killed_preempted(root: Path, uninterrupted) -> None:
    # step 7 is mid-epoch 2: the checkpoint is the one SIGTERM writes, not the epoch-end one
    pause = pause_at(7, root)
    proc = start(root, pause)
    wait_for_pause(root, proc)
    proc.send_signal(signal.SIGTERM)
    (root / "release").touch()  # the step finishes, then training stops at the batch boundary
    code, out = finish(proc)
    assert code == 128 + signal.SIGTERM, out[-3000:]
    assert "ablab: preempted by SIGTERM" in out
    client = MlflowClient(tracking_uri(root))
    stopped = only_run(client)
    assert stopped.info.status == "KILLED"
    assert stopped.data.tags["preempted"] == "SIGTERM"
    assert stopped.data.tags["killed_by"] == "SIGTERM"
    (last,) = (root / "outputs" / "runs").glob("*/checkpoints/last.ckpt")
    import torch

    assert torch.load(last, weights_only=True)["global_step"] == 8  # step 7 completed

    code, out = finish(start(root, pause))
    assert code == 0, out[-3000:]
    run = only_run(client)
    assert run.info.run_id == stopped.info.run_id and run.info.status == "FINISHED"
    assert "preempted" not in run.data.tags and "killed_by" not in run.data.tags
    resumed = histories(client, run.info.run_id)
    for key, points in resumed.items():
        steps = [s for s, _ in points]
        assert steps == [s for s, _ in uninterrupted[key]], f"{key}: steps missing or repeated"
        # Not the same values from step 8 on: Lightning restarts a plain DataLoader from the
        # start of the epoch it resumes mid-way, so that epoch's remaining batches differ.


def test_a_changed_config_refuses_to_resume(compose_cfg, root: Path) -> None:
    with compose_cfg(*TRAIN, "trainer.max_epochs=1") as cfg:
        train(cfg)
    # the same job folder, now with another learning rate (e.g. an edited config file)
    with compose_cfg(*TRAIN, "trainer.max_epochs=1", "optimizer.lr=0.5") as cfg:
        client = MlflowClient(tracking_uri(root))
        run = only_run(client)
        client.set_terminated(run.info.run_id, "KILLED")  # unfinished: it would be resumed
        with pytest.raises(ConfigError, match=r"config changed \(optimizer.lr: 0.01 -> 0.5\)"):
            train(cfg)
    assert only_run(client).info.status == "KILLED"  # nothing was written to the run


def test_a_finished_job_is_reported_not_retrained(compose_cfg, root: Path, capsys) -> None:
    with compose_cfg(*TRAIN, "trainer.max_epochs=1") as cfg:
        first = train(cfg)
        again = train(cfg)
    assert "job already finished" in capsys.readouterr().out
    assert again == pytest.approx(first)  # the test metrics and the best validation score
    client = MlflowClient(tracking_uri(root))
    only_run(client)


def test_resume_false_sets_the_old_run_aside(compose_cfg, root: Path) -> None:
    with compose_cfg(*TRAIN, "trainer.max_epochs=1") as cfg:
        train(cfg)
        job_dir = Path(cfg.paths.output_dir)
    old = json.loads((job_dir / JOB_FILE).read_text())["run_id"]
    with compose_cfg(*TRAIN, "trainer.max_epochs=1", "resume=false") as cfg:
        train(cfg)
    new = json.loads((job_dir / JOB_FILE).read_text())["run_id"]
    assert new != old
    assert (job_dir / "previous" / old / JOB_FILE).exists()
    assert list((job_dir / "previous" / old / "checkpoints").glob("*.ckpt"))
    client = MlflowClient(tracking_uri(root))
    statuses = {r.info.run_id: r.info.status for r in client.search_runs(["1"])}
    assert statuses == {old: "FINISHED", new: "FINISHED"}


def test_a_checkpoint_write_cut_short_leaves_the_previous_file(tmp_path: Path, monkeypatch) -> None:
    import torch

    from ablab.training.checkpoint_io import AtomicCheckpointIO

    io, path = AtomicCheckpointIO(), tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"global_step": 5}, path)
    real_save = torch.save

    def killed_mid_write(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt  # as SIGKILL would, minus the process

    monkeypatch.setattr(torch, "save", killed_mid_write)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"global_step": 8}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert io.load_checkpoint(path)["global_step"] == 5
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no partial file left
    io.save_checkpoint({"global_step": 8}, path)
    assert io.load_checkpoint(path)["global_step"] == 8
