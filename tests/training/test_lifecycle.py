"""The run lifecycle under faults: real processes, real signals, a real sqlite store, and the
states a previous failure leaves behind (a stale folder, a dead process, a save cut short)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from ablab.config import composed
from ablab.locks import FolderLock, process_gone
from ablab.training.job import JOB_FILE, OWNER_KEY
from ablab.training.lifecycle import train
from conftest import run_module, tracking_uri
from jobs import SHORT_RUN, finish, kill_9, pause_at, start, wait_for_pause

# Smaller than SHORT_RUN: one epoch of a few steps, nothing the lifecycle does not need.
ONE_EPOCH = [*SHORT_RUN, "trainer.max_epochs=1", "trainer.limit_train_batches=3"]


def owners(folder: Path) -> dict[str, str | None]:
    """Run id each checkpoint in ``folder`` says it belongs to."""
    return {
        p.name: (torch.load(p, weights_only=True).get(OWNER_KEY) or {}).get("run_id")
        for p in sorted(folder.glob("*.ckpt"))
    }


def runs(root: Path) -> dict[str, object]:
    client = MlflowClient(tracking_uri(root))
    found = client.search_runs([e.experiment_id for e in client.search_experiments()], "")
    return {r.info.run_id: r for r in found}


def test_last_ckpt_is_the_last_epoch_even_when_the_metric_never_improves(
    compose_cfg, root: Path
) -> None:
    # lr 0: validation accuracy never improves after epoch 0, so Lightning's own ModelCheckpoint
    # would leave last.ckpt at epoch 0 and a resumed run would silently redo epochs 1-2.
    with compose_cfg(*SHORT_RUN, "optimizer.lr=0.0", "trainer.limit_train_batches=2") as cfg:
        train(cfg)
        folder = Path(cfg.paths.output_dir) / "checkpoints"
    last = torch.load(folder / "last.ckpt", weights_only=True)
    assert (last["epoch"], last["global_step"]) == (2, 6)
    assert sorted(p.name for p in folder.iterdir()) == ["epoch000.ckpt", "last.ckpt"]
    (run_id,) = runs(root)
    assert set(owners(folder).values()) == {run_id}


@pytest.mark.slow
def test_a_stale_folder_never_takes_over_a_new_run(root: Path) -> None:
    """Run A's checkpoints stay in a folder whose job.json is gone; run B, another config, starts
    there, is killed with kill -9 and rerun: B must never load A's weights or test A's best."""
    folder = root / "shared_folder"
    with composed([*ONE_EPOCH], output_dir=str(folder)) as cfg:  # A, trained in this process
        train(cfg)
    (run_a,) = runs(root)
    assert set(owners(folder / "checkpoints").values()) == {run_a}
    (folder / JOB_FILE).unlink()  # the folder no longer says whose checkpoints these are

    # B: another learning rate, paused in its first epoch (before any checkpoint of its own)
    b_args = (f"hydra.run.dir={folder}", "optimizer.lr=0.003", "trainer.max_epochs=2",
              "trainer.limit_train_batches=3", pause_at(1, root))  # fmt: skip
    proc = start(root, *b_args)
    wait_for_pause(root, proc)
    # A's checkpoints were set aside before B built anything on them; the folder is B's
    assert set(owners(folder / "previous" / run_a / "checkpoints").values()) == {run_a}
    assert not list((folder / "checkpoints").glob("*.ckpt"))
    run_b = json.loads((folder / JOB_FILE).read_text())["run_id"]
    assert run_b != run_a
    assert process_gone(folder) is False  # the running job holds its folder
    kill_9(proc)
    assert process_gone(folder) is True
    assert runs(root)[run_b].info.status == "RUNNING"  # kill -9 left no chance to say otherwise

    code, out = finish(start(root, *b_args))  # the paused file exists: no pause this time
    assert code == 0, out[-3000:]
    assert "left RUNNING by a process that is gone" in out
    after = runs(root)
    assert after[run_b].info.status == "FINISHED" and after[run_b].data.tags["attempt"] == "2"
    assert set(owners(folder / "checkpoints").values()) == {run_b}
    best = next(line for line in out.splitlines() if line.startswith("best checkpoint: "))
    assert str(folder / "checkpoints") in best
    assert torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 6


@pytest.mark.slow
def test_kills_during_checkpoint_saves_leave_no_partial_files_or_copies(root: Path) -> None:
    """Killed while writing last.ckpt, after the epoch's top-k file: the rerun resumes from the
    previous last.ckpt, replays the epoch and overwrites its own top-k file (no -v1 copy)."""
    keep_all = ["callbacks.model_checkpoint.save_top_k=-1", "trainer.limit_train_batches=2"]
    # dumps: epoch 0 top-k (1), last (2); epoch 1 top-k (3), last (4): pause on the 4th
    pause = (
        "+callbacks.pause={_target_: tests.injected.PauseOnSave, call: 4, "
        f"paused: '{root}/paused', release: '{root}/release'}}"
    )
    proc = start(root, *keep_all, pause)
    wait_for_pause(root, proc)
    kill_9(proc)
    (folder,) = (root / "outputs" / "runs").glob("*/checkpoints")
    assert sorted(p.name for p in folder.glob("*.ckpt")) == [
        "epoch000.ckpt",
        "epoch001.ckpt",
        "last.ckpt",
    ]
    assert torch.load(folder / "last.ckpt", weights_only=True)["epoch"] == 0
    # what a kill inside the atomic writer leaves: its temporary file beside the target
    shutil.copy(folder / "last.ckpt", folder / ".last.ckpt.12345.partial")

    code, out = finish(start(root, *keep_all, pause))
    assert code == 0, out[-3000:]
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["epoch000.ckpt", "epoch001.ckpt", "epoch002.ckpt", "last.ckpt"], names
    assert torch.load(folder / "last.ckpt", weights_only=True)["epoch"] == 2


@pytest.mark.slow
def test_first_runs_at_once_on_a_new_store_all_succeed(root: Path) -> None:
    """Several first runs on a store that does not exist yet: one migrates it, the others wait
    (without the lock MLflow's migration fails with 'table _alembic_tmp_* already exists')."""
    fast = [*ONE_EPOCH, "trainer.limit_train_batches=1", "callbacks.model_checkpoint=null",
            "callbacks.batch_preview=null", "logger.log_model=false"]  # fmt: skip
    procs = [start(root, *fast, f"seed={seed}") for seed in range(4)]
    results = [finish(p) for p in procs]
    assert [code for code, _ in results] == [0] * 4, [out[-1500:] for _, out in results]
    assert sorted(r.info.status for r in runs(root).values()) == ["FINISHED"] * 4


def test_a_start_refused_while_the_job_is_still_building_leaves_its_folder(root: Path) -> None:
    """The first process holds the lock but has written nothing but Hydra's files yet: a second
    start of the same job is refused and must not remove the folder (or the lock) under it."""
    folder = root / "building"
    (folder / ".hydra").mkdir(parents=True)
    with FolderLock(folder):
        proc = run_module(["ablab.train", f"hydra.run.dir={folder}", "trainer=smoke"], root)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert "is in use by pid" in proc.stderr.strip().splitlines()[-1]
        assert (folder / "job.lock").exists() and process_gone(folder) is False
    assert process_gone(folder) is True


@pytest.mark.parametrize(
    ("uri", "says"),
    [
        ("http://127.0.0.1:1", "is not reachable"),
        ("nosuchscheme://x", "cannot be opened"),
    ],
)
def test_a_bad_tracking_uri_fails_first_in_one_line_leaving_nothing(
    root: Path, uri: str, says: str
) -> None:
    proc = run_module(["ablab.train", f"logger.tracking_uri={uri}", "trainer=smoke"], root)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith(f"ablab: error: logger.tracking_uri={uri}: ") and says in lines[-1]
    assert "Traceback" not in proc.stderr
    assert not (root / "outputs").exists() and not (root / "mlflow.db").exists()


def test_a_data_error_leaves_no_run_and_no_folder(root: Path) -> None:
    missing = root / "no_such_images"
    proc = run_module(["ablab.train", "data=image_folder", f"data.root={missing}"], root)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("ablab: error: ")
    assert not (root / "outputs").exists()
    client = MlflowClient(tracking_uri(root))
    assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []
